"""Fixtures: a migrated database per test module and a ContactsService on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from parley_contacts.repository import DomainEvent, Repository
from parley_contacts.service import Actor, ContactsService
from parley_kit.db import create_engine, run_migrations, session_factory
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


class RecordingSink:
    """Collects the events of committed transactions only (rolled-back ones vanish, like the outbox)."""

    def __init__(self) -> None:
        self.events: list[DomainEvent] = []

    async def __call__(self, session: AsyncSession, event: DomainEvent) -> None:
        pending = session.info.get("pending_events")
        if pending is None:
            pending = session.info["pending_events"] = []

            def committed(_: object) -> None:
                self.events.extend(pending)
                session.info.pop("pending_events", None)

            def rolled_back(_: object) -> None:
                session.info.pop("pending_events", None)

            sa_event.listen(session.sync_session, "after_commit", committed, once=True)
            sa_event.listen(session.sync_session, "after_rollback", rolled_back, once=True)
        pending.append(event)

    def of(self, kind: str, space_id: str | None = None) -> list[DomainEvent]:
        return [e for e in self.events if e.kind == kind and (space_id is None or e.space_id == space_id)]


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await run_migrations("parley_contacts", database_url)
    engine = create_engine(database_url, pool_size=20)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture(scope="module")
def service(engine: AsyncEngine, sink: RecordingSink) -> ContactsService:
    return ContactsService(Repository(session_factory(engine), sink))


@pytest.fixture
def space() -> str:
    """A fresh space per test: tests share a database but never each other's rows."""
    return f"sp_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def agent() -> Actor:
    return Actor(subject="user:agent1", user_id="agent1")


@pytest.fixture
def manager() -> Actor:
    return Actor(subject="user:boss", user_id="boss", manage_shared_views=True)


StoredTags = Callable[[str], Awaitable[dict[uuid.UUID, set[uuid.UUID]]]]


@pytest.fixture
def stored_tags(engine: AsyncEngine) -> StoredTags:
    """Each contact of a space -> its tag ids as stored, once checked that its row (`tag_ids`), its
    `contact_tags` rows and its custom values' copies all agree."""

    async def read(space: str) -> dict[uuid.UUID, set[uuid.UUID]]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.id, c.tag_ids, coalesce((SELECT array_agg(t.tag_id) FROM contact_tags t"
                    " WHERE t.contact_id = c.id), '{}') AS tag_rows,"
                    " coalesce((SELECT bool_and(v.tag_ids = c.tag_ids) FROM field_values v"
                    " WHERE v.contact_id = c.id), true) AS copies_exact"
                    " FROM contacts c WHERE c.space_id = :s"
                ),
                {"s": space},
            )
            found = {r.id: (set(r.tag_ids), set(r.tag_rows), r.copies_exact) for r in rows}
        disagree = {c: f for c, f in found.items() if f[0] != f[1] or not f[2]}
        assert not disagree, f"tag ids on rows, contact_tags and value copies disagree: {disagree}"
        return {c: f[0] for c, f in found.items()}

    return read
