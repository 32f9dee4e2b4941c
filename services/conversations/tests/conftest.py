"""Fixtures for the conversations tests: migrated database, fresh streams, a running service, and a
test double of the contacts service (FakeContactsService) until the real one is merged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.errors import NotFoundError
from parley.channel_gateway.v1 import events_pb2 as gw
from parley.common.v1 import common_pb2 as common
from parley.contacts.v1 import contacts_service_pb2 as cpb
from parley.contacts.v1 import contacts_service_pb2_grpc as cpb_grpc
from parley.conversations.v1 import conversations_service_pb2_grpc as pb_grpc
from parley.workspace.v1 import resources_pb2 as wres
from parley.workspace.v1 import user_service_pb2 as upb
from parley.workspace.v1 import user_service_pb2_grpc as upb_grpc
from parley_conversations.app import Conversations, build_app
from parley_conversations.config import Settings
from parley_kit.auth import jwks
from parley_kit.contracts import channel_gateway as cg
from parley_kit.db import run_migrations
from parley_kit.grpc_client import create_channel
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


class ContactsProcess:
    """The real contacts service (`python -m parley_contacts serve`) for the whole test session, on its own
    database; `stop()` / `start()` for outage tests."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = env
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ContactsProcess:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley_contacts", "serve"], env=self.env, stdout=out, stderr=out
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"contacts exited with {self.proc.returncode}; see {self.log}")
            try:
                with grpc.insecure_channel(self.target) as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return self
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"contacts did not become SERVING; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def contacts_service(
    postgres_server: Any, nats_url: str, signing_key: Any, parley_tmp: Path
) -> Iterator[ContactsProcess]:
    database_url = postgres_server.create_database(f"contacts_for_conversations_{uuid.uuid4().hex[:8]}")
    port = _free_port()
    env = {
        **os.environ,
        "PARLEY_SERVICE_NAME": "contacts",
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_NATS_URL": nats_url,
        "PARLEY_GRPC_HOST": "127.0.0.1",
        "PARLEY_GRPC_PORT": str(port),
        "PARLEY_METRICS_PORT": "0",
        "PARLEY_AUTH_JWKS": json.dumps(jwks(signing_key)),
        "PARLEY_CONTACTS_MIGRATE_ON_START": "true",
    }
    process = ContactsProcess(env, port, parley_tmp / "contacts-for-conversations.log").start()
    yield process
    process.stop()


@pytest.fixture
def contacts_stub(contacts_service: ContactsProcess, mint_token: Any) -> Callable[..., Any]:
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


class FakeWorkspaceUsers(upb_grpc.UserServiceServicer):
    """TEST DOUBLE of the workspace's UserService.GetUser: display names from a dict."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    async def GetUser(self, request: upb.GetUserRequest, context: grpc.aio.ServicerContext) -> upb.GetUserResponse:
        if request.user_id not in self.names:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"user '{request.user_id}' not found")
        return upb.GetUserResponse(user=wres.User(id=request.user_id, display_name=self.names[request.user_id]))


@pytest.fixture(scope="module")
async def fake_workspace() -> AsyncIterator[tuple[FakeWorkspaceUsers, str]]:
    server = grpc.aio.server()
    fake = FakeWorkspaceUsers()
    upb_grpc.add_UserServiceServicer_to_server(fake, server)
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
    contacts_service: ContactsProcess,
    fake_workspace: tuple[FakeWorkspaceUsers, str],
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
            "workspace_addr": fake_workspace[1],
            "service_token": mint_token(space_id="*", role="system", subject="service:conversations"),
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
    """stub_for(space_id=..., role=..., subject=..., name=...) -> a client stub with that caller's token."""
    _, target = service
    channels: list[grpc.aio.Channel] = []

    def make(space_id: str, role: str = "agent", subject: str = "user:u1", name: str = "") -> Any:
        extra = {"name": name} if name else None
        token = mint_token(space_id=space_id, role=role, subject=subject, extra=extra)
        ch = create_channel(target, token=token, timeout=10.0, max_attempts=2)
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
