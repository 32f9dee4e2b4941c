"""Transactional outbox: committed events reach JetStream exactly once, rolled-back ones never."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from opentelemetry import trace
from parley.channel_gateway.v1.events_pb2 import TextPart
from parley_kit import telemetry
from parley_kit.db import create_engine, new_metadata, session_factory, transaction
from parley_kit.nats import Publisher, StreamSpec, provision
from parley_kit.nats import headers as h
from parley_kit.outbox import OutboxRelay, enqueue, enqueue_many, outbox_table
from parley_kit.telemetry import configure_tracing
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

OUTBOX = outbox_table(new_metadata())
RELAY_PROCESS = Path(__file__).with_name("outbox_relay_process.py")
T = TypeVar("T")


@pytest.fixture(scope="module")
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.drain()


@pytest.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(OUTBOX.metadata.create_all)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def service(js: JetStreamContext, unique_name: str) -> str:
    """A service name whose stream `<SERVICE>` takes `<service>.>`."""
    name = f"ob{unique_name.lower()}"
    await provision(js, [StreamSpec(name=name.upper(), subjects=(f"{name}.>",), max_age=timedelta(hours=1))], [])
    return name


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool] = bool, within: float = 5.0) -> T:
    """Poll `probe` until its result is accepted."""
    deadline = time.monotonic() + within
    while not accept(result := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"last result {result!r} not accepted within {within}s")
        await asyncio.sleep(0.02)
    return result


async def unpublished(sessions: async_sessionmaker[AsyncSession], service: str) -> int:
    """Rows of `service` (msg ids start with its name) not yet marked published."""
    async with sessions() as session:
        query = select(func.count()).where(OUTBOX.c.msg_id.startswith(service), OUTBOX.c.published_at.is_(None))
        return int(await session.scalar(query) or 0)


async def stored(js: JetStreamContext, service: str) -> int:
    return (await js.stream_info(service.upper())).state.messages


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[OutboxRelay]:
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def test_committed_event_is_relayed_with_its_trace_and_a_rolled_back_one_never_is(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], service: str
) -> None:
    configure_tracing("parley-kit-tests")
    subject = f"{service}.contact.created"
    with trace.get_tracer("test").start_as_current_span("request") as request:
        async with transaction(sessions) as session:
            await enqueue(session, subject, TextPart(text="kept"), msg_id=f"{service}-kept")
    with contextlib.suppress(RuntimeError):
        async with transaction(sessions) as session:
            await enqueue(session, subject, TextPart(text="gone"), msg_id=f"{service}-rolled-back")
            raise RuntimeError("the request failed after enqueueing")

    async with running(OutboxRelay(sessions, OUTBOX, Publisher(js, service), service, poll_interval=0.05)):
        await eventually(lambda: stored(js, service))
        await eventually(lambda: unpublished(sessions, service), lambda n: n == 0)

    assert await stored(js, service) == 1
    message = await js.get_msg(service.upper(), 1)
    assert message.data == TextPart(text="kept").SerializeToString()
    assert message.headers is not None
    assert message.headers[h.MSG_ID] == f"{service}-kept"
    assert message.headers[h.EVENT_TYPE] == "parley.channel_gateway.v1.TextPart"
    assert message.headers[h.TRACEPARENT].split("-")[1] == f"{request.get_span_context().trace_id:032x}"


async def test_a_batch_keeps_each_event_s_own_trace_context(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], service: str
) -> None:
    configure_tracing("parley-kit-tests")
    tracer = trace.get_tracer("test")
    subject = f"{service}.message.received"
    with tracer.start_as_current_span("event a") as a:
        carrier_a = telemetry.inject({})
    with tracer.start_as_current_span("batch") as batch:
        async with transaction(sessions) as session:
            await enqueue_many(
                session,
                [
                    (subject, TextPart(text="a"), f"{service}-a", telemetry.extract(carrier_a)),
                    (subject, TextPart(text="batch"), f"{service}-batch"),
                ],
            )
    async with running(OutboxRelay(sessions, OUTBOX, Publisher(js, service), service, poll_interval=0.05)):
        await eventually(lambda: stored(js, service), lambda n: n == 2)
    traces = {}
    for seq in (1, 2):
        message = await js.get_msg(service.upper(), seq)
        assert message.headers is not None
        traces[message.headers[h.MSG_ID]] = message.headers[h.TRACEPARENT].split("-")[1]
    assert traces == {
        f"{service}-a": f"{a.get_span_context().trace_id:032x}",
        f"{service}-batch": f"{batch.get_span_context().trace_id:032x}",
    }


async def test_enqueueing_the_same_msg_id_twice_stores_one_row(
    sessions: async_sessionmaker[AsyncSession], service: str
) -> None:
    for _ in range(2):
        async with transaction(sessions) as session:
            await enqueue(session, f"{service}.contact.created", TextPart(text="x"), msg_id=f"{service}-once")
    assert await unpublished(sessions, service) == 1


async def test_enqueue_many_keeps_the_order_and_skips_msg_ids_already_there(
    sessions: async_sessionmaker[AsyncSession], service: str
) -> None:
    subject = f"{service}.contact.created"
    async with transaction(sessions) as session:
        await enqueue(session, subject, TextPart(text="first"), msg_id=f"{service}-b")
    async with transaction(sessions) as session:
        await enqueue_many(
            session,
            [(subject, TextPart(text=t), f"{service}-{t}") for t in ("c", "b", "a", "c")],
        )
    async with sessions() as session:
        rows = (
            await session.execute(
                select(OUTBOX.c.msg_id, OUTBOX.c.payload)
                .where(OUTBOX.c.msg_id.startswith(service))
                .order_by(OUTBOX.c.id)
            )
        ).all()
    assert [(m, TextPart.FromString(p).text) for m, p in rows] == [
        (f"{service}-b", "first"),
        (f"{service}-c", "c"),
        (f"{service}-a", "a"),
    ]


async def test_relay_wakes_on_notify_without_waiting_for_its_poll_interval(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], service: str
) -> None:
    async with running(OutboxRelay(sessions, OUTBOX, Publisher(js, service), service, poll_interval=30.0)):
        await asyncio.sleep(0.3)  # the relay has found nothing and sleeps
        async with transaction(sessions) as session:
            await enqueue(session, f"{service}.contact.created", TextPart(text="now"), msg_id=f"{service}-now")
        await eventually(lambda: stored(js, service), within=2.0)


async def test_relay_keeps_events_while_jetstream_refuses_them_and_relays_them_in_order_later(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], unique_name: str
) -> None:
    service = f"late{unique_name.lower()}"
    async with transaction(sessions) as session:
        for n in range(3):
            await enqueue(session, f"{service}.contact.created", TextPart(text="x"), msg_id=f"{service}-{n}")
    relay = OutboxRelay(sessions, OUTBOX, Publisher(js, service), service, poll_interval=0.05, error_backoff=0.1)
    async with running(relay):
        await asyncio.sleep(0.5)  # several attempts, all refused: no stream takes these subjects yet
        assert await unpublished(sessions, service) == 3
        assert REGISTRY.get_sample_value("parley_outbox_pending_events", {"service": service}) == 3
        await provision(js, [StreamSpec(name=service.upper(), subjects=(f"{service}.>",), max_age=None)], [])
        await eventually(lambda: unpublished(sessions, service), lambda n: n == 0)

    ids = [(await js.get_msg(service.upper(), seq)).headers[h.MSG_ID] for seq in (1, 2, 3)]  # type: ignore[index]
    assert ids == [f"{service}-0", f"{service}-1", f"{service}-2"]


async def test_relay_prunes_rows_published_longer_ago_than_the_retention(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], service: str
) -> None:
    async with transaction(sessions) as session:
        await enqueue(session, f"{service}.contact.created", TextPart(text="x"), msg_id=f"{service}-old")

    async def rows() -> int:
        async with sessions() as session:
            return int(await session.scalar(select(func.count()).where(OUTBOX.c.msg_id.startswith(service))) or 0)

    publisher = Publisher(js, service)
    relay = OutboxRelay(
        sessions, OUTBOX, publisher, service, poll_interval=0.05, retention=timedelta(0), prune_interval=0
    )
    async with running(relay):
        await eventually(lambda: stored(js, service))
        await eventually(rows, lambda n: n == 0)


async def test_relay_killed_mid_batch_republishes_and_every_event_is_stored_exactly_once(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], service: str, database_url: str, nats_url: str
) -> None:
    events = 300
    async with transaction(sessions) as session:
        for n in range(events):
            await enqueue(session, f"{service}.contact.created", TextPart(text=str(n)), msg_id=f"{service}-{n:03}")

    async def relay_process(publish_delay: float) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(RELAY_PROCESS), database_url, nats_url, str(publish_delay)
        )

    slow = await relay_process(0.003)
    try:
        await eventually(lambda: stored(js, service), lambda n: n >= 120, within=30.0)
    finally:
        slow.kill()
        await slow.wait()
    # The crash hit the window the outbox exists for: published to JetStream, not yet marked in the database.
    assert await stored(js, service) > events - await unpublished(sessions, service)

    restarted = await relay_process(0.0)
    try:
        await eventually(lambda: unpublished(sessions, service), lambda n: n == 0, within=30.0)
    finally:
        restarted.terminate()
        await restarted.wait()

    assert await stored(js, service) == events
    msg_ids = {(await js.get_msg(service.upper(), seq)).headers[h.MSG_ID] for seq in range(1, events + 1)}  # type: ignore[index]
    assert msg_ids == {f"{service}-{n:03}" for n in range(events)}


async def stream_msg_ids(js: JetStreamContext, service: str) -> list[str]:
    """The Nats-Msg-Id of every message of the service's stream, in stream order."""
    messages = [await js.get_msg(service.upper(), seq) for seq in range(1, await stored(js, service) + 1)]
    return [m.headers[h.MSG_ID] for m in messages]  # type: ignore[index]


def published_total(service: str, outcome: str) -> float:
    labels = {"service": service, "event_type": TextPart.DESCRIPTOR.full_name, "outcome": outcome}
    return REGISTRY.get_sample_value("parley_events_published_total", labels) or 0


async def test_relay_publishes_a_backlog_of_several_batches_in_id_order(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], service: str
) -> None:
    events = 1234
    async with transaction(sessions) as session:
        await enqueue_many(
            session,
            [(f"{service}.kind.{n % 5}", TextPart(text=str(n)), f"{service}-{n:05}") for n in range(events)],
        )
    relay = OutboxRelay(sessions, OUTBOX, Publisher(js, service), service, poll_interval=0.05, batch_size=500)
    async with running(relay):
        await eventually(lambda: unpublished(sessions, service), lambda n: n == 0, within=30.0)

    assert await stream_msg_ids(js, service) == [f"{service}-{n:05}" for n in range(events)]
    assert published_total(service, "duplicate") == 0


async def test_a_publish_refused_mid_batch_keeps_only_that_event_pending_and_publishes_nothing_twice(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], unique_name: str
) -> None:
    service = f"refused{unique_name.lower()}"
    spec = StreamSpec(name=service.upper(), subjects=(f"{service}.>",), max_age=None, max_msg_size=400)
    await provision(js, [spec], [])
    async with transaction(sessions) as session:
        for n in range(10):
            text_ = "too big for the stream " * 30 if n == 4 else str(n)
            await enqueue(session, f"{service}.contact.created", TextPart(text=text_), msg_id=f"{service}-{n}")
    relay = OutboxRelay(sessions, OUTBOX, Publisher(js, service), service, poll_interval=0.05, error_backoff=0.1)
    async with running(relay):
        await eventually(lambda: stored(js, service), lambda n: n == 9)
        await asyncio.sleep(0.3)  # a few more rounds, each refused again
        assert await unpublished(sessions, service) == 1
        assert await stored(js, service) == 9
        config: StreamConfig = (await js.stream_info(spec.name)).config
        config.max_msg_size = -1
        await js.update_stream(config)
        await eventually(lambda: unpublished(sessions, service), lambda n: n == 0)

    # Every event once; the refused one after the rest of its batch (the documented exception to id order).
    assert await stream_msg_ids(js, service) == [f"{service}-{n}" for n in (0, 1, 2, 3, 5, 6, 7, 8, 9, 4)]
    assert published_total(service, "duplicate") == 0  # the acknowledged ones were never published again
    assert published_total(service, "error") >= 2


class AckLosingPublisher(Publisher):
    """Sends one chosen event once with a reply subject nobody listens on: stored, never acknowledged."""

    def __init__(self, js: JetStreamContext, service: str, lose: str) -> None:
        super().__init__(js, service, timeout=0.3)
        self.lose: str | None = lose

    async def _send(self, subject: str, data: bytes, *, reply: str, headers: dict[str, str]) -> None:
        if headers[h.MSG_ID] == self.lose:
            self.lose, reply = None, f"{reply}.nobody"
        await super()._send(subject, data, reply=reply, headers=headers)


async def test_a_lost_acknowledgement_mid_batch_is_republished_and_dropped_as_a_duplicate(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], service: str
) -> None:
    async with transaction(sessions) as session:
        for n in range(10):
            await enqueue(session, f"{service}.contact.created", TextPart(text=str(n)), msg_id=f"{service}-{n}")
    publisher = AckLosingPublisher(js, service, lose=f"{service}-4")
    relay = OutboxRelay(sessions, OUTBOX, publisher, service, poll_interval=0.05, error_backoff=0.1)
    async with running(relay):
        await eventually(lambda: unpublished(sessions, service), lambda n: n == 0)

    assert publisher.lose is None
    assert await stream_msg_ids(js, service) == [f"{service}-{n}" for n in range(10)]
    assert (published_total(service, "ok"), published_total(service, "duplicate")) == (9, 1)
    assert published_total(service, "error") == 1
