"""Custom field definitions and typed values, the tag catalog and tagging, assignees."""

from __future__ import annotations

import asyncio

import pytest
from parley_contacts.domain import format_value
from parley_contacts.service import Actor, ContactsService
from parley_kit.errors import AlreadyExists, InvalidArgument, NotFound
from sqlalchemy import text

VALID = {
    "text": ("hello", "hello"),
    "number": ("-3.50", "-3.5"),
    "date": ("2026-01-31", "2026-01-31"),
    "datetime": ("2026-01-31T09:30:00+01:00", "2026-01-31T08:30:00Z"),
    "checkbox": ("yes", "true"),
    "list": ("GOLD", "gold"),
    "email": ("a@b.co", "a@b.co"),
    "phone": ("+33612345678", "+33612345678"),
    "url": ("https://example.com/x", "https://example.com/x"),
}
INVALID = {
    "number": ("12abc", "not a number"),
    "date": ("31/01/2026", "YYYY-MM-DD"),
    "datetime": ("2026-01-31T09:30:00", "UTC offset"),
    "checkbox": ("maybe", "true or false"),
    "list": ("bronze", "not one of the options"),
    "email": ("a@b", "not an email"),
    "phone": ("123", "phone"),
    "url": ("example.com", "http"),
    "text": ("x" * 501, "501 bytes long in UTF-8; at most 500"),
}


@pytest.mark.parametrize("ftype", sorted(VALID))
async def test_each_field_type_accepts_valid_values_in_canonical_form(
    service: ContactsService, space: str, agent: Actor, ftype: str
) -> None:
    options = ["gold", "silver"] if ftype == "list" else []
    f = await service.create_field(space, f"f_{ftype}", ftype.title(), ftype, options=options)
    raw, canonical = VALID[ftype]
    c = await service.create_contact(space, agent, {}, {f.key: raw})
    got, defs = await service.get_contact(space, str(c.id))
    assert format_value(defs[f.id].type, got.values[f.id]) == canonical


@pytest.mark.parametrize("ftype", sorted(INVALID))
async def test_each_field_type_rejects_invalid_values_naming_field_and_reason(
    service: ContactsService, space: str, agent: Actor, ftype: str
) -> None:
    options = ["gold", "silver"] if ftype == "list" else []
    f = await service.create_field(space, f"f_{ftype}", ftype.title(), ftype, options=options)
    c = await service.create_contact(space, agent, {"first_name": "Ana"})
    raw, reason = INVALID[ftype]
    with pytest.raises(InvalidArgument, match=rf"field 'f_{ftype}'.*{reason}"):
        await service.update_contact(space, agent, str(c.id), {"first_name": "Changed"}, {f.key: raw})
    got, _ = await service.get_contact(space, str(c.id))
    assert got.first_name == "Ana" and got.values == {}  # nothing changed


async def test_field_key_may_not_shadow_a_standard_field_or_repeat(service: ContactsService, space: str) -> None:
    with pytest.raises(InvalidArgument, match="shadow"):
        await service.create_field(space, "email", "Email", "text")
    with pytest.raises(InvalidArgument, match="unknown"):
        await service.create_field(space, "size", "Size", "float")
    with pytest.raises(InvalidArgument, match="option"):
        await service.create_field(space, "size", "Size", "list")
    await service.create_field(space, "size", "Size", "number")
    with pytest.raises(AlreadyExists):
        await service.create_field(space, "size", "Size", "number")


async def test_value_change_emits_one_field_updated_with_old_and_new(
    service: ContactsService, space: str, agent: Actor, sink
) -> None:
    f = await service.create_field(space, "score", "Score", "number")
    c = await service.create_contact(space, agent, {})
    await service.update_contact(space, agent, str(c.id), {}, {"score": "5"})
    await service.update_contact(space, agent, str(c.id), {}, {"score": "5.0"})  # same value: no event
    await service.update_contact(space, agent, str(c.id), {}, {"score": ""})
    events = sink.of("field.updated", space)
    assert [(e.data["field"].id, e.data["old"], e.data["new"]) for e in events] == [(f.id, "", "5"), (f.id, "5", "")]
    assert sink.of("contact.updated", space) == []


async def test_renaming_a_field_keeps_values_and_deleting_it_drops_them(
    service: ContactsService, space: str, agent: Actor
) -> None:
    f = await service.create_field(space, "plan", "Plan", "list", options=["a", "b"])
    c = await service.create_contact(space, agent, {}, {"plan": "b"})
    await service.update_field(space, agent, str(f.id), key="tier", label="Tier")
    got, _ = await service.get_contact(space, str(c.id))
    assert got.values[f.id] == "b"
    with pytest.raises(InvalidArgument, match="shadow"):
        await service.update_field(space, agent, str(f.id), key="phone")
    await service.update_field(space, agent, str(f.id), options=["a"])  # "b" is no longer allowed: its values go
    got, _ = await service.get_contact(space, str(c.id))
    assert f.id not in got.values
    await service.update_contact(space, agent, str(c.id), {}, {"tier": "a"})
    await service.delete_field(space, agent, str(f.id))
    got, _ = await service.get_contact(space, str(c.id))
    assert got.values == {}
    with pytest.raises(InvalidArgument, match="unknown custom field 'tier'"):
        await service.update_contact(space, agent, str(c.id), {}, {"tier": "a"})


async def test_tagging_is_idempotent_and_emits_once_per_contact_and_tag(
    service: ContactsService, space: str, agent: Actor, sink
) -> None:
    vip, new = await service.create_tag(space, "VIP"), await service.create_tag(space, "new")
    with pytest.raises(AlreadyExists):
        await service.create_tag(space, "vip")
    cs = [await service.create_contact(space, agent, {}) for _ in range(3)]
    ids = [str(c.id) for c in cs]
    assert await service.change_tags(space, agent, ids, [str(vip.id), str(new.id)], []) == 6
    assert await service.change_tags(space, agent, ids, [str(vip.id)], []) == 0
    assert await service.change_tags(space, agent, ids[:1], [], [str(vip.id)]) == 1
    assert len(sink.of("tag.added", space)) == 6 and len(sink.of("tag.removed", space)) == 1
    got, _ = await service.get_contact(space, ids[0])
    assert got.tag_ids == (new.id,)
    assert await service.delete_tag(space, agent, str(new.id)) == 3
    got, _ = await service.get_contact(space, ids[1])
    assert got.tag_ids == (vip.id,)


async def test_tagging_with_unknown_tag_or_foreign_contact_changes_nothing(
    service: ContactsService, space: str, agent: Actor
) -> None:
    vip = await service.create_tag(space, "vip")
    mine = await service.create_contact(space, agent, {})
    theirs = await service.create_contact(space + "-x", agent, {})
    with pytest.raises(NotFound):
        await service.change_tags(space, agent, [str(mine.id), str(theirs.id)], [str(vip.id)], [])
    with pytest.raises(NotFound):
        await service.change_tags(space, agent, [str(mine.id)], ["7d7f2c3e-0000-4000-8000-000000000000"], [])
    got, _ = await service.get_contact(space, str(mine.id))
    assert got.tag_ids == ()


async def test_assign_reassign_unassign_carry_the_previous_assignee(
    service: ContactsService, space: str, agent: Actor, sink, admin
) -> None:
    juan, maria, support = await admin.member(space), await admin.member(space), await admin.team(space)
    c = await service.create_contact(space, agent, {})
    await service.assign(space, agent, [str(c.id)], juan, "")
    await service.assign(space, agent, [str(c.id)], maria, support)
    await service.assign(space, agent, [str(c.id)], maria, support)  # no change, no event
    await service.assign(space, agent, [str(c.id)], "", "")
    events = sink.of("contact.assigned", space)
    seen = [
        (e.data["user_id"], e.data["team_id"], e.data["previous_user_id"], e.data["previous_team_id"]) for e in events
    ]
    assert seen == [(juan, "", "", ""), (maria, support, juan, ""), ("", "", maria, support)]
    got, _ = await service.get_contact(space, str(c.id))
    assert got.assignee_user_id is None and got.assignee_team_id is None


async def test_bulk_assign_changes_every_contact(service: ContactsService, space: str, agent: Actor, admin) -> None:
    sales = await admin.team(space)
    cs = [await service.create_contact(space, agent, {}) for _ in range(5)]
    assert await service.assign(space, agent, [str(c.id) for c in cs], "", sales) == 5
    with pytest.raises(InvalidArgument, match="at most"):
        await service.assign(space, agent, [str(cs[0].id)] * 1001, "u", "")


async def _tag_copies(engine, space: str) -> tuple[list, list]:
    """(contact id, tag_ids, contact_tags rows) per contact, and (contact id, contact's tag_ids, value's copy)
    per custom value, of the space."""
    async with engine.connect() as conn:
        contacts = (
            await conn.execute(
                text(
                    "SELECT c.id, c.tag_ids, coalesce((SELECT array_agg(t.tag_id) FROM contact_tags t"
                    " WHERE t.contact_id = c.id), '{}') AS rows FROM contacts c WHERE c.space_id = :s"
                ),
                {"s": space},
            )
        ).all()
        values = (
            await conn.execute(
                text(
                    "SELECT v.contact_id, c.tag_ids AS theirs, v.tag_ids AS copy FROM field_values v"
                    " JOIN contacts c ON c.id = v.contact_id WHERE v.space_id = :s"
                ),
                {"s": space},
            )
        ).all()
    return contacts, values


async def test_tag_ids_on_contact_rows_and_values_always_equal_contact_tags_rows(
    service: ContactsService, engine, space: str, manager: Actor
) -> None:
    """Tag criteria read contacts.tag_ids, and counts read the copy on each custom value: every tag
    change (create, bulk add/remove, merge, catalog delete) and every value write keeps both equal to
    contact_tags."""
    a, b, c = [await service.create_tag(space, n) for n in ("a", "b", "c")]
    await service.create_field(space, "score", "Score", "number")
    await service.create_field(space, "city", "City", "text")
    one = await service.create_contact(space, manager, {}, {"score": "1"}, tag_ids=[str(a.id), str(b.id)])
    two = await service.create_contact(space, manager, {}, {"score": "2", "city": "Porto"}, tag_ids=[str(b.id)])
    ids = [str(one.id), str(two.id)]
    await service.change_tags(space, manager, ids, [str(c.id)], [str(b.id)])
    await service.update_contact(space, manager, str(one.id), {}, {"city": "Lisbon", "score": "3"})
    await service.change_tags(space, manager, ids, [str(a.id)], [])
    await service.merge(space, manager, str(one.id), str(two.id))  # two's city moves over to one
    await service.delete_tag(space, manager, str(a.id))
    await service.finish_tag_deletions()
    await service.update_contact(space, manager, str(one.id), {}, {"score": "4"})  # a value written last
    contacts, values = await _tag_copies(engine, space)
    assert [(r.id, sorted(r.tag_ids)) for r in contacts] == [(one.id, [c.id])]
    assert all(sorted(r.tag_ids) == sorted(r.rows) for r in contacts)
    assert sorted((r.contact_id, r.copy) for r in values) == [(one.id, [c.id])] * 2


async def test_concurrent_tag_and_value_changes_leave_the_values_tag_copies_exact(
    service: ContactsService, engine, space: str, manager: Actor
) -> None:
    """Tagging and value writes on the same contacts race; the copies end equal to the contact's tags."""
    tags = [await service.create_tag(space, f"t{i}") for i in range(4)]
    await service.create_field(space, "score", "Score", "number")
    await service.create_field(space, "city", "City", "text")
    cs = [await service.create_contact(space, manager, {}) for _ in range(3)]
    ids = [str(x.id) for x in cs]

    async def tagger(i: int) -> None:
        for r in range(6):
            tag = str(tags[(i + r) % 4].id)
            await service.change_tags(space, manager, ids, [tag] if r % 2 == 0 else [], [] if r % 2 == 0 else [tag])

    async def writer(i: int) -> None:
        for r in range(9):  # longer than the taggers: the last writes often follow the last tag change
            key = "score" if (i + r) % 2 else "city"
            value = "" if r % 3 == 2 else str(i * 10 + r)  # "" clears, then the next write sets it again
            await service.update_contact(space, manager, ids[(i + r) % 3], {}, {key: value})

    await asyncio.gather(*(tagger(i) for i in range(3)), *(writer(i) for i in range(3)))
    contacts, values = await _tag_copies(engine, space)
    assert all(sorted(r.tag_ids) == sorted(r.rows) for r in contacts)
    assert values and all(sorted(r.copy) == sorted(r.theirs) for r in values)


async def test_deleting_a_tag_carried_by_more_contacts_than_a_statement_has_parameters(
    service: ContactsService, engine, space: str, manager: Actor
) -> None:
    """A tag on 40,000 contacts (above PostgreSQL's 32,767 bind parameters) is deleted from all of them."""
    tag = await service.create_tag(space, "popular")
    field = await service.create_field(space, "score", "Score", "number")
    async with engine.begin() as conn:
        params = {"s": space, "t": tag.id, "f": field.id}
        await conn.execute(
            text(
                "INSERT INTO contacts (id, space_id, created_at, updated_at, tag_ids)"
                " SELECT gen_random_uuid(), :s, now(), now(), ARRAY[CAST(:t AS uuid)] FROM generate_series(1, 40000)"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO contact_tags (contact_id, tag_id, space_id)"
                " SELECT id, CAST(:t AS uuid), space_id FROM contacts WHERE space_id = :s"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO field_values (contact_id, field_id, space_id, value_number, tag_ids)"
                " SELECT id, CAST(:f AS uuid), space_id, 1, tag_ids FROM contacts WHERE space_id = :s"
            ),
            params,
        )
    assert await service.delete_tag(space, manager, str(tag.id)) == 40_000
    await service.finish_tag_deletions()
    async with engine.connect() as conn:
        left = await conn.execute(
            text(
                "SELECT (SELECT count(*) FROM contacts WHERE space_id = :s AND tag_ids <> '{}'),"
                " (SELECT count(*) FROM field_values WHERE space_id = :s AND tag_ids <> '{}'),"
                " (SELECT count(*) FROM contact_tags WHERE space_id = :s)"
            ),
            {"s": space},
        )
        assert tuple(left.one()) == (0, 0, 0)
