"""Fixtures for the conversations tests: migrated database, fresh streams, a running service, the real
contacts and workspace services as processes, and a test double of the contacts service
(FakeContactsService) for the ingest's failure cases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.errors import NotFoundError
from parley.channel_gateway.v1 import events_pb2 as gw
from parley.common.v1 import common_pb2 as common
from parley.contacts.v1 import contacts_service_pb2 as cpb
from parley.contacts.v1 import contacts_service_pb2_grpc as cpb_grpc
from parley.conversations.v1 import conversations_service_pb2_grpc as pb_grpc
from parley_conversations.app import Conversations, build_app
from parley_conversations.config import Settings
from parley_kit.auth import jwks
from parley_kit.contracts import channel_gateway as cg
from parley_kit.db import run_migrations
from parley_kit.grpc_client import create_channel
from parley_kit.local.servers import free_port
from parley_kit.testing.processes import ServiceProcess, WorkspaceAdmin, WorkspaceProcess, service_env
from parley_kit.testing.service import running


class FakeContactsService(cpb_grpc.ContactsServiceServicer):
    """TEST DOUBLE of ContactsService.UpsertByIdentity and UpsertByIdentities: one contact per (space,
    channel, external id), created exactly once even under concurrent calls (an asyncio lock), recording
    every identity asked for (`calls`) and the traceparent of every call. `fail_with` fails whole calls;
    `refuse` and `fail_items` answer chosen identities with a per-item error code."""

    def __init__(self) -> None:
        self.contacts: dict[tuple[str, str, str], str] = {}
        self.calls: list[cpb.UpsertByIdentityRequest] = []
        self.traceparents: list[str] = []
        self.fail_with: grpc.StatusCode | None = None
        self.refuse: set[str] = set()  # external ids UpsertByIdentities answers INVALID_ARGUMENT for
        self.fail_items: dict[str, grpc.StatusCode] = {}  # external id -> the per-item code answered for it
        self.batches = 0
        self._lock = asyncio.Lock()

    async def UpsertByIdentity(
        self, request: cpb.UpsertByIdentityRequest, context: grpc.aio.ServicerContext
    ) -> cpb.UpsertByIdentityResponse:
        if self.fail_with is not None:
            await context.abort(self.fail_with, "contacts test double told to fail")
        self.calls.append(request)
        self.traceparents += [str(v) for k, v in (context.invocation_metadata() or ()) if k == "traceparent"]
        key = (request.space_id, request.channel_id, request.external_id)
        async with self._lock:
            created = key not in self.contacts
            if created:
                self.contacts[key] = f"ct-{uuid.uuid4().hex[:12]}"
        return cpb.UpsertByIdentityResponse(contact_id=self.contacts[key], created=created)

    async def UpsertByIdentities(
        self, request: cpb.UpsertByIdentitiesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.UpsertByIdentitiesResponse:
        if self.fail_with is not None:
            await context.abort(self.fail_with, "contacts test double told to fail")
        self.traceparents += [str(v) for k, v in (context.invocation_metadata() or ()) if k == "traceparent"]
        self.batches += 1
        results = []
        for item in request.items:
            if item.external_id in self.refuse:
                code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                results.append(cpb.UpsertByIdentitiesResult(error_code=code, error_message="refused by the double"))
                continue
            if item.external_id in self.fail_items:
                code = self.fail_items[item.external_id].value[0]
                message = "the double failed this identity"
                results.append(cpb.UpsertByIdentitiesResult(error_code=code, error_message=message))
                continue
            self.calls.append(item)
            key = (item.space_id, item.channel_id, item.external_id)
            async with self._lock:
                created = key not in self.contacts
                if created:
                    self.contacts[key] = f"ct-{uuid.uuid4().hex[:12]}"
            results.append(cpb.UpsertByIdentitiesResult(contact_id=self.contacts[key], created=created))
        return cpb.UpsertByIdentitiesResponse(results=results)


@pytest.fixture(scope="session")
def contacts_service(
    postgres_server: Any,
    nats_url: str,
    signing_key: Any,
    parley_tmp: Path,
    workspace_service: WorkspaceProcess,
    mint_token: Any,
) -> Iterator[ServiceProcess]:
    """The real contacts service (`python -m parley_contacts serve`) for the whole test session, on its own
    database, checking assignees with the real workspace; `stop()` / `start()` for outage tests."""
    database_url = postgres_server.create_database(f"contacts_for_conversations_{uuid.uuid4().hex[:8]}")
    port = free_port()
    env = {
        **service_env("contacts", database_url, nats_url, signing_key, port),
        "PARLEY_CONTACTS_MIGRATE_ON_START": "true",
        "PARLEY_WORKSPACE_ADDR": workspace_service.target,
        "PARLEY_SERVICE_TOKEN": mint_token(space_id="*", role="system", subject="service:contacts", ttl=86_400),
    }
    process = ServiceProcess("parley_contacts", env, port, parley_tmp / "contacts-for-conversations.log").start()
    yield process
    process.stop()


@pytest.fixture
def admin(workspace_service: WorkspaceProcess) -> WorkspaceAdmin:
    """Spaces, members and teams of the real workspace (what conversations may be assigned to)."""
    return workspace_service.admin


@pytest.fixture
def contacts_stub(contacts_service: ServiceProcess, mint_token: Any) -> Callable[..., Any]:
    """contacts_stub(space_id, role=...) -> a ContactsService client of the real contacts service."""

    channels: list[grpc.aio.Channel] = []

    def make(space_id: str, role: str = "owner", subject: str = "user:boss") -> Any:
        token = mint_token(space_id=space_id, role=role, subject=subject)
        channels.append(create_channel(contacts_service.target, token=token, max_attempts=2))
        return cpb_grpc.ContactsServiceStub(channels[-1])

    return make


@pytest.fixture(scope="module")
async def fake_contacts() -> AsyncIterator[tuple[FakeContactsService, str]]:
    server = grpc.aio.server()
    fake = FakeContactsService()
    cpb_grpc.add_ContactsServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield fake, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture(scope="module")
async def migrated(database_url: str) -> str:
    await run_migrations("parley_conversations", database_url)
    return database_url


STREAMS = (cg.STREAM, "CONTACTS", "CONVERSATIONS", "CONVERSATIONS_DEAD_LETTER")


@pytest.fixture(scope="module")
async def fresh_streams(nats_url: str) -> str:
    """Each test module starts without the streams (and durables) earlier modules left behind."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for name in STREAMS:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)
    await nc.close()
    return nats_url


@pytest.fixture(scope="module")
def make_settings(
    migrated: str,
    fresh_streams: str,
    signing_key: Any,
    contacts_service: ServiceProcess,
    workspace_service: WorkspaceProcess,
    mint_token: Any,
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "service_name": "conversations",
            "database_url": migrated,
            "nats_url": fresh_streams,
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": 0,
            "auth_jwks": json.dumps(jwks(signing_key)),
            "contacts_addr": contacts_service.target,
            "workspace_addr": workspace_service.target,
            "service_token": mint_token(space_id="*", role="system", subject="service:conversations"),
            "assignee_release_batch": 2,  # releases take several transactions
            "ingest_rebalance_seconds": 0.5,
            "ingest_fetch_timeout_seconds": 0.5,
            "ingest_ack_wait_seconds": 5.0,
            "auto_close_interval_seconds": 3600,
            "shutdown_grace_seconds": 2.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[Conversations, str]]:
    app = await build_app(settings)
    async with running(app.rt) as target:
        yield app, target


@pytest.fixture(scope="module")
async def service(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Conversations, str]]:
    """One running conversations service for the module."""
    async with serve(make_settings()) as running_app:
        yield running_app


@pytest.fixture(scope="module")
def stub_for(service: tuple[Conversations, str], mint_token: Any) -> Callable[..., pb_grpc.ConversationsServiceStub]:
    """stub_for(space_id=..., role=..., subject=..., name=..., target=...) -> a client stub with that caller's
    token (of the module's service, or of the one at `target`)."""
    _, service_target = service
    channels: list[grpc.aio.Channel] = []

    def make(space_id: str, role: str = "agent", subject: str = "user:u1", name: str = "", target: str = "") -> Any:
        extra = {"name": name} if name else None
        token = mint_token(space_id=space_id, role=role, subject=subject, extra=extra)
        ch = create_channel(target or service_target, token=token, timeout=10.0, max_attempts=2)
        channels.append(ch)
        return pb_grpc.ConversationsServiceStub(ch)

    return make


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def inbound(
    space_id: str,
    channel_id: str,
    contact: str,
    mid: str,
    *,
    text: str = "hello",
    kind: int = gw.INBOUND_KIND_MESSAGE,
    at: datetime | None = None,
    channel_type: int = common.CHANNEL_TYPE_MESSENGER,
    seq: int = 0,
    first_name: str = "",
    **fields: Any,
) -> gw.InboundEvent:
    """A canonical inbound event as the gateway publishes it."""
    at = at or datetime.now(UTC)
    ev = gw.InboundEvent(
        event_id=f"{space_id}:{channel_id}:{mid}:{kind}",
        space_id=space_id,
        channel_id=channel_id,
        channel_type=channel_type,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        contact_external_id=contact,
        provider_message_id=mid,
        provider_timestamp=ts(at),
        received_at=ts(at),
        provider_sequence=seq,
        profile=gw.ProfileHints(first_name=first_name),
        **fields,
    )
    if text and kind in (gw.INBOUND_KIND_MESSAGE, gw.INBOUND_KIND_ECHO, gw.INBOUND_KIND_EDIT):
        ev.parts.append(gw.ContentPart(text=gw.TextPart(text=text)))
    return ev


async def publish_inbound(js: Any, events: list[gw.InboundEvent]) -> None:
    """Publish in order as the gateway does: on the contact's partition subject, Nats-Msg-Id = event_id.

    Pipelined on one connection (JetStream stores them in publish order); every ack is checked."""
    acks = []
    for ev in events:
        subject = cg.inbound_subject(ev.space_id, ev.channel_id, ev.contact_external_id)
        acks.append(await js.publish_async(subject, ev.SerializeToString(), headers={"Nats-Msg-Id": ev.event_id}))
    await asyncio.gather(*acks)


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll an async or sync predicate until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


@pytest.fixture(scope="module")
def helpers() -> Any:
    class H:
        inbound = staticmethod(inbound)
        publish_inbound = staticmethod(publish_inbound)
        wait_for = staticmethod(wait_for)
        ts = staticmethod(ts)
        serve = staticmethod(serve)
        read_stream = staticmethod(read_stream)
        subject_counts = staticmethod(subject_counts)

    return H


async def read_stream(js: Any, subject: str, message_type: Any, stream: str | None = None) -> list[Any]:
    """Every message on `subject` so far, decoded (an ephemeral consumer from the start)."""
    sub = await js.pull_subscribe(subject, stream=stream)
    out: list[Any] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(256, timeout=0.3)
            except TimeoutError:
                break
            for m in msgs:
                decoded = message_type()
                decoded.ParseFromString(m.data)
                out.append(decoded)
                await m.ack()
    finally:
        await sub.unsubscribe()
    return out


async def subject_counts(js: Any, stream: str, subjects: str = ">") -> dict[str, int]:
    info = await js.stream_info(stream, subjects_filter=subjects)
    return dict(info.state.subjects or {})
