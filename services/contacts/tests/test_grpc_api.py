"""The gRPC API end to end: permission matrix, space isolation, bad input, views and criteria."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from parley.common.v1 import common_pb2
from parley.contacts.v1 import contact_pb2, criteria_pb2, fields_pb2
from parley.contacts.v1 import contacts_service_pb2 as pb
from parley.contacts.v1 import contacts_service_pb2_grpc as pb_grpc
from parley_contacts.grpc_api import SERVICE_NAME, ContactsApi, register
from parley_contacts.service import ContactsService
from parley_kit.auth import SigningKey, TokenVerifier, jwks
from parley_kit.grpc_server import GrpcServer, JwtAuthenticator

SPACE, OTHER = "sp_api", "sp_api_other"


@pytest.fixture(scope="module")
async def target(service: ContactsService, signing_key: SigningKey) -> AsyncIterator[str]:
    server = GrpcServer("contacts", authenticator=JwtAuthenticator(TokenVerifier.from_jwks(jwks(signing_key))))
    server.add(register, ContactsApi(service), SERVICE_NAME)
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    yield f"127.0.0.1:{port}"
    await server.stop(1)


@pytest.fixture(scope="module")
def client(target: str, mint_token: Callable[..., str]) -> Callable[..., pb_grpc.ContactsServiceStub]:
    channel = grpc.aio.insecure_channel(target)
    stubs: dict[tuple[str, str, str], pb_grpc.ContactsServiceStub] = {}

    def make(role: str = "agent", space: str = SPACE, user: str = "u1") -> pb_grpc.ContactsServiceStub:
        token = mint_token(space_id=space, role=role, subject=f"user:{user}")
        stub = pb_grpc.ContactsServiceStub(channel)

        class Authed:
            def __getattr__(self, name: str):  # every call carries the token
                method = getattr(stub, name)
                return lambda req: method(req, metadata=(("authorization", f"Bearer {token}"),))

        return Authed()  # type: ignore[return-value]

    return lambda role="agent", space=SPACE, user="u1": stubs.setdefault((role, space, user), make(role, space, user))


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
    assert private.criteria == criteria
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
    assert renamed.view.name == "renamed" and renamed.view.criteria == criteria
    await agent.DeleteView(pb.DeleteViewRequest(view_id=private.id))


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
    assert (resp.created_count, resp.failed_count) == (2, 1)
    assert "field 'age'" in resp.results[1].error and resp.results[1].contact_id == ""
    tags = (await manager.ListTags(pb.ListTagsRequest())).tags
    assert [t.name for t in tags] == ["csv", "VIP"]  # by name, case-insensitively
    assert (await manager.ListContacts(pb.ListContactsRequest())).page.total_count == 2
