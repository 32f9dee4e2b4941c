"""Durable pull-consumer runner: fetch, decode, handle, then ack, nak with backoff, or dead-letter.

Outcome of one message:

- the handler returns: `ack` (the handler commits its own transaction before returning);
- it raises `PoisonMessage`, or the payload does not decode: dead-letter, then `term`;
- it raises anything else on attempt `max_deliver` (or later): dead-letter, then `term`;
- it raises anything else before that: `nak` with the spec's backoff delay (a `TransientError` with
  `retry_after` sets its own delay). Transient errors
  (`is_transient`) are logged as warnings, others with their traceback;
- a message delivered more than `max_deliver` times (earlier attempts ended without an
  outcome: crash, or a handler stuck past `ack_wait`) is dead-lettered without running the
  handler, so a message that kills its consumer cannot do so forever.

A dead letter keeps the original payload and headers and adds `Parley-Dead-Letter-Reason`,
`Parley-Original-Subject`, `Parley-Consumer` and the original stream position. If it cannot be
published, the message is nak'ed instead and tried again later: nothing is silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, overload

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from parley_kit import metrics, telemetry
from parley_kit.nats import headers as h
from parley_kit.nats.errors import PoisonMessage, ProvisioningError, TransientError, is_transient
from parley_kit.nats.publisher import Publisher
from parley_kit.nats.streams import ConsumerSpec

log = logging.getLogger(__name__)
_tracer = telemetry.tracer("parley_kit.nats")
_ACK_TIMEOUT = 5.0
_UNSAFE_HEADER_CHARS = re.compile(r"[\r\n]+")


@dataclass(frozen=True, eq=False)
class Delivery:
    """One message as a handler sees it (hashable by identity, for batch outcome mappings)."""

    message: Message | None
    """The decoded payload; None when the runner has no `message_type`."""
    data: bytes
    headers: Mapping[str, str]
    subject: str
    event_type: str
    msg_id: str
    num_delivered: int
    stream_sequence: int
    trace_context: Context
    """The producer's trace context; in per-message mode the handler runs in a child span of it."""


Handler = Callable[[Delivery], Awaitable[None]]
BatchHandler = Callable[[list[Delivery]], Awaitable[Mapping[Delivery, BaseException] | None]]
"""Receives every message of one fetch; returns the failed ones with their error (None: all
succeeded). Raising fails the whole batch."""


class ConsumerRunner:
    """Runs `handler` for every message of a provisioned durable pull consumer.

    Per-message mode runs up to `concurrency` handlers at once (1 keeps stream order). Batch
    mode (`batch=True`) hands each fetch of up to `batch_size` messages to one handler call.
    While a handler runs, its messages get an in-progress heartbeat every `ack_wait / 3`.
    """

    @overload
    def __init__(
        self, js: JetStreamContext, spec: ConsumerSpec, handler: Handler, *, service: str,
        message_type: type[Message] | None, batch: Literal[False] = False, batch_size: int = 16,
        fetch_timeout: float = 2.0, concurrency: int = 1, metrics_interval: float = 10.0,
    ) -> None: ...  # fmt: skip

    @overload
    def __init__(
        self, js: JetStreamContext, spec: ConsumerSpec, handler: BatchHandler, *, service: str,
        message_type: type[Message] | None, batch: Literal[True], batch_size: int = 16,
        fetch_timeout: float = 2.0, concurrency: int = 1, metrics_interval: float = 10.0,
    ) -> None: ...  # fmt: skip

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: Handler | BatchHandler,
        *,
        service: str,
        message_type: type[Message] | None,
        batch: bool = False,
        batch_size: int = 16,
        fetch_timeout: float = 2.0,
        concurrency: int = 1,
        metrics_interval: float = 10.0,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self.spec = spec
        self.service = service
        self._js = js
        self._handler = handler
        self._message_type = message_type
        self._batch = batch
        self._batch_size = batch_size
        self._fetch_timeout = fetch_timeout
        self._concurrency = concurrency
        self._metrics_interval = metrics_interval
        self._publisher = Publisher(js, service)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = asyncio.Event()
        self._fetcher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind to the consumer (which `provision()` must have created) and start fetching."""
        try:
            await self._js.consumer_info(self.spec.stream, self.spec.durable)
        except NotFoundError:
            raise ProvisioningError(
                f"consumer {self.spec.stream}/{self.spec.durable} does not exist: provision() it before starting"
            ) from None
        self._sub = await self._js.pull_subscribe_bind(durable=self.spec.durable, stream=self.spec.stream)
        self._stopping.clear()
        self._fetcher = asyncio.create_task(self._fetch_loop(), name=f"fetch {self.spec.durable}")
        self._watcher = asyncio.create_task(self._watch_lag(), name=f"lag {self.spec.durable}")

    async def stop(self, grace: float = 30.0) -> None:
        """Stop fetching, let in-flight handlers finish and settle their messages, then unbind.

        Returns within `fetch_timeout` plus the handlers' time; handlers still running after
        `grace` seconds are cancelled and their messages redelivered after `ack_wait`.
        """
        self._stopping.set()
        if self._fetcher is not None:
            await self._fetcher
        if self._inflight:
            _, late = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("%s: cancelled %d handlers still running after %ss", self.spec.durable, len(late), grace)
                await asyncio.gather(*late, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _fetch_loop(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            free = self._concurrency - len(self._inflight)
            if free <= 0:  # wait for a slot, or for stop() (which then applies its grace period)
                stopping = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({*self._inflight, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                continue
            try:
                msgs = await self._sub.fetch(
                    self._batch_size if self._batch else min(self._batch_size, free), timeout=self._fetch_timeout
                )
            except TimeoutError:  # nats.errors.TimeoutError, or the builtin one nats-py's fetch also raises
                continue
            except Exception:
                log.exception("%s: fetch failed; retrying in 1s", self.spec.durable)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                continue
            for unit in [msgs] if self._batch else [[m] for m in msgs]:
                task = asyncio.create_task(self._process(unit))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _process(self, msgs: list[Msg]) -> None:
        try:
            await self._process_unit(msgs)
        except Exception:  # a failed ack/nak/term: the server redelivers after ack_wait
            log.exception("%s: settling %d messages failed", self.spec.durable, len(msgs))

    async def _process_unit(self, msgs: list[Msg]) -> None:
        ready: list[tuple[Msg, Delivery]] = []
        for msg in msgs:
            try:
                delivery = self._decode(msg)
            except DecodeError as exc:
                await self._dead_letter(msg, _event_type_of(msg), f"undecodable payload: {exc}")
                continue
            if delivery.num_delivered > self.spec.max_deliver:
                reason = f"delivered {delivery.num_delivered} times without an outcome (crash or stuck handler)"
                await self._dead_letter(msg, delivery.event_type, reason)
                continue
            ready.append((msg, delivery))
        if not ready:
            return
        deliveries = [d for _, d in ready]
        started = time.perf_counter()
        async with self._heartbeat([m for m, _ in ready]):
            if self._batch:
                failures = await self._handle_batch(deliveries)
            else:
                failures = await self._handle_one(deliveries[0])
        metrics.EVENT_PROCESSING.labels(self.service, self.spec.durable).observe(time.perf_counter() - started)
        await asyncio.gather(*(self._settle(msg, d, failures.get(d)) for msg, d in ready))

    def _decode(self, msg: Msg) -> Delivery:
        headers = dict(msg.headers or {})
        message = None
        if self._message_type is not None:
            message = self._message_type()
            message.ParseFromString(msg.data)
        meta = msg.metadata
        return Delivery(
            message=message,
            data=msg.data,
            headers=headers,
            subject=msg.subject,
            event_type=headers.get(h.EVENT_TYPE)
            or (self._message_type.DESCRIPTOR.full_name if self._message_type else "unknown"),
            msg_id=headers.get(h.MSG_ID, ""),
            num_delivered=meta.num_delivered,
            stream_sequence=meta.sequence.stream,
            trace_context=telemetry.extract(headers),
        )

    def _span_attributes(self, subject: str) -> dict[str, AttributeValue]:
        return {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
            "messaging.consumer.group.name": self.spec.durable,
        }

    async def _handle_one(self, delivery: Delivery) -> Mapping[Delivery, BaseException]:
        attributes: dict[str, AttributeValue] = {
            **self._span_attributes(delivery.subject),
            "messaging.message.id": delivery.msg_id,
            "messaging.message.delivery_count": delivery.num_delivered,
        }
        with _tracer.start_as_current_span(
            f"process {delivery.subject}", context=delivery.trace_context, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            try:
                await self._handler(delivery)  # type: ignore[arg-type]
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                return {delivery: exc}
            return {}

    async def _handle_batch(self, deliveries: list[Delivery]) -> Mapping[Delivery, BaseException]:
        links = [Link(trace.get_current_span(d.trace_context).get_span_context()) for d in deliveries]
        with _tracer.start_as_current_span(
            f"process {self.spec.durable}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={**self._span_attributes(self.spec.stream), "messaging.batch.message_count": len(deliveries)},
        ) as span:
            try:
                failures = await self._handler(deliveries)  # type: ignore[arg-type]
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                return dict.fromkeys(deliveries, exc)
            return failures or {}

    @contextlib.asynccontextmanager
    async def _heartbeat(self, msgs: list[Msg]) -> AsyncIterator[None]:
        """Tell the server every ack_wait/3 that `msgs` are still being worked on."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.spec.ack_wait.total_seconds() / 3)
                for msg in msgs:
                    try:
                        await msg.in_progress()
                    except Exception:
                        log.warning("%s: in-progress heartbeat failed", self.spec.durable, exc_info=True)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()

    async def _settle(self, msg: Msg, delivery: Delivery, error: BaseException | None) -> None:
        if error is None:
            await self._ack(msg, delivery.event_type)
        elif isinstance(error, PoisonMessage):
            await self._dead_letter(msg, delivery.event_type, f"poison message: {_describe(error)}")
        elif delivery.num_delivered >= self.spec.max_deliver:
            kind = "transient error" if is_transient(error) else "error"
            reason = f"failed {delivery.num_delivered} of {self.spec.max_deliver} attempts; last {kind}: "
            await self._dead_letter(msg, delivery.event_type, reason + _describe(error))
        else:
            delay = self.spec.retry_delay(delivery.num_delivered)
            asked = getattr(error, "retry_after", None)
            if isinstance(error, TransientError) and asked is not None and asked >= 0:
                delay = asked
            where = (self.spec.durable, delivery.subject, delivery.stream_sequence, delivery.num_delivered)
            if is_transient(error):
                log.warning("%s: %s #%d attempt %d failed (%s); retry in %ss", *where, _describe(error), delay)
            else:
                log.error("%s: %s #%d attempt %d failed; retry in %ss", *where, delay, exc_info=error)
            await self._nak(msg, delivery.event_type, delay)

    async def _ack(self, msg: Msg, event_type: str) -> None:
        try:
            await msg.ack_sync(timeout=_ACK_TIMEOUT)
        except Exception:
            log.warning("%s: ack not confirmed; the message will be redelivered", self.spec.durable, exc_info=True)
        self._count(event_type, "ack")

    async def _nak(self, msg: Msg, event_type: str, delay: float | None) -> None:
        try:
            await msg.nak(delay=delay)
        except Exception:
            log.warning("%s: nak failed; redelivery after ack_wait", self.spec.durable, exc_info=True)
        self._count(event_type, "nak")

    async def _dead_letter(self, msg: Msg, event_type: str, reason: str) -> None:
        original = msg.headers or {}
        meta = msg.metadata
        hdrs = {k: v for k, v in original.items() if not k.lower().startswith("nats-")}
        hdrs |= {
            h.DEAD_LETTER_REASON: _UNSAFE_HEADER_CHARS.sub(" ", reason)[:1000],
            h.ORIGINAL_SUBJECT: msg.subject,
            h.ORIGINAL_STREAM: meta.stream,
            h.ORIGINAL_SEQUENCE: str(meta.sequence.stream),
            h.CONSUMER: self.spec.durable,
            h.NUM_DELIVERED: str(meta.num_delivered),
        }
        if h.MSG_ID in original:
            hdrs[h.ORIGINAL_MSG_ID] = original[h.MSG_ID]
        try:
            await self._publisher.publish_raw(
                self.spec.dead_letter_subject,
                msg.data,
                msg_id=f"{self.spec.durable}:{meta.stream}:{meta.sequence.stream}",
                event_type=event_type,
                headers=hdrs,
            )
        except Exception:
            log.exception("%s: could not dead-letter %s #%d", self.spec.durable, msg.subject, meta.sequence.stream)
            await self._nak(msg, event_type, self.spec.retry_delay(meta.num_delivered))
            return
        log.error("%s: dead-lettered %s #%d: %s", self.spec.durable, msg.subject, meta.sequence.stream, reason)
        await msg.term()
        self._count(event_type, "dead_letter")

    def _count(self, event_type: str, outcome: str) -> None:
        metrics.EVENTS_PROCESSED.labels(self.service, self.spec.durable, event_type, outcome).inc()

    async def _watch_lag(self) -> None:
        """Refresh the lag gauges until stop(). The loop ends by itself once stopping is set: on Python 3.11,
        `asyncio.wait_for` (inside nats-py's request) swallows a cancel that lands as the reply arrives, so a
        cancel alone could leave it running and stop() waiting for it forever."""
        while not self._stopping.is_set():
            try:
                info = await self._js.consumer_info(self.spec.stream, self.spec.durable)
            except Exception:
                log.warning("%s: consumer_info failed", self.spec.durable, exc_info=True)
            else:
                metrics.CONSUMER_PENDING.labels(self.service, self.spec.durable).set(info.num_pending or 0)
                metrics.CONSUMER_ACK_PENDING.labels(self.service, self.spec.durable).set(info.num_ack_pending or 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._metrics_interval)


def _event_type_of(msg: Msg) -> str:
    return (msg.headers or {}).get(h.EVENT_TYPE, "unknown")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
