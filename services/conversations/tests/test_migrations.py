"""Migrations are reversible and carry the copies of contacts' custom values over: values copied by key before
field ids were kept stay readable by that key, and the first event naming their field's id adopts them."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from parley_conversations import events
from parley_conversations.domain import ContactChange, FieldValue, values_by_key
from parley_conversations.models import metadata
from parley_conversations.repository import Repository
from parley_conversations.service import ContactFollower, ConversationsService
from parley_kit.db import create_engine, run_migrations, session_factory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

BEFORE_IDS = "20261125_0004"
EARLY = "2026-11-30T10:00:00+00:00"  # when the legacy copies were made
LATER = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await run_migrations("parley_conversations", database_url, "base", downgrade=True)
    await run_migrations("parley_conversations", database_url, BEFORE_IDS)
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()
    await run_migrations("parley_conversations", database_url)


async def _legacy_contact(engine: AsyncEngine, space: str, fields: dict[str, str]) -> str:
    contact_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO contacts (contact_id, space_id, first_name, last_name, display_name, fields, fields_at,"
                " updated_at) VALUES (:c, :s, '', '', '', CAST(:f AS jsonb), CAST(:a AS jsonb), now())"
            ),
            {"c": contact_id, "s": space, "f": json.dumps(fields), "a": json.dumps(dict.fromkeys(fields, EARLY))},
        )
    return contact_id


async def _copy(engine: AsyncEngine, contact_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT fields, fields_at FROM contacts WHERE contact_id = :c"), {"c": contact_id})
        ).one()
    return row.fields, row.fields_at


async def test_migrations_upgrade_downgrade_and_upgrade_again(database_url: str) -> None:
    async def tables() -> set[str]:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    await run_migrations("parley_conversations", database_url)
    assert set(metadata.tables) <= await tables()
    await run_migrations("parley_conversations", database_url, "base", downgrade=True)
    assert await tables() <= {"alembic_version"}
    await run_migrations("parley_conversations", database_url)
    assert set(metadata.tables) <= await tables()


async def test_legacy_copies_are_kept_by_key_and_given_back_on_downgrade(
    engine: AsyncEngine, database_url: str
) -> None:
    a = await _legacy_contact(engine, "sp-a", {"plan": "gold", "city": "Paris"})
    b = await _legacy_contact(engine, "sp-b", {"plan": "free"})
    await run_migrations("parley_conversations", database_url)
    assert await _copy(engine, a) == (
        {"key:plan": "gold", "key:city": "Paris"},
        {"key:plan": EARLY, "key:city": EARLY},
    )
    async with engine.connect() as conn:
        known = (await conn.execute(text("SELECT space_id, field_id, key FROM contact_fields ORDER BY 1, 2"))).all()
    assert [tuple(r) for r in known] == [
        ("sp-a", "key:city", "city"),
        ("sp-a", "key:plan", "plan"),
        ("sp-b", "key:plan", "plan"),
    ]
    # A field of sp-a renamed (adopting sp-a's copies only); back to keys, under its current key.
    follower = ContactFollower(ConversationsService(Repository(session_factory(engine), events.write_events)))
    await follower.field_renamed("sp-a", "f-plan", "plan", "tier", LATER)
    await run_migrations("parley_conversations", database_url, BEFORE_IDS, downgrade=True)
    assert (await _copy(engine, a))[0] == {"tier": "gold", "city": "Paris"}
    assert (await _copy(engine, b))[0] == {"plan": "free"}


async def test_the_first_event_naming_a_field_adopts_its_legacy_copies(engine: AsyncEngine, database_url: str) -> None:
    space = "sp-adopt"
    ana = await _legacy_contact(engine, space, {"plan": "gold", "city": "Paris", "score": "7"})
    bob = await _legacy_contact(engine, space, {"plan": "free", "city": "Rome", "score": "3"})
    await run_migrations("parley_conversations", database_url)
    repo = Repository(session_factory(engine), events.write_events)
    follower = ContactFollower(ConversationsService(repo))

    async def rendered(contact_id: str, *keys: str) -> dict[str, Any]:
        async with repo.transaction() as tx:
            contact = await tx.contact(contact_id)
            assert contact is not None
            return values_by_key(contact.fields, await tx.known_fields(space, keys))

    # Not adopted yet: found by key.
    assert await rendered(ana, "plan", "city", "score") == {"plan": "gold", "city": "Paris", "score": "7"}
    # A value event names the field of `plan` first: every contact's copy moves under its id; Bob's newer value wins.
    plan = FieldValue("f-plan", "plan", "silver")
    await follower.changed(ContactChange(space, bob, LATER, fields=(plan,)))
    assert await _copy(engine, ana) == (
        {"f-plan": "gold", "key:city": "Paris", "key:score": "7"},
        {"f-plan": EARLY, "key:city": EARLY, "key:score": EARLY},
    )
    assert (await _copy(engine, bob))[0] == {"f-plan": "silver", "key:city": "Rome", "key:score": "3"}
    # A rename names the field of `city` first (by its old key); a deletion the field of `score`.
    await follower.field_renamed(space, "f-city", "city", "town", LATER)
    await follower.field_deleted(space, "f-score", "score", LATER)
    assert (await _copy(engine, ana))[0] == {"f-plan": "gold", "f-city": "Paris"}
    assert await rendered(ana, "plan", "town", "city", "score") == {"plan": "gold", "town": "Paris"}
    assert await rendered(bob, "plan", "town") == {"plan": "silver", "town": "Rome"}
    # An older value than the legacy copy's time changes nothing: the adopted copy kept its time.
    await follower.changed(ContactChange(space, ana, datetime(2026, 11, 1, tzinfo=UTC), fields=(plan,)))
    assert (await _copy(engine, ana))[0]["f-plan"] == "gold"
