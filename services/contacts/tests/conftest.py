"""Fixtures: a migrated database per test module, a ContactsService on it that checks assignees with the
real workspace service (a process), and a fresh workspace space per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from parley_contacts.repository import DomainEvent, Repository
from parley_contacts.service import Actor, ContactsService
from parley_kit.db import create_engine, run_migrations, session_factory
from parley_kit.directory import WorkspaceDirectory
from parley_kit.testing.processes import WorkspaceAdmin, WorkspaceProcess
from sqlalchemy import event as sa_event
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
async def directory(
    workspace_service: WorkspaceProcess, mint_token: Callable[..., str]
) -> AsyncIterator[WorkspaceDirectory]:
    """The workspace directory as the service builds it (the real workspace, this service's platform token)."""
    token = mint_token(space_id="*", role="system", subject="service:contacts", ttl=86_400)
    found = WorkspaceDirectory.connect(workspace_service.target, token, service="contacts")
    yield found
    await found.close()


@pytest.fixture(scope="module")
def service(engine: AsyncEngine, sink: RecordingSink, directory: WorkspaceDirectory) -> ContactsService:
    return ContactsService(Repository(session_factory(engine), sink), assignees=directory.require_assignee)


@pytest.fixture
def admin(workspace_service: WorkspaceProcess) -> WorkspaceAdmin:
    """Makes the members and teams of a space (what the service may assign)."""
    return workspace_service.admin


@pytest.fixture
async def space(admin: WorkspaceAdmin) -> str:
    """A fresh space of the real workspace per test: tests share a database but never each other's rows."""
    return await admin.space()


@pytest.fixture
def agent() -> Actor:
    return Actor(subject="user:agent1", user_id="agent1")


@pytest.fixture
def manager() -> Actor:
    return Actor(subject="user:boss", user_id="boss", manage_shared_views=True)
