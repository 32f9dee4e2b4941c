"""Values removed through the field catalog (a list option removed, a field deleted) are announced: one
field.updated (old value, new empty) per removed value, in the transaction that removes it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from parley_contacts.domain import FieldDef
from parley_contacts.repository import Repository
from parley_contacts.service import Actor, ContactsService
from parley_kit.db import session_factory
from parley_kit.errors import NotFound
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


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
    delete waits, then is NOT_FOUND, instead of being erased by the cascade without an event."""
    slow = ContactsService(SlowRemovalRepository(session_factory(engine), sink))
    score = await slow.create_field(space, "score", "Score", "number")
    before = await slow.create_contact(space, manager, {}, {"score": "1"})
    late = await slow.create_contact(space, manager, {})
    deleting = asyncio.create_task(slow.delete_field(space, manager, str(score.id)))
    await asyncio.sleep(0.1)  # the values are gone, the definition not yet
    writing = asyncio.create_task(slow.update_contact(space, manager, str(late.id), {}, {"score": "2"}))
    await deleting
    with pytest.raises(NotFound, match="custom field 'score' was deleted"):
        await writing
    last = {str(e.data["contact_id"]): e.data["new"] for e in sink.of("field.updated", space)}
    assert last == {str(before.id): ""}


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
