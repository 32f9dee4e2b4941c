"""The gRPC API end to end: permission matrix, space isolation, bad input, views and criteria."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from parley.common.v1 import common_pb2
from parley.contacts.v1 import contact_pb2, criteria_pb2, fields_pb2
from parley.contacts.v1 import contacts_service_pb2 as pb

SPACE, OTHER = "sp_api", "sp_api_other"


async def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


def _profile(**kw: str) -> contact_pb2.ContactProfile:
    return contact_pb2.ContactProfile(**kw)


async def test_agent_reads_writes_tags_and_assigns_but_cannot_delete_merge_import_or_define(client, admin) -> None:
    space = await admin.space()
    me = await admin.member(space)
    agent, manager = client("agent", space, me), client("manager", space)
    c = (await agent.CreateContact(pb.CreateContactRequest(profile=_profile(first_name="Ana")))).contact
    d = (await agent.CreateContact(pb.CreateContactRequest(profile=_profile(first_name="Dup")))).contact
    tag = (await manager.CreateTag(pb.CreateTagRequest(name="vip"))).tag
    await agent.UpdateContactTags(pb.UpdateContactTagsRequest(contact_ids=[c.id], add_tag_ids=[tag.id]))
    await agent.AssignContacts(pb.AssignContactsRequest(contact_ids=[c.id], assignee=contact_pb2.Assignee(user_id=me)))
    got = (await agent.GetContact(pb.GetContactRequest(contact_id=c.id))).contact
    assert list(got.tag_ids) == [tag.id] and got.assignee.user_id == me
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await _code(agent.DeleteContact(pb.DeleteContactRequest(contact_id=c.id))) == denied
    assert (
        await _code(agent.MergeContacts(pb.MergeContactsRequest(survivor_contact_id=c.id, merged_contact_id=d.id)))
        == denied
    )
    assert await _code(agent.ImportContacts(pb.ImportContactsRequest(rows=[pb.ImportRow()]))) == denied
    assert await _code(agent.CreateField(pb.CreateFieldRequest(key="k", type=fields_pb2.FIELD_TYPE_TEXT))) == denied
    assert await _code(agent.CreateTag(pb.CreateTagRequest(name="x"))) == denied
    assert await _code(agent.DeleteTag(pb.DeleteTagRequest(tag_id=tag.id))) == denied
    shared = pb.CreateViewRequest(name="all", criteria=criteria_pb2.Criteria(), shared=True)
    assert await _code(agent.CreateView(shared)) == denied
    await manager.MergeContacts(pb.MergeContactsRequest(survivor_contact_id=c.id, merged_contact_id=d.id))
    await manager.DeleteContact(pb.DeleteContactRequest(contact_id=c.id))
    assert await _code(agent.GetContact(pb.GetContactRequest(contact_id=d.id))) == grpc.StatusCode.NOT_FOUND


async def test_another_spaces_contact_id_is_not_found_and_untouched(client) -> None:
    mine = (await client("agent").CreateContact(pb.CreateContactRequest(profile=_profile(first_name="Mine")))).contact
    intruder = client("owner", OTHER)
    nf = grpc.StatusCode.NOT_FOUND
    assert await _code(intruder.GetContact(pb.GetContactRequest(contact_id=mine.id))) == nf
    assert (
        await _code(
            intruder.UpdateContact(pb.UpdateContactRequest(contact_id=mine.id, profile=_profile(first_name="X")))
        )
        == nf
    )
    assert await _code(intruder.DeleteContact(pb.DeleteContactRequest(contact_id=mine.id))) == nf
    assert await _code(intruder.AssignContacts(pb.AssignContactsRequest(contact_ids=[mine.id]))) == nf
    # A token for one space cannot name another space.
    req = pb.GetContactRequest(space_id=SPACE, contact_id=mine.id)
    assert await _code(intruder.GetContact(req)) == grpc.StatusCode.PERMISSION_DENIED
    still = (await client("agent").GetContact(pb.GetContactRequest(contact_id=mine.id))).contact
    assert still.first_name == "Mine"


async def test_bad_input_is_invalid_argument_and_changes_nothing(client) -> None:
    agent = client("agent", "sp_api_bad")
    bad = grpc.StatusCode.INVALID_ARGUMENT
    page = common_pb2.PageRequest(page_size=10_000)
    assert await _code(agent.ListContacts(pb.ListContactsRequest(page=page))) == bad
    empty_node = criteria_pb2.Criteria(root=criteria_pb2.CriteriaGroup(nodes=[criteria_pb2.CriteriaNode()]))
    assert await _code(agent.ListContacts(pb.ListContactsRequest(criteria=empty_node))) == bad
    assert await _code(agent.CreateView(pb.CreateViewRequest(name="v", criteria=empty_node))) == bad
    assert (
        await _code(
            agent.CreateContact(pb.CreateContactRequest(profile=_profile(email="nope"), field_values={"x": "1"}))
        )
        == bad
    )
    assert await _code(agent.GetContact(pb.GetContactRequest(contact_id="not-a-uuid"))) == bad
    listed = await agent.ListContacts(pb.ListContactsRequest())
    views = await agent.ListViews(pb.ListViewsRequest())
    assert listed.page.total_count == 0 and len(views.views) == 0


async def test_views_are_private_or_shared_and_list_their_contacts_with_keyset_pages(client) -> None:
    space = "sp_api_views"
    manager, agent, other = client("manager", space, "boss"), client("agent", space, "a1"), client("agent", space, "a2")
    field = (
        await manager.CreateField(pb.CreateFieldRequest(key="score", label="Score", type=fields_pb2.FIELD_TYPE_NUMBER))
    ).field
    vip = (await manager.CreateTag(pb.CreateTagRequest(name="vip"))).tag
    for i in range(12):
        c = (
            await agent.CreateContact(
                pb.CreateContactRequest(profile=_profile(first_name=f"c{i}"), field_values={"score": str(i)})
            )
        ).contact
        if i % 2 == 0:
            await agent.UpdateContactTags(pb.UpdateContactTagsRequest(contact_ids=[c.id], add_tag_ids=[vip.id]))
    criteria = criteria_pb2.Criteria(
        root=criteria_pb2.CriteriaGroup(
            operator=criteria_pb2.GROUP_OPERATOR_AND,
            nodes=[
                criteria_pb2.CriteriaNode(
                    tag=criteria_pb2.TagCondition(match=criteria_pb2.TAG_MATCH_HAS_ANY, tag_ids=[vip.id])
                ),
                criteria_pb2.CriteriaNode(
                    field=criteria_pb2.FieldCondition(
                        field=field.key, operator=criteria_pb2.FIELD_OPERATOR_BETWEEN, values=["2", "8"]
                    )
                ),
            ],
        )
    )
    private = (await agent.CreateView(pb.CreateViewRequest(name="mine", criteria=criteria))).view
    stored = criteria_pb2.Criteria()
    stored.CopyFrom(criteria)
    stored.root.nodes[1].field.field_id = field.id  # views name custom fields by id too
    assert private.criteria == stored
    shared = (await manager.CreateView(pb.CreateViewRequest(name="team", criteria=criteria, shared=True))).view
    assert {v.id for v in (await other.ListViews(pb.ListViewsRequest())).views} == {shared.id}
    assert await _code(other.GetView(pb.GetViewRequest(view_id=private.id))) == grpc.StatusCode.NOT_FOUND
    assert await _code(other.ListContacts(pb.ListContactsRequest(view_id=private.id))) == grpc.StatusCode.NOT_FOUND
    assert await _code(agent.DeleteView(pb.DeleteViewRequest(view_id=shared.id))) == grpc.StatusCode.PERMISSION_DENIED
    names, token = [], ""
    while True:
        resp = await other.ListContacts(
            pb.ListContactsRequest(view_id=shared.id, page=common_pb2.PageRequest(page_size=2, page_token=token))
        )
        assert resp.page.total_count == 4
        names += [c.first_name for c in resp.contacts]
        if not (token := resp.page.next_page_token):
            break
    assert names == ["c8", "c6", "c4", "c2"]
    renamed = await agent.UpdateView(
        pb.UpdateViewRequest(view_id=private.id, update_mask=FieldMask(paths=["name"]), name="renamed")
    )
    assert renamed.view.name == "renamed" and renamed.view.criteria == stored
    await agent.DeleteView(pb.DeleteViewRequest(view_id=private.id))


def _field_criteria(key: str, field_id: str = "") -> criteria_pb2.Criteria:
    cond = criteria_pb2.FieldCondition(
        field=key, field_id=field_id, operator=criteria_pb2.FIELD_OPERATOR_GREATER_THAN, values=["5"]
    )
    group = criteria_pb2.CriteriaGroup(
        operator=criteria_pb2.GROUP_OPERATOR_AND, nodes=[criteria_pb2.CriteriaNode(field=cond)]
    )
    return criteria_pb2.Criteria(root=group)


async def test_criteria_stored_in_the_validated_form_survive_a_field_rename(client) -> None:
    """What broadcasts and workflows do: store ValidateCriteria's answer, list contacts with it later."""
    manager = client("manager", "sp_api_rename")
    field = (
        await manager.CreateField(pb.CreateFieldRequest(key="score", label="Score", type=fields_pb2.FIELD_TYPE_NUMBER))
    ).field
    for score in ("3", "7", "9"):
        await manager.CreateContact(pb.CreateContactRequest(field_values={"score": score}))
    stored = (await manager.ValidateCriteria(pb.ValidateCriteriaRequest(criteria=_field_criteria("score")))).criteria
    assert stored == _field_criteria("score", field.id)
    view = (await manager.CreateView(pb.CreateViewRequest(name="high", criteria=_field_criteria("score")))).view
    await manager.UpdateField(
        pb.UpdateFieldRequest(field_id=field.id, update_mask=FieldMask(paths=["key"]), key="points")
    )
    # A new field takes the old key, with another type: it takes over nothing.
    await manager.CreateField(pb.CreateFieldRequest(key="score", label="Score", type=fields_pb2.FIELD_TYPE_TEXT))
    assert (await manager.ListContacts(pb.ListContactsRequest(criteria=stored))).page.total_count == 2
    assert (await manager.ListContacts(pb.ListContactsRequest(view_id=view.id))).page.total_count == 2
    shown = (await manager.GetView(pb.GetViewRequest(view_id=view.id))).view.criteria
    assert shown == _field_criteria("points", field.id)  # the current key
    again = (await manager.ValidateCriteria(pb.ValidateCriteriaRequest(criteria=stored))).criteria
    assert again == _field_criteria("points", field.id)
    bad_id = _field_criteria("score", "not-a-uuid")
    assert await _code(manager.ValidateCriteria(pb.ValidateCriteriaRequest(criteria=bad_id))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_upsert_by_identity_over_grpc_with_a_service_token(client) -> None:
    system = client("system", "*", "conversations")
    req = pb.UpsertByIdentityRequest(
        space_id="sp_api_up", channel_id="ch1", external_id="psid", profile=pb.IdentityProfile(display_name="Ana Lima")
    )
    first, second = await system.UpsertByIdentity(req), await system.UpsertByIdentity(req)
    assert first.created and not second.created and first.contact_id == second.contact_id
    missing_space = pb.UpsertByIdentityRequest(channel_id="ch1", external_id="psid")
    assert await _code(system.UpsertByIdentity(missing_space)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_upsert_by_identities_answers_per_item_and_keeps_each_in_its_space(client) -> None:
    agent = client("agent", "sp_api_batch")
    items = [
        pb.UpsertByIdentityRequest(channel_id="ch1", external_id="b1", profile=pb.IdentityProfile(first_name="B")),
        pb.UpsertByIdentityRequest(space_id="sp_api_batch_other", channel_id="ch1", external_id="b2"),
        pb.UpsertByIdentityRequest(channel_id="ch1", external_id=""),
        pb.UpsertByIdentityRequest(space_id="sp_api_batch", channel_id="ch1", external_id="b1"),
    ]
    got = (await agent.UpsertByIdentities(pb.UpsertByIdentitiesRequest(items=items))).results
    assert len(got) == 4 and got[0].created and got[0].error_code == 0
    assert got[1].error_code == grpc.StatusCode.PERMISSION_DENIED.value[0] and not got[1].contact_id
    assert got[2].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "external_id" in got[2].error_message
    assert (got[3].contact_id, got[3].created) == (got[0].contact_id, False)
    other = client("agent", "sp_api_batch_other")
    assert (
        await _code(other.GetContact(pb.GetContactRequest(contact_id=got[0].contact_id))) == grpc.StatusCode.NOT_FOUND
    )
    system = client("system", "*", "conversations")
    spread = [
        pb.UpsertByIdentityRequest(space_id=sp, channel_id="ch1", external_id="b1")
        for sp in ("sp_api_batch", "sp_api_batch_other")
    ]
    a, b = (await system.UpsertByIdentities(pb.UpsertByIdentitiesRequest(items=spread))).results
    assert a.contact_id == got[0].contact_id and not a.created and b.created and b.contact_id != a.contact_id


async def test_import_reports_bad_rows_and_keeps_good_ones(client) -> None:
    manager = client("manager", "sp_api_import")
    await manager.CreateField(pb.CreateFieldRequest(key="age", label="Age", type=fields_pb2.FIELD_TYPE_NUMBER))
    rows = [
        pb.ImportRow(
            profile=_profile(first_name="Ok", email="ok@x.com"), field_values={"age": "30"}, tag_names=["csv", "VIP"]
        ),
        pb.ImportRow(profile=_profile(first_name="Bad"), field_values={"age": "thirty"}),
        pb.ImportRow(profile=_profile(first_name="Also ok"), tag_names=["vip"]),
    ]
    resp = await manager.ImportContacts(pb.ImportContactsRequest(rows=rows))
    assert (resp.created_count, resp.updated_count, resp.failed_count) == (2, 0, 1)
    assert "field 'age'" in resp.results[1].error and resp.results[1].contact_id == ""
    assert [r.error_code for r in resp.results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    tags = (await manager.ListTags(pb.ListTagsRequest())).tags
    assert [t.name for t in tags] == ["csv", "VIP"]  # by name, case-insensitively
    assert (await manager.ListContacts(pb.ListContactsRequest())).page.total_count == 2
    again = await manager.ImportContacts(pb.ImportContactsRequest(rows=rows, dedupe_by=pb.IMPORT_DEDUPE_EMAIL))
    assert (again.created_count, again.updated_count, again.failed_count) == (1, 1, 1)  # "Also ok" has no email
    assert again.results[0].updated and again.results[0].contact_id == resp.results[0].contact_id
    unknown = pb.ImportContactsRequest(rows=rows, dedupe_by=99)  # type: ignore[arg-type]
    assert await _code(manager.ImportContacts(unknown)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (await manager.ListContacts(pb.ListContactsRequest())).page.total_count == 3


async def test_another_spaces_views_fields_and_tags_are_not_found_invisible_and_untouched(client) -> None:
    owner, intruder = client("owner", "sp_api_iso"), client("owner", "sp_api_iso_other")
    plan = pb.CreateFieldRequest(key="plan", label="Plan", type=fields_pb2.FIELD_TYPE_LIST, options=["free", "pro"])
    field = (await owner.CreateField(plan)).field
    tag = (await owner.CreateTag(pb.CreateTagRequest(name="vip"))).tag
    made = pb.CreateContactRequest(profile=_profile(first_name="Ana"), field_values={"plan": "pro"}, tag_ids=[tag.id])
    ana = (await owner.CreateContact(made)).contact
    by_tag = criteria_pb2.CriteriaNode(
        tag=criteria_pb2.TagCondition(match=criteria_pb2.TAG_MATCH_HAS_ANY, tag_ids=[tag.id])
    )
    criteria = criteria_pb2.Criteria(root=criteria_pb2.CriteriaGroup(nodes=[by_tag]))
    view = (await owner.CreateView(pb.CreateViewRequest(name="VIPs", criteria=criteria, shared=True))).view
    nf, bad = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT

    # Views: not found by id, not listed, not usable to list contacts.
    assert await _code(intruder.GetView(pb.GetViewRequest(view_id=view.id))) == nf
    rename = pb.UpdateViewRequest(view_id=view.id, name="mine", update_mask=FieldMask(paths=["name"]))
    assert await _code(intruder.UpdateView(rename)) == nf
    assert await _code(intruder.DeleteView(pb.DeleteViewRequest(view_id=view.id))) == nf
    assert await _code(intruder.ListContacts(pb.ListContactsRequest(view_id=view.id))) == nf
    assert len((await intruder.ListViews(pb.ListViewsRequest())).views) == 0
    # Fields: not found by id, not listed, their keys unknown to values and criteria.
    narrow = pb.UpdateFieldRequest(field_id=field.id, options=["free"], update_mask=FieldMask(paths=["options"]))
    assert await _code(intruder.UpdateField(narrow)) == nf
    assert await _code(intruder.DeleteField(pb.DeleteFieldRequest(field_id=field.id))) == nf
    assert len((await intruder.ListFields(pb.ListFieldsRequest())).fields) == 0
    assert await _code(intruder.CreateContact(pb.CreateContactRequest(field_values={"plan": "pro"}))) == bad
    on_plan = criteria_pb2.CriteriaNode(
        field=criteria_pb2.FieldCondition(field="plan", operator=criteria_pb2.FIELD_OPERATOR_EQUALS, values=["pro"])
    )
    by_plan = criteria_pb2.Criteria(root=criteria_pb2.CriteriaGroup(nodes=[on_plan]))
    assert await _code(intruder.ListContacts(pb.ListContactsRequest(criteria=by_plan))) == bad
    # Tags: not found by id, not listed, not usable on its own contacts or in criteria; a name is per space.
    assert await _code(intruder.UpdateTag(pb.UpdateTagRequest(tag_id=tag.id, name="mine"))) == nf
    assert await _code(intruder.DeleteTag(pb.DeleteTagRequest(tag_id=tag.id))) == nf
    assert len((await intruder.ListTags(pb.ListTagsRequest())).tags) == 0
    theirs = (await intruder.CreateContact(pb.CreateContactRequest(profile=_profile(first_name="Eve")))).contact
    tagging = pb.UpdateContactTagsRequest(contact_ids=[theirs.id], add_tag_ids=[tag.id])
    assert await _code(intruder.UpdateContactTags(tagging)) == nf
    assert await _code(intruder.ListContacts(pb.ListContactsRequest(criteria=criteria))) == bad
    imported = await intruder.ImportContacts(pb.ImportContactsRequest(rows=[pb.ImportRow(tag_names=["vip"])]))
    (own_vip,) = (await intruder.ListTags(pb.ListTagsRequest())).tags
    assert imported.created_count == 1 and own_vip.id != tag.id

    # The owner's view, field, tag and contact are as they were.
    assert (await owner.GetView(pb.GetViewRequest(view_id=view.id))).view.name == "VIPs"
    (still_field,) = (await owner.ListFields(pb.ListFieldsRequest())).fields
    assert (still_field.id, list(still_field.options)) == (field.id, ["free", "pro"])
    (still_tag,) = (await owner.ListTags(pb.ListTagsRequest())).tags
    assert (still_tag.id, still_tag.name) == (tag.id, "vip")
    got = (await owner.GetContact(pb.GetContactRequest(contact_id=ana.id))).contact
    assert list(got.tag_ids) == [tag.id] and [v.value for v in got.field_values] == ["pro"]
    listed = await owner.ListContacts(pb.ListContactsRequest(view_id=view.id))
    assert [c.id for c in listed.contacts] == [ana.id]
