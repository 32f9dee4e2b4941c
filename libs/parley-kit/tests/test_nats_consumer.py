"""ConsumerRunner: every message ends acked, retried after its backoff, or dead-lettered; none is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import nats
import pytest
import sqlalchemy.exc
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, RawStreamMsg
from parley.channel_gateway.v1.events_pb2 import TextPart
from parley_kit.errors import InvalidArgument, Unavailable
from parley_kit.nats import (
    ConsumerRunner,
    ConsumerSpec,
    Delivery,
    PoisonMessage,
    ProvisioningError,
    Publisher,
    StreamSpec,
    TransientError,
    dead_letter_stream,
    dead_letter_subject,
    is_transient,
    provision,
)
from parley_kit.nats import headers as h
from prometheus_client import REGISTRY


@pytest.fixture(scope="module")
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.drain()


async def eventually(check: Callable[[], Awaitable[Any] | Any], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


@dataclasses.dataclass
class Bench:
    """One stream, its consumer and the service's dead-letter stream, unique to a test."""

    js: JetStreamContext
    service: str
    spec: ConsumerSpec
    dead_letter_stream: str
    runners: list[ConsumerRunner] = dataclasses.field(default_factory=list)

    @property
    def subject(self) -> str:
        return f"{self.service}.thing.created"

    async def publish(self, text: str, msg_id: str) -> None:
        await Publisher(self.js, self.service).publish(self.subject, TextPart(text=text), msg_id=msg_id)

    def runner(self, handler: Any, **kwargs: Any) -> ConsumerRunner:
        kwargs = {"message_type": TextPart, "fetch_timeout": 0.5, **kwargs}
        runner = ConsumerRunner(self.js, self.spec, handler, service=self.service, **kwargs)
        self.runners.append(runner)
        return runner

    async def info(self) -> ConsumerInfo:
        return await self.js.consumer_info(self.spec.stream, self.spec.durable)

    async def settled(self) -> bool:
        info = await self.info()
        return info.num_ack_pending == 0 and info.num_pending == 0

    async def dead_letters(self) -> list[RawStreamMsg]:
        count = (await self.js.stream_info(self.dead_letter_stream)).state.messages
        return [await self.js.get_msg(self.dead_letter_stream, seq) for seq in range(1, count + 1)]

    def processed(self, outcome: str) -> float:
        labels = {"service": self.service, "consumer": self.spec.durable, "outcome": outcome}
        labels["event_type"] = TextPart.DESCRIPTOR.full_name
        return REGISTRY.get_sample_value("parley_events_processed_total", labels) or 0


@pytest.fixture
async def make_bench(js: JetStreamContext, unique_name: str) -> AsyncIterator[Callable[..., Awaitable[Bench]]]:
    benches: list[Bench] = []

    async def make(**consumer: Any) -> Bench:
        service = f"kit{unique_name.lower()}"
        stream = StreamSpec(name=service.upper(), subjects=(f"{service}.>",), max_age=timedelta(hours=1))
        dead_letters = dead_letter_stream(service, max_age=timedelta(hours=1))
        durable = f"{service}--test"
        spec = ConsumerSpec(
            stream=stream.name,
            durable=durable,
            filter_subjects=(f"{service}.thing.>",),
            ack_wait=timedelta(seconds=1),
            max_deliver=3,
            backoff=(timedelta(milliseconds=100),),
            max_ack_pending=100,
            dead_letter_subject=dead_letter_subject(service, durable),
        )
        spec = dataclasses.replace(spec, **consumer)
        await provision(js, [stream, dead_letters], [spec])
        bench = Bench(js, service, spec, dead_letters.name)
        benches.append(bench)
        return bench

    yield make
    for bench in benches:
        for runner in bench.runners:
            await runner.stop(grace=1.0)


async def test_handled_message_is_decoded_and_acked_once(make_bench: Callable[..., Awaitable[Bench]]) -> None:
    bench = await make_bench()
    seen: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery)

    await bench.runner(handler).start()
    await bench.publish("hello", "m-1")
    await eventually(lambda: len(seen) == 1)
    await eventually(bench.settled)

    delivery = seen[0]
    assert delivery.message == TextPart(text="hello")
    assert (delivery.subject, delivery.msg_id, delivery.num_delivered) == (bench.subject, "m-1", 1)
    assert delivery.event_type == "parley.channel_gateway.v1.TextPart"
    ack_floor = (await bench.info()).ack_floor
    assert ack_floor is not None and ack_floor.stream_seq == 1
    assert bench.processed("ack") == 1


async def test_transient_error_is_retried_after_its_backoff_then_acked(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench(backoff=(timedelta(milliseconds=600),))
    attempts: list[tuple[int, float]] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append((delivery.num_delivered, time.monotonic()))
        if len(attempts) == 1:
            raise TransientError("database is restarting")

    await bench.runner(handler).start()
    await bench.publish("retry me", "m-1")
    await eventually(lambda: len(attempts) == 2)
    await eventually(bench.settled)

    assert [n for n, _ in attempts] == [1, 2]
    assert attempts[1][1] - attempts[0][1] >= 0.55
    assert (bench.processed("nak"), bench.processed("ack")) == (1, 1)
    assert await bench.dead_letters() == []


async def test_transient_error_with_retry_after_is_redelivered_after_that_delay_not_the_backoff(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench(backoff=(timedelta(milliseconds=100),))
    attempts: list[float] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise TransientError("provider rate limit", retry_after=1.0)

    await bench.runner(handler).start()
    await bench.publish("wait as told", "m-1")
    await eventually(lambda: len(attempts) == 2)
    await eventually(bench.settled)
    assert attempts[1] - attempts[0] >= 0.95


async def test_message_failing_every_attempt_is_dead_lettered_after_max_deliver_and_not_redelivered(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench(max_deliver=3, ack_wait=timedelta(milliseconds=500))
    attempts: list[int] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.num_delivered)
        raise RuntimeError("boom")

    await bench.runner(handler).start()
    await bench.publish("never works", "m-1")
    await eventually(bench.dead_letters)
    await asyncio.sleep(1.0)  # twice ack_wait: a message still pending would have been redelivered

    assert attempts == [1, 2, 3]
    [dead] = await bench.dead_letters()
    assert dead.subject == bench.spec.dead_letter_subject
    assert dead.data == TextPart(text="never works").SerializeToString()
    assert dead.headers is not None
    assert dead.headers[h.DEAD_LETTER_REASON] == "failed 3 of 3 attempts; last error: RuntimeError: boom"
    assert dead.headers[h.ORIGINAL_SUBJECT] == bench.subject
    assert dead.headers[h.ORIGINAL_MSG_ID] == "m-1"
    assert dead.headers[h.CONSUMER] == bench.spec.durable
    assert dead.headers[h.EVENT_TYPE] == "parley.channel_gateway.v1.TextPart"
    assert await bench.settled()
    assert bench.processed("dead_letter") == 1


async def test_undecodable_payload_is_dead_lettered_without_reaching_the_handler(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench()
    calls: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        calls.append(delivery)

    await bench.runner(handler).start()
    publisher = Publisher(bench.js, bench.service)
    await publisher.publish_raw(bench.subject, b"\xff\xff\xff\xff", msg_id="m-1", event_type="garbage")
    await eventually(bench.dead_letters)
    await eventually(bench.settled)

    [dead] = await bench.dead_letters()
    assert dead.data == b"\xff\xff\xff\xff"
    assert dead.headers is not None
    assert dead.headers[h.DEAD_LETTER_REASON].startswith("undecodable payload: ")
    assert calls == []
    delivered = (await bench.info()).delivered
    assert delivered is not None and delivered.consumer_seq == 1  # terminated on its first delivery


async def test_poison_message_is_dead_lettered_on_its_first_attempt(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench(max_deliver=5)
    attempts: list[int] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.num_delivered)
        raise PoisonMessage("unknown channel ch-9")

    await bench.runner(handler).start()
    await bench.publish("poison", "m-1")
    await eventually(bench.dead_letters)
    await eventually(bench.settled)

    assert attempts == [1]
    [dead] = await bench.dead_letters()
    assert dead.headers is not None
    assert dead.headers[h.DEAD_LETTER_REASON] == "poison message: PoisonMessage: unknown channel ch-9"


async def test_message_whose_earlier_attempts_all_crashed_is_dead_lettered_without_running_the_handler(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench(max_deliver=2, ack_wait=timedelta(milliseconds=300))
    await bench.publish("kills its consumer", "m-1")
    crashed = await bench.js.pull_subscribe_bind(durable=bench.spec.durable, stream=bench.spec.stream)
    for _ in range(2):  # two consumers took the message and died before settling it
        [msg] = await crashed.fetch(1, timeout=2.0)
    assert msg.metadata.num_delivered == 2
    await crashed.unsubscribe()
    calls: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        calls.append(delivery)

    await bench.runner(handler).start()
    await eventually(bench.dead_letters)
    await eventually(bench.settled)

    assert calls == []
    [dead] = await bench.dead_letters()
    assert dead.headers is not None
    assert dead.headers[h.DEAD_LETTER_REASON].startswith("delivered 3 times without an outcome")


async def test_in_progress_heartbeat_keeps_a_handler_slower_than_ack_wait_from_redelivery(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    # Heartbeats every ack_wait/3 leave room for a ~1 s stall on a loaded machine; the handler still
    # runs three times longer than ack_wait, so without heartbeats it would be redelivered.
    bench = await make_bench(ack_wait=timedelta(milliseconds=1500))
    attempts: list[int] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.num_delivered)
        await asyncio.sleep(4.5)

    await bench.runner(handler, concurrency=2).start()  # a redelivery would reach the free slot
    await bench.publish("slow", "m-1")
    await eventually(bench.settled)

    assert attempts == [1]
    assert (await bench.info()).num_redelivered == 0


async def test_stop_lets_the_in_flight_handler_finish_and_ack_so_a_restart_sees_nothing(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench(ack_wait=timedelta(milliseconds=500))
    started, finished = asyncio.Event(), []

    async def slow(delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(1.0)
        finished.append(delivery.msg_id)

    runner = bench.runner(slow)
    await runner.start()
    await bench.publish("in flight at shutdown", "m-1")
    await started.wait()
    await runner.stop()

    assert finished == ["m-1"]
    assert await bench.settled()
    after_restart: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        after_restart.append(delivery)

    await bench.runner(record).start()
    await asyncio.sleep(1.0)  # twice ack_wait
    assert after_restart == []


async def test_batch_handler_acks_its_successes_and_retries_the_failures_it_reports(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench()
    batches: list[list[tuple[str, int]]] = []

    async def handle_batch(deliveries: list[Delivery]) -> Mapping[Delivery, BaseException]:
        batches.append([(d.msg_id, d.num_delivered) for d in deliveries])
        return {d: TransientError("row locked") for d in deliveries if d.msg_id == "b" and d.num_delivered == 1}

    for msg_id in "abc":
        await bench.publish(msg_id, msg_id)
    await bench.runner(handle_batch, batch=True, batch_size=10).start()
    await eventually(lambda: len(batches) == 2)
    await eventually(bench.settled)

    assert batches == [[("a", 1), ("b", 1), ("c", 1)], [("b", 2)]]


async def test_consumer_gauges_report_pending_and_ack_pending_messages(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench()
    release = asyncio.Event()

    async def blocked(delivery: Delivery) -> None:
        await release.wait()

    for n in range(3):
        await bench.publish("queued", f"m-{n}")
    await bench.runner(blocked, metrics_interval=0.1).start()

    def gauges() -> tuple[float | None, float | None]:
        labels = {"service": bench.service, "consumer": bench.spec.durable}
        pending = REGISTRY.get_sample_value("parley_consumer_pending_messages", labels)
        return pending, REGISTRY.get_sample_value("parley_consumer_ack_pending_messages", labels)

    await eventually(lambda: gauges() == (2, 1))
    release.set()
    await eventually(lambda: gauges() == (0, 0))


class SwallowingJetStream:
    """A JetStream context whose consumer_info (once `swallow` is on) waits, and returns when cancelled, as
    Python 3.11's asyncio.wait_for does when the reply lands together with the cancel."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.swallow = False
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def consumer_info(self, stream: str, durable: str) -> ConsumerInfo:
        info = await self._js.consumer_info(stream, durable)
        if self.swallow:
            self.waiting.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
        return info


async def test_stop_returns_even_when_the_lag_watcher_swallows_its_cancel(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench()
    js = SwallowingJetStream(bench.js)

    async def nothing(delivery: Delivery) -> None:
        return None

    runner = ConsumerRunner(js, bench.spec, nothing, service=bench.service, message_type=TextPart, fetch_timeout=0.2)  # type: ignore[arg-type]
    await runner.start()
    js.swallow = True
    await js.waiting.wait()
    stopping = asyncio.create_task(runner.stop(grace=0.5))
    done, _ = await asyncio.wait({stopping}, timeout=3)
    assert done, "stop() still waits for a lag watcher that swallowed its cancel"


async def test_runner_refuses_to_start_on_a_consumer_that_was_not_provisioned(
    make_bench: Callable[..., Awaitable[Bench]],
) -> None:
    bench = await make_bench()
    missing = dataclasses.replace(bench.spec, durable="nobody--here")

    async def handler(delivery: Delivery) -> None: ...

    with pytest.raises(ProvisioningError, match="provision"):
        await ConsumerRunner(bench.js, missing, handler, service=bench.service, message_type=TextPart).start()


class _SqlState(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransientError("x"), True),
        (Unavailable("workspace is down"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (sqlalchemy.exc.DBAPIError("UPDATE", {}, _SqlState("40001")), True),  # serialization failure
        (sqlalchemy.exc.DBAPIError("UPDATE", {}, _SqlState("40P01")), True),  # deadlock
        (sqlalchemy.exc.IntegrityError("INSERT", {}, _SqlState("23505")), False),
        (InvalidArgument("bad"), False),
        (PoisonMessage("never"), False),
        (ValueError("bug"), False),
    ],
)
def test_transient_errors_are_told_apart_from_bugs_and_bad_input(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
