"""Values changed through the field catalog are announced, one field.updated per value in the transaction that
changes it: removed by a list option's or the field's deletion (old value, new empty), respelled by a list option
whose case changed (old spelling, new spelling)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from parley_contacts.domain import FieldDef
from parley_contacts.repository import Repository
from parley_contacts.service import Actor, ContactsService
from parley_kit.db import session_factory
from parley_kit.errors import InvalidArgument
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


def _removals(sink, space: str) -> list[tuple[str, str, str]]:
    return sorted(
        (str(e.data["contact_id"]), e.data["field"].key, e.data["old"])
        for e in sink.of("field.updated", space)
        if e.data["new"] == ""
    )


async def test_removing_a_list_option_announces_each_value_it_removes(
    service: ContactsService, space: str, manager: Actor, sink
) -> None:
    plan = await service.create_field(space, "plan", "Plan", "list", options=["free", "pro", "gold"])
    a = await service.create_contact(space, manager, {}, {"plan": "pro"})
    b = await service.create_contact(space, manager, {}, {"plan": "gold"})
    c = await service.create_contact(space, manager, {}, {"plan": "free"})
    await service.update_field(space, manager, str(plan.id), key="tier", options=["free"])
    assert _removals(sink, space) == sorted([(str(a.id), "tier", "pro"), (str(b.id), "tier", "gold")])
    got, _ = await service.get_contact(space, str(c.id))
    assert got.values == {plan.id: "free"}


def _changes(sink, space: str, since: int = 0) -> list[tuple[str, str, str]]:
    """(contact, old, new) of the space's field.updated events after the first `since` of them."""
    found = sink.of("field.updated", space)[since:]
    return sorted((str(e.data["contact_id"]), e.data["old"], e.data["new"]) for e in found)


async def test_a_list_option_whose_case_changed_keeps_its_values_in_the_new_spelling(
    service: ContactsService, space: str, manager: Actor, sink
) -> None:
    plan = await service.create_field(space, "plan", "Plan", "list", options=["Gold", "Silver", "Bronze"])
    a = await service.create_contact(space, manager, {}, {"plan": "gold"})  # stored as the option: Gold
    b = await service.create_contact(space, manager, {}, {"plan": "Silver"})
    c = await service.create_contact(space, manager, {}, {"plan": "Bronze"})
    before = len(sink.of("field.updated", space))
    await service.update_field(space, manager, str(plan.id), options=["GOLD ", "Silver"])
    assert _changes(sink, space, before) == sorted([(str(a.id), "Gold", "GOLD"), (str(c.id), "Bronze", "")])
    values = {x.id: (await service.get_contact(space, str(x.id)))[0].values for x in (a, b, c)}
    assert values == {a.id: {plan.id: "GOLD"}, b.id: {plan.id: "Silver"}, c.id: {}}
    await service.update_contact(space, manager, str(b.id), {}, {"plan": "gold"})
    assert (await service.get_contact(space, str(b.id)))[0].values == {plan.id: "GOLD"}


async def test_deleting_a_field_announces_each_value_it_removes_in_canonical_form(
    service: ContactsService, space: str, manager: Actor, sink
) -> None:
    when = await service.create_field(space, "seen", "Seen", "datetime")
    a = await service.create_contact(space, manager, {}, {"seen": "2026-01-31T09:30:00+01:00"})
    await service.create_contact(space, manager, {})
    await service.delete_field(space, manager, str(when.id))
    assert _removals(sink, space) == [(str(a.id), "seen", "2026-01-31T08:30:00Z")]


class SlowRemovalRepository(Repository):
    """Pauses after removing a field's values, inside the removing transaction, as a busy server might."""

    async def delete_values(self, s: AsyncSession, definition: FieldDef, keep: Sequence[str] | None = None) -> Any:
        removed = await super().delete_values(s, definition, keep)
        await asyncio.sleep(0.3)
        return removed


async def test_a_value_written_while_its_field_is_deleted_never_vanishes_unannounced(
    engine: AsyncEngine, sink, space: str, manager: Actor
) -> None:
    """The definition is locked first: a first value written between the values' removal and the definition's
    delete waits for the deletion, then finds no such field, instead of being erased by the cascade without an
    event."""
    slow = ContactsService(SlowRemovalRepository(session_factory(engine), sink))
    score = await slow.create_field(space, "score", "Score", "number")
    before = await slow.create_contact(space, manager, {}, {"score": "1"})
    late = await slow.create_contact(space, manager, {})
    deleting = asyncio.create_task(slow.delete_field(space, manager, str(score.id)))
    await asyncio.sleep(0.1)  # the values are gone, the definition not yet
    writing = asyncio.create_task(slow.update_contact(space, manager, str(late.id), {}, {"score": "2"}))
    await deleting
    with pytest.raises(InvalidArgument, match="unknown custom field 'score'"):
        await writing
    last = {str(e.data["contact_id"]): e.data["new"] for e in sink.of("field.updated", space)}
    assert last == {str(before.id): ""}


async def test_a_value_changed_to_an_option_being_removed_is_refused_not_kept(
    engine: AsyncEngine, sink, space: str, manager: Actor
) -> None:
    """A writer waits for an option removal in flight (the definition is locked FOR SHARE), then checks the value
    against the options it left: an existing value moved to the removed option is refused, never stored outside
    the field's options."""
    slow = ContactsService(SlowRemovalRepository(session_factory(engine), sink))
    plan = await slow.create_field(space, "plan", "Plan", "list", options=["free", "pro"])
    ana = await slow.create_contact(space, manager, {}, {"plan": "free"})
    removing = asyncio.create_task(slow.update_field(space, manager, str(plan.id), options=["free"]))
    await asyncio.sleep(0.1)  # the removal's values are deleted, its transaction still open
    writing = asyncio.create_task(slow.update_contact(space, manager, str(ana.id), {}, {"plan": "pro"}))
    await removing
    with pytest.raises(InvalidArgument, match="'pro'"):
        await writing
    got, _ = await slow.get_contact(space, str(ana.id))
    assert got.values == {plan.id: "free"}


class InterleavedSession(AsyncSession):
    """Runs `after_lock` when a statement locking field definitions returns, and `before_value` before a statement
    writing a value: another caller's commits at those two points of a write."""

    after_lock: Callable[[], Awaitable[None]]
    before_value: Callable[[], Awaitable[None]]

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        sql = str(statement.compile(dialect=postgresql.dialect()))
        if sql.startswith("INSERT INTO field_values"):
            await self.before_value()
        result = await super().execute(statement, *args, **kwargs)
        if "FROM field_definitions" in sql and sql.endswith("FOR SHARE"):
            await self.after_lock()
        return result


async def test_a_field_renamed_to_the_written_key_after_the_lock_is_not_written_unlocked(
    service: ContactsService, engine: AsyncEngine, sink, space: str, manager: Actor
) -> None:
    """The definitions a write uses are those its locking statement returned. Another field renamed to the written
    key just after that statement (so not locked by it) is not used: if it were, its options could lose the value
    before the value is stored, and a value outside the options would be kept."""
    tier = await service.create_field(space, "tier", "Tier", "list", options=["gold", "silver"])
    ana = await service.create_contact(space, manager, {"first_name": "Ana"})

    async def rename() -> None:
        await service.update_field(space, manager, str(tier.id), key="plan")

    async def remove_gold() -> None:
        await asyncio.wait_for(service.update_field(space, manager, str(tier.id), options=["silver"]), 10)

    class Session(InterleavedSession):
        after_lock = staticmethod(rename)
        before_value = staticmethod(remove_gold)

    writer = ContactsService(Repository(async_sessionmaker(engine, expire_on_commit=False, class_=Session), sink))
    with pytest.raises(InvalidArgument, match="unknown custom field 'plan'"):
        await writer.update_contact(space, manager, str(ana.id), {}, {"plan": "gold"})
    got, _ = await service.get_contact(space, str(ana.id))
    options = {f.id: f.options for f in await service.list_fields(space)}
    assert {v for f, v in got.values.items() if v not in options[f]} == set()


async def test_removing_more_values_than_a_statement_has_parameters(
    service: ContactsService, engine: AsyncEngine, space: str, manager: Actor, sink
) -> None:
    """40,000 values (above PostgreSQL's 32,767 bind parameters) go, by option removal and by deletion."""
    plan = await service.create_field(space, "plan", "Plan", "list", options=["free", "pro"])
    score = await service.create_field(space, "score", "Score", "number")
    async with engine.begin() as conn:
        params = {"s": space, "p": plan.id, "n": score.id}
        await conn.execute(
            text(
                "INSERT INTO contacts (id, space_id, created_at, updated_at)"
                " SELECT gen_random_uuid(), :s, now(), now() FROM generate_series(1, 40000)"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO field_values (contact_id, field_id, space_id, value_text)"
                " SELECT id, CAST(:p AS uuid), space_id, 'pro' FROM contacts WHERE space_id = :s"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO field_values (contact_id, field_id, space_id, value_number)"
                " SELECT id, CAST(:n AS uuid), space_id, 7 FROM contacts WHERE space_id = :s"
            ),
            params,
        )
    await service.update_field(space, manager, str(plan.id), options=["free"])
    await service.delete_field(space, manager, str(score.id))
    removed = _removals(sink, space)
    assert len(removed) == 80_000
    assert {(key, old) for _, key, old in removed} == {("plan", "pro"), ("score", "7")}
    async with engine.connect() as conn:
        left = await conn.execute(text("SELECT count(*) FROM field_values WHERE space_id = :s"), {"s": space})
        assert left.scalar_one() == 0


async def test_respelling_more_values_than_a_statement_has_parameters(
    service: ContactsService, engine: AsyncEngine, space: str, manager: Actor, sink
) -> None:
    """40,000 values of an option whose case changed (above PostgreSQL's 32,767 bind parameters) are all kept,
    rewritten and announced, in one UpdateField."""
    plan = await service.create_field(space, "plan", "Plan", "list", options=["Gold", "Free"])
    async with engine.begin() as conn:
        params = {"s": space, "p": plan.id}
        await conn.execute(
            text(
                "INSERT INTO contacts (id, space_id, created_at, updated_at)"
                " SELECT gen_random_uuid(), :s, now(), now() FROM generate_series(1, 40000)"
            ),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO field_values (contact_id, field_id, space_id, value_text)"
                " SELECT id, CAST(:p AS uuid), space_id, 'Gold' FROM contacts WHERE space_id = :s"
            ),
            params,
        )
    await service.update_field(space, manager, str(plan.id), options=["gold", "Free"])
    changes = _changes(sink, space)
    assert len(changes) == 40_000 and {(old, new) for _, old, new in changes} == {("Gold", "gold")}
    async with engine.connect() as conn:
        left = await conn.execute(
            text("SELECT value_text, count(*) FROM field_values WHERE space_id = :s GROUP BY value_text"), {"s": space}
        )
        assert left.all() == [("gold", 40_000)]
