"""Fixtures: a migrated database per test module, a ContactsService on it that checks assignees with the
real workspace service (a process), a fresh workspace space per test, and the service's gRPC API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from parley.contacts.v1 import contacts_service_pb2_grpc as pb_grpc
from parley_contacts.grpc_api import SERVICE_NAME, ContactsApi, register
from parley_contacts.repository import DomainEvent, Repository
from parley_contacts.service import Actor, ContactsService
from parley_kit.auth import SigningKey, TokenVerifier, jwks
from parley_kit.db import create_engine, run_migrations, session_factory
from parley_kit.directory import WorkspaceDirectory
from parley_kit.grpc_server import GrpcServer, JwtAuthenticator
from parley_kit.testing.processes import WorkspaceAdmin, WorkspaceProcess
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


@pytest.fixture(scope="module")
async def target(service: ContactsService, signing_key: SigningKey) -> AsyncIterator[str]:
    """The gRPC API on the module's service, with the kit's interceptor (auth, error mapping)."""
    server = GrpcServer("contacts", authenticator=JwtAuthenticator(TokenVerifier.from_jwks(jwks(signing_key))))
    server.add(register, ContactsApi(service), SERVICE_NAME)
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    yield f"127.0.0.1:{port}"
    await server.stop(1)


@pytest.fixture(scope="module")
def client(target: str, mint_token: Callable[..., str]) -> Callable[..., pb_grpc.ContactsServiceStub]:
    """client(role, space, user): a stub whose calls carry a token for that role in that space."""
    channel = grpc.aio.insecure_channel(target)
    stubs: dict[tuple[str, str, str], pb_grpc.ContactsServiceStub] = {}

    def make(role: str, space: str, user: str) -> pb_grpc.ContactsServiceStub:
        token = mint_token(space_id=space, role=role, subject=f"user:{user}")
        stub = pb_grpc.ContactsServiceStub(channel)

        class Authed:
            def __getattr__(self, name: str):  # every call carries the token
                method = getattr(stub, name)
                return lambda req: method(req, metadata=(("authorization", f"Bearer {token}"),))

        return Authed()  # type: ignore[return-value]

    return lambda role="agent", space="sp_api", user="u1": stubs.setdefault(
        (role, space, user), make(role, space, user)
    )
