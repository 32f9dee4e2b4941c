"""Edge input over gRPC: each value PostgreSQL or Python would choke on is refused with a clear status
naming what to fix, and nothing changes (every row of the space and every event are compared)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from parley.common.v1 import common_pb2
from parley.contacts.v1 import contact_pb2, criteria_pb2, fields_pb2
from parley.contacts.v1 import contacts_service_pb2 as pb
from parley_contacts.domain import MAX_TAGS_PER_CONTACT
from parley_contacts.service import ContactsService
from parley_kit.errors import AlreadyExists, InvalidArgument
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TEN_THOUSAND_YEARS = 10_000 * 365 * 86_400
BEFORE_YEAR_1 = -62_135_596_801  # one second before 0001-01-01T00:00:00Z
YEAR_1 = -62_135_596_800  # 0001-01-01T00:00:00Z: the driver would write it as -infinity
AFTER_YEAR_9999 = 253_402_300_800  # 10000-01-01T00:00:00Z
EMOJI = "\U0001f642"  # 4 bytes in UTF-8
SPACE_TABLES = (
    "contacts",
    "contact_identities",
    "contact_tags",
    "contact_aliases",
    "field_definitions",
    "field_values",
    "tags",
    "views",
)

Snapshot = Callable[[str], Awaitable[dict[str, Any]]]


@pytest.fixture
def snapshot(engine: AsyncEngine, sink: Any) -> Snapshot:
    """Every row of a space (as text, per table) and the number of its committed events."""

    async def take(space: str) -> dict[str, Any]:
        state: dict[str, Any] = {"events": len([e for e in sink.events if e.space_id == space])}
        async with engine.connect() as conn:
            for table in SPACE_TABLES:
                rows = await conn.execute(
                    text(f"SELECT t::text FROM {table} t WHERE space_id = :s ORDER BY 1"), {"s": space}
                )
                state[table] = [r[0] for r in rows]
        return state

    return take


@pytest.fixture
def refused(snapshot: Snapshot) -> Callable[..., Awaitable[str]]:
    """await refused(space, call, code, match): the call fails with `code` and a message matching `match`,
    and the space is exactly as before; returns the message."""

    async def check(space: str, call: Awaitable[Any], code: grpc.StatusCode, match: str) -> str:
        before = await snapshot(space)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code, err.value.details()
        assert re.search(match, err.value.details() or ""), err.value.details()
        assert await snapshot(space) == before
        return err.value.details() or ""

    return check


def _profile(**kw: str) -> contact_pb2.ContactProfile:
    return contact_pb2.ContactProfile(**kw)


def _field_node(field: str, op: int, *values: str) -> criteria_pb2.CriteriaNode:
    return criteria_pb2.CriteriaNode(field=criteria_pb2.FieldCondition(field=field, operator=op, values=list(values)))


def _criteria(*nodes: criteria_pb2.CriteriaNode) -> criteria_pb2.Criteria:
    return criteria_pb2.Criteria(root=criteria_pb2.CriteriaGroup(operator=criteria_pb2.GROUP_OPERATOR_AND, nodes=nodes))


async def _fields(manager: Any) -> None:
    for key, ftype in (
        ("score", fields_pb2.FIELD_TYPE_NUMBER),
        ("seen", fields_pb2.FIELD_TYPE_DATETIME),
        ("note", fields_pb2.FIELD_TYPE_TEXT),
    ):
        await manager.CreateField(pb.CreateFieldRequest(key=key, label=key, type=ftype))


PROFILE_CASES = [
    pytest.param(
        {"language": "en-" + "-".join(["abcdefgh"] * 4)}, {}, "field 'language'.*at most 35", id="language>35"
    ),
    pytest.param({"first_name": EMOJI * 130}, {}, "field 'first_name': is 520 bytes.*at most 500", id="name-bytes"),
    pytest.param({"first_name": "A\x00na"}, {}, r"profile\.first_name contains a NUL", id="name-nul"),
    pytest.param({"email": "a\x00@b.co"}, {}, r"profile\.email contains a NUL", id="email-nul"),
    pytest.param(
        {},
        {"seen": "0001-01-01T00:00:00+01:00"},
        "field 'seen'.*outside 0001-01-02 to 9999-12-30 in UTC",
        id="datetime-year-0",
    ),
    pytest.param(
        {},
        {"seen": "9999-12-31T23:59:59-01:00"},
        "field 'seen'.*outside 0001-01-02 to 9999-12-30 in UTC",
        id="datetime-year-10000",
    ),
    pytest.param({}, {"seen": "0001-01-01T00:00:00Z"}, "field 'seen'.*outside", id="datetime-min-is-infinity"),
    pytest.param({}, {"score": "1e1000000"}, "field 'score'.*out of range.*38 digits", id="number-huge"),
    pytest.param({}, {"score": "1e-1000000"}, "field 'score'.*out of range", id="number-tiny"),
    pytest.param({}, {"score": "1" * 39}, "field 'score'.*out of range", id="number-39-digits"),
    pytest.param({}, {"note": EMOJI * 126}, "field 'note': is 504 bytes long in UTF-8; at most 500", id="text-bytes"),
    pytest.param({}, {"note": "x\x00y"}, r"field_values\['note'\] contains a NUL", id="value-nul"),
    pytest.param({}, {"no\x00te": "x"}, r"field_values \(a key\) contains a NUL", id="key-nul"),
]


@pytest.mark.parametrize(("profile", "values", "match"), PROFILE_CASES)
async def test_profile_and_value_edges_are_refused_on_create_and_update(
    client, refused, profile: dict[str, str], values: dict[str, str], match: str
) -> None:
    space = "sp_edge_profile"
    manager = client("manager", space)
    if not (await manager.ListFields(pb.ListFieldsRequest())).fields:
        await _fields(manager)
    ana = (await manager.CreateContact(pb.CreateContactRequest(profile=_profile(first_name="Ana")))).contact
    create = manager.CreateContact(pb.CreateContactRequest(profile=_profile(**profile), field_values=values))
    await refused(space, create, INVALID, match)
    update = manager.UpdateContact(
        pb.UpdateContactRequest(contact_id=ana.id, profile=_profile(**profile), field_values=values)
    )
    await refused(space, update, INVALID, match)


async def test_values_at_the_limits_are_stored_and_read_back(client) -> None:
    manager = client("manager", "sp_edge_limits")
    await _fields(manager)
    values = {
        "seen": "0001-01-02T00:00:00Z",
        "score": "-" + "9" * 38 + "." + "9" * 38,
        "note": EMOJI * 125,  # 500 bytes
    }
    language = "en-" + "-".join(["abcdefgh"] * 3) + "-abcde"  # 35 characters
    made = await manager.CreateContact(
        pb.CreateContactRequest(profile=_profile(first_name=EMOJI * 125, language=language), field_values=values)
    )
    got = (await manager.GetContact(pb.GetContactRequest(contact_id=made.contact.id))).contact
    assert {v.key: v.value for v in got.field_values} == values
    assert (got.first_name, got.language) == (EMOJI * 125, language)
    later = {"seen": "9999-12-30T23:59:59.999999Z", "score": "0." + "0" * 37 + "1"}
    await manager.UpdateContact(pb.UpdateContactRequest(contact_id=got.id, field_values=later))
    got = (await manager.GetContact(pb.GetContactRequest(contact_id=got.id))).contact
    assert {v.key: v.value for v in got.field_values} == {**values, **later}


async def test_upsert_by_identity_drops_bad_hints_and_refuses_bad_identities(client, refused) -> None:
    space = "sp_edge_upsert"
    system = client("system", "*", "conversations")
    hints = pb.IdentityProfile(
        first_name="Ana\x00", last_name=EMOJI * 130, language="pt-" + "-".join(["abcdefgh"] * 4), phone="+33\x006"
    )
    made = await system.UpsertByIdentity(
        pb.UpsertByIdentityRequest(space_id=space, channel_id="ch1", external_id="psid-1", profile=hints)
    )
    got = (await system.GetContact(pb.GetContactRequest(space_id=space, contact_id=made.contact_id))).contact
    assert made.created and (got.first_name, got.last_name, got.language, got.phone) == ("", "", "", "")
    # The existing-identity path drops them too (they never fill the empty fields).
    again = await system.UpsertByIdentity(
        pb.UpsertByIdentityRequest(space_id=space, channel_id="ch1", external_id="psid-1", profile=hints)
    )
    assert again.contact_id == made.contact_id and not again.created
    got = (await system.GetContact(pb.GetContactRequest(space_id=space, contact_id=made.contact_id))).contact
    assert (got.first_name, got.last_name, got.language) == ("", "", "")

    def request(**kw: Any) -> pb.UpsertByIdentityRequest:
        return pb.UpsertByIdentityRequest(**{"space_id": space, "channel_id": "ch1", "external_id": "new", **kw})

    await refused(
        space, system.UpsertByIdentity(request(external_id="ps\x00id")), INVALID, "external_id contains a NUL"
    )
    await refused(space, system.UpsertByIdentity(request(channel_id="c\x00h")), INVALID, "channel_id contains a NUL")
    for seconds in (BEFORE_YEAR_1, YEAR_1, AFTER_YEAR_9999):
        call = system.UpsertByIdentity(request(interaction_at=Timestamp(seconds=seconds)))
        await refused(space, call, INVALID, "interaction_at is not a valid timestamp")
    long_space = system.UpsertByIdentity(request(space_id="s" * 65))
    await refused(space, long_space, INVALID, "not a space id: at most 64 printable characters")
    read = system.GetContact(pb.GetContactRequest(space_id="sp\x00x", contact_id=made.contact_id))
    await refused(space, read, INVALID, "space_id contains a NUL")


async def test_one_poisoned_item_does_not_fail_the_batch(client, service: ContactsService, monkeypatch) -> None:
    space = "sp_edge_batch"
    system = client("system", "*", "conversations")

    def item(external_id: str, **kw: Any) -> pb.UpsertByIdentityRequest:
        return pb.UpsertByIdentityRequest(**{"space_id": space, "channel_id": "ch1", "external_id": external_id, **kw})

    known = (await system.UpsertByIdentity(item("known"))).contact_id
    items = [
        item("good-1", profile=pb.IdentityProfile(first_name="Good")),
        item("bad\x00id"),
        item("x", channel_id="c\x00h"),
        item("long-language", profile=pb.IdentityProfile(language="en-" + "-".join(["abcdefgh"] * 4))),
        item("nul-hint", profile=pb.IdentityProfile(first_name="A\x00")),
        item("late", interaction_at=Timestamp(seconds=AFTER_YEAR_9999)),
        item("x", space_id="s" * 65),
        item("x", space_id="sp\x00"),
        item("known", interaction_at=Timestamp(seconds=1_800_000_000)),
        item("boom"),
        item("good-2"),
    ]
    real = service.upsert_by_identity

    async def explode(space_id: str, actor: Any, identity: Any, *args: Any) -> Any:
        if identity.external_id == "boom":
            raise RuntimeError("unexpected")
        return await real(space_id, actor, identity, *args)

    monkeypatch.setattr(service, "upsert_by_identity", explode)
    got = (await system.UpsertByIdentities(pb.UpsertByIdentitiesRequest(items=items))).results
    codes = [r.error_code for r in got]
    invalid, internal = INVALID.value[0], grpc.StatusCode.INTERNAL.value[0]
    assert codes == [0, invalid, invalid, 0, 0, invalid, invalid, invalid, 0, internal, 0]
    assert "external_id contains a NUL" in got[1].error_message
    assert "channel_id contains a NUL" in got[2].error_message
    assert "interaction_at is not a valid timestamp" in got[5].error_message
    assert "not a space id" in got[6].error_message and "space_id contains a NUL" in got[7].error_message
    assert got[8].contact_id == known and not got[8].created
    assert "internal error" in got[9].error_message and not got[9].contact_id
    assert all(got[i].created and got[i].contact_id for i in (0, 3, 4, 10))
    for i, first in ((3, ""), (4, ""), (0, "Good")):
        contact = (await system.GetContact(pb.GetContactRequest(space_id=space, contact_id=got[i].contact_id))).contact
        assert (contact.first_name, contact.language) == (first, "")


async def test_criteria_edges_are_refused_wherever_criteria_are_taken(client, refused) -> None:
    space = "sp_edge_criteria"
    manager = client("manager", space)
    await _fields(manager)
    await manager.CreateContact(pb.CreateContactRequest(profile=_profile(first_name="Ana")))
    ten_thousand_years = Duration(seconds=TEN_THOUSAND_YEARS)
    cases = [
        (
            criteria_pb2.CriteriaNode(
                last_interaction=criteria_pb2.TimeCondition(
                    operator=criteria_pb2.TIME_OPERATOR_WITHIN, duration=ten_thousand_years
                )
            ),
            "longer than the maximum of 3155760000",
        ),
        (
            criteria_pb2.CriteriaNode(
                created=criteria_pb2.TimeCondition(
                    operator=criteria_pb2.TIME_OPERATOR_BEFORE, duration=ten_thousand_years
                )
            ),
            "longer than the maximum",
        ),
        (
            criteria_pb2.CriteriaNode(
                created=criteria_pb2.TimeCondition(
                    operator=criteria_pb2.TIME_OPERATOR_BEFORE, before=Timestamp(seconds=BEFORE_YEAR_1)
                )
            ),
            r"criteria root\.0: 'before' is not a valid timestamp",
        ),
        (
            _field_node("seen", criteria_pb2.FIELD_OPERATOR_LESS_THAN, "0001-01-01T00:00:00+01:00"),
            "outside 0001-01-02 to 9999-12-30",
        ),
        (_field_node("score", criteria_pb2.FIELD_OPERATOR_GREATER_THAN, "1e1000000"), "out of range"),
        (
            _field_node("note", criteria_pb2.FIELD_OPERATOR_CONTAINS, "a\x00"),
            r"criteria\.root\.nodes\[0\]\.field\.values\[0\] contains a NUL",
        ),
        (_field_node("note", criteria_pb2.FIELD_OPERATOR_EQUALS, *map(str, range(101))), "101 values.*at most 100"),
        (
            criteria_pb2.CriteriaNode(channel=criteria_pb2.ChannelCondition(channel_ids=[f"c{i}" for i in range(101)])),
            "101 channel ids.*at most 100",
        ),
        (
            criteria_pb2.CriteriaNode(channel=criteria_pb2.ChannelCondition(channel_ids=["c\x00"])),
            r"channel\.channel_ids\[0\] contains a NUL",
        ),
        (
            criteria_pb2.CriteriaNode(
                assignee=criteria_pb2.AssigneeCondition(match=criteria_pb2.ASSIGNEE_MATCH_USER, id="u\x00")
            ),
            r"assignee\.id contains a NUL",
        ),
    ]
    empty_groups = [criteria_pb2.CriteriaNode(group=criteria_pb2.CriteriaGroup()) for _ in range(50)]
    cases.append(
        (criteria_pb2.CriteriaNode(group=criteria_pb2.CriteriaGroup(nodes=empty_groups)), "more than 50 groups")
    )
    for node, match in cases:
        criteria = _criteria(node)
        await refused(space, manager.ListContacts(pb.ListContactsRequest(criteria=criteria)), INVALID, match)
        await refused(space, manager.ValidateCriteria(pb.ValidateCriteriaRequest(criteria=criteria)), INVALID, match)
        await refused(space, manager.CreateView(pb.CreateViewRequest(name="v", criteria=criteria)), INVALID, match)
    search = manager.ListContacts(pb.ListContactsRequest(search="an\x00"))
    await refused(space, search, INVALID, "search contains a NUL")


async def test_catalog_names_and_ids_with_nul_are_refused(client, refused) -> None:
    space = "sp_edge_catalog"
    manager = client("manager", space)
    tag = (await manager.CreateTag(pb.CreateTagRequest(name="vip"))).tag
    contact = (await manager.CreateContact(pb.CreateContactRequest(profile=_profile(first_name="Ana")))).contact
    view = (await manager.CreateView(pb.CreateViewRequest(name="all", criteria=criteria_pb2.Criteria()))).view
    calls = [
        (manager.CreateTag(pb.CreateTagRequest(name="v\x00ip")), r"^name contains a NUL"),
        (manager.UpdateTag(pb.UpdateTagRequest(tag_id=tag.id, description="d\x00")), r"^description contains a NUL"),
        (
            manager.CreateField(pb.CreateFieldRequest(key="plan", label="P\x00", type=fields_pb2.FIELD_TYPE_TEXT)),
            r"^label contains a NUL",
        ),
        (
            manager.CreateField(
                pb.CreateFieldRequest(key="plan", type=fields_pb2.FIELD_TYPE_LIST, options=["gold", "si\x00lver"])
            ),
            r"^options\[1\] contains a NUL",
        ),
        (
            manager.CreateField(
                pb.CreateFieldRequest(key="plan", type=fields_pb2.FIELD_TYPE_LIST, options=["gold", EMOJI * 126])
            ),
            "field 'options': is 504 bytes long",
        ),
        (manager.CreateView(pb.CreateViewRequest(name="v\x00", criteria=criteria_pb2.Criteria())), "^name contains"),
        (
            manager.UpdateView(
                pb.UpdateViewRequest(view_id=view.id, update_mask=FieldMask(paths=["name"]), name="a\x00")
            ),
            "^name contains a NUL",
        ),
        (
            manager.AssignContacts(
                pb.AssignContactsRequest(contact_ids=[contact.id], assignee=contact_pb2.Assignee(user_id="u\x00"))
            ),
            r"^assignee\.user_id contains a NUL",
        ),
        (
            manager.AddIdentity(
                pb.AddIdentityRequest(
                    contact_id=contact.id, identity=contact_pb2.IdentityInput(channel_id="ch", external_id="e\x00")
                )
            ),
            r"^identity\.external_id contains a NUL",
        ),
    ]
    for call, match in calls:
        await refused(space, call, INVALID, match)


async def test_import_reports_a_row_with_nul_or_too_many_tags_and_keeps_the_others(client, snapshot) -> None:
    space = "sp_edge_import"
    manager = client("manager", space)
    rows = [
        pb.ImportRow(profile=_profile(first_name="Ok", email="ok@example.com"), tag_names=["csv"]),
        pb.ImportRow(profile=_profile(first_name="N\x00ul")),
        pb.ImportRow(profile=_profile(first_name="Tags"), tag_names=[f"t{i:03}" for i in range(101)]),
        pb.ImportRow(profile=_profile(first_name="Tag\x00"), tag_names=["t\x00"]),
        pb.ImportRow(profile=_profile(first_name="Key", email="key@example.com"), field_values={"no\x00te": "x"}),
    ]
    resp = await manager.ImportContacts(pb.ImportContactsRequest(rows=rows))
    assert (resp.created_count, resp.failed_count) == (1, 4)
    assert "field 'first_name' contains a NUL" in resp.results[1].error
    assert "101 tags given; a contact has at most 100 tags" in resp.results[2].error
    assert "contains a NUL" in resp.results[3].error
    key_nul = "a custom field key contains a NUL character"
    assert (resp.results[4].error_code, resp.results[4].error[: len(key_nul)]) == (INVALID.value[0], key_nul)
    assert [t.name for t in (await manager.ListTags(pb.ListTagsRequest())).tags] == ["csv"]  # none of the 101
    # The same key on a row matching a contact (dedupe_by): refused alike, the contact unchanged.
    before = await snapshot(space)
    dedupe = pb.ImportRow(profile=_profile(email="OK@example.com"), field_values={"no\x00te": "x"})
    resp = await manager.ImportContacts(pb.ImportContactsRequest(rows=[dedupe], dedupe_by=pb.IMPORT_DEDUPE_EMAIL))
    assert (resp.results[0].error_code, resp.results[0].error[: len(key_nul)]) == (INVALID.value[0], key_nul)
    assert await snapshot(space) == before


async def test_a_contact_has_at_most_100_tags_whoever_adds_them(client, refused) -> None:
    space = "sp_edge_tags"
    manager = client("manager", space)
    tags = [(await manager.CreateTag(pb.CreateTagRequest(name=f"t{i:03}"))).tag.id for i in range(130)]
    await manager.CreateField(pb.CreateFieldRequest(key="note", type=fields_pb2.FIELD_TYPE_TEXT))

    async def contact(n: int, first: int = 0) -> str:
        made = await manager.CreateContact(pb.CreateContactRequest(profile=_profile(first_name=f"c{n}")))
        if n:
            await manager.UpdateContactTags(
                pb.UpdateContactTagsRequest(contact_ids=[made.contact.id], add_tag_ids=tags[first : first + n])
            )
        return made.contact.id

    full, empty = await contact(MAX_TAGS_PER_CONTACT), await contact(0)
    # The largest text value goes with the most tags: the value's index entry carries both (real multi-byte text).
    await manager.UpdateContact(pb.UpdateContactRequest(contact_id=full, field_values={"note": EMOJI * 125}))
    await manager.UpdateContact(pb.UpdateContactRequest(contact_id=full, profile=_profile(first_name=EMOJI * 125)))
    one_more = pb.UpdateContactTagsRequest(contact_ids=[empty, full], add_tag_ids=[tags[100]])
    details = await refused(space, manager.UpdateContactTags(one_more), grpc.StatusCode.FAILED_PRECONDITION, "")
    assert details == (
        f"contact {full} would have 101 tags; a contact has at most 100, counting deleted tags not yet removed "
        "from it (remove some of its tags first, or retry once pending tag deletions are done)"
    )
    swap = pb.UpdateContactTagsRequest(contact_ids=[full], add_tag_ids=[tags[100]], remove_tag_ids=[tags[0]])
    assert (await manager.UpdateContactTags(swap)).changed_count == 2
    got = (await manager.GetContact(pb.GetContactRequest(contact_id=full))).contact
    assert len(got.tag_ids) == 100 and {v.key: v.value for v in got.field_values} == {"note": EMOJI * 125}
    too_many = pb.CreateContactRequest(profile=_profile(first_name="x"), tag_ids=tags[:101])
    await refused(space, manager.CreateContact(too_many), INVALID, "101 tags given; a contact has at most 100 tags")
    # A merge whose union would pass the cap is refused; both contacts stay as they were.
    left, right = await contact(60, 0), await contact(50, 60)
    merge = pb.MergeContactsRequest(survivor_contact_id=left, merged_contact_id=right)
    await refused(
        space, manager.MergeContacts(merge), grpc.StatusCode.FAILED_PRECONDITION, f"contact {left} would have 110 tags"
    )
    within = await contact(40, 40)  # 40 tags, 20 of them shared with `left`: the union has 80
    merged = await manager.MergeContacts(pb.MergeContactsRequest(survivor_contact_id=left, merged_contact_id=within))
    assert len(merged.contact.tag_ids) == 80


async def test_page_tokens_whose_key_has_wrong_types_are_invalid_argument(client, refused) -> None:
    space = "sp_edge_tokens"
    manager = client("manager", space)
    for i in range(3):
        await manager.CreateContact(pb.CreateContactRequest(profile=_profile(first_name=f"c{i}")))
        await manager.CreateView(pb.CreateViewRequest(name=f"v{i}", criteria=criteria_pb2.Criteria()))
    page = common_pb2.PageRequest(page_size=1)
    tokens = {
        "contacts": (await manager.ListContacts(pb.ListContactsRequest(page=page))).page.next_page_token,
        "views": (await manager.ListViews(pb.ListViewsRequest(page=page))).page.next_page_token,
    }

    def forged(token: str, key: Any) -> str:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        raw = json.dumps({"k": key, "f": data["f"]}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    contact_id = "00000000-0000-7000-8000-000000000000"
    for key in (
        [1, 2],
        [["2026-01-01T00:00:00Z"], contact_id],
        ["2026-01-01T00:00:00", contact_id],
        ["x\x00", contact_id],
    ):
        req = pb.ListContactsRequest(
            page=common_pb2.PageRequest(page_size=1, page_token=forged(tokens["contacts"], key))
        )
        await refused(space, manager.ListContacts(req), INVALID, "page_token is malformed")
    for key in ([5, contact_id], [{"a": 1}, contact_id], ["v\x00", contact_id]):
        req = pb.ListViewsRequest(page=common_pb2.PageRequest(page_size=1, page_token=forged(tokens["views"], key)))
        await refused(space, manager.ListViews(req), INVALID, "page_token is malformed")


async def _until_blocked(engine: AsyncEngine) -> None:
    """Wait until a statement of the database waits for a lock (the service's, behind an open transaction)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    async with engine.connect() as conn:
        for _ in range(500):
            if await conn.scalar(query):
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the service's statement never waited for the open transaction")


async def test_renaming_a_field_to_a_key_taken_meanwhile_is_already_exists(service, engine, space, manager) -> None:
    field = await service.create_field(space, "plan", "Plan", "text")
    async with engine.connect() as other:
        await other.execute(
            text(
                "INSERT INTO field_definitions (id, space_id, key, label, type, created_at, updated_at)"
                " VALUES (gen_random_uuid(), :s, 'tier', 'Tier', 'text', now(), now())"
            ),
            {"s": space},
        )
        rename = asyncio.create_task(service.update_field(space, manager, str(field.id), key="tier"))
        await _until_blocked(engine)
        await other.commit()
    with pytest.raises(AlreadyExists, match="a custom field with key 'tier' already exists"):
        await rename
    assert sorted(f.key for f in await service.list_fields(space)) == ["plan", "tier"]


async def test_renaming_a_tag_to_a_name_taken_meanwhile_is_already_exists(service, engine, space) -> None:
    tag = await service.create_tag(space, "silver")
    async with engine.connect() as other:
        await other.execute(
            text("INSERT INTO tags (id, space_id, name, created_at) VALUES (gen_random_uuid(), :s, 'Gold', now())"),
            {"s": space},
        )
        rename = asyncio.create_task(service.update_tag(space, str(tag.id), "gold", None, None))
        await _until_blocked(engine)
        await other.commit()
    with pytest.raises(AlreadyExists, match="a tag named 'gold' already exists"):
        await rename
    assert sorted(t.name for t in await service.list_tags(space)) == ["Gold", "silver"]


async def test_writing_a_value_of_a_field_deleted_meanwhile_waits_then_is_an_unknown_field(
    service, engine, space, agent
) -> None:
    field = await service.create_field(space, "plan", "Plan", "text")
    ana = await service.create_contact(space, agent, {"first_name": "Ana"})
    async with engine.connect() as other:
        await other.execute(text("DELETE FROM field_definitions WHERE id = :f"), {"f": field.id})
        write = asyncio.create_task(
            service.update_contact(space, agent, str(ana.id), {"first_name": "Bo"}, {"plan": "pro"})
        )
        await _until_blocked(engine)
        await other.commit()
    with pytest.raises(InvalidArgument, match="unknown custom field 'plan'"):
        await write
    got, _ = await service.get_contact(space, str(ana.id))
    assert (got.first_name, got.values) == ("Ana", {})
