"""Publishing protobuf events to JetStream with a de-duplication id, event type and trace context."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck
from nats.js.errors import APIError, NoStreamResponseError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from parley_kit import metrics, telemetry
from parley_kit.nats import headers as h

_tracer = telemetry.tracer("parley_kit.nats")
NO_RESPONDERS = "503"


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An already-encoded event for `Publisher.publish_many`; `context` is its producer span's parent."""

    subject: str
    data: bytes
    msg_id: str
    event_type: str
    headers: Mapping[str, str] | None = None
    context: Context | None = None


class Publisher:
    """Publishes to JetStream and waits for the stream's acknowledgement.

    Every message carries `Nats-Msg-Id` (JetStream drops a repeat inside the stream's
    duplicate window and answers `PubAck.duplicate`), `Parley-Event-Type` and the W3C
    `traceparent` of a producer span.
    """

    def __init__(self, js: JetStreamContext, service: str, *, timeout: float = 5.0) -> None:
        self.js = js
        self.service = service
        self.timeout = timeout
        self._inbox: str | None = None
        self._acks: dict[str, asyncio.Future[PubAck]] = {}
        self._tokens = itertools.count()

    async def publish(
        self,
        subject: str,
        message: Message,
        *,
        msg_id: str,
        event_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        """Publish `message`; `event_type` defaults to its full protobuf name."""
        return await self.publish_raw(
            subject,
            message.SerializeToString(),
            msg_id=msg_id,
            event_type=event_type or message.DESCRIPTOR.full_name,
            headers=headers,
            timeout=timeout,
        )

    async def publish_raw(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str,
        event_type: str,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        context: Context | None = None,
    ) -> PubAck:
        """Publish already-encoded `data`. The producer span's parent is `context` (the
        outbox passes the enqueuing request's) or else the current span; any
        `traceparent` in `headers` is replaced by the producer span's."""
        span = _producer_span(subject, msg_id, event_type, context)
        with trace.use_span(span, end_on_exit=True):
            hdrs = _headers(headers, msg_id, event_type, span)
            try:
                ack = await self.js.publish(subject, data, timeout=timeout or self.timeout, headers=hdrs)
            except Exception:  # the span records the exception itself
                metrics.EVENTS_PUBLISHED.labels(self.service, event_type, "error").inc()
                raise
            outcome = "duplicate" if ack.duplicate else "ok"
            span.set_attribute("parley.publish.outcome", outcome)
            metrics.EVENTS_PUBLISHED.labels(self.service, event_type, outcome).inc()
            return ack

    async def publish_many(
        self, events: Sequence[RawEvent], *, timeout: float | None = None
    ) -> list[PubAck | Exception]:
        """Publish `events` pipelined and return each one's ack or error, in the same order.

        Every event is written to the connection, in order, before any acknowledgement is awaited, so
        JetStream stores them in that order at the cost of one round trip for the lot. A write that fails
        stops the sending: that event and the ones after it get its error and are not sent. An event not
        acknowledged within `timeout` (from the end of the sending) gets `TimeoutError`; it may still have
        been stored, which its `Nats-Msg-Id` makes harmless to publish again. Each event has its own
        producer span (send to ack), as with `publish_raw`.

        (Not `JetStreamContext.publish_async`: nats-py 2.16 never completes its future when JetStream
        answers with an error, so a refused event would cost the whole timeout.)
        """
        timeout = timeout or self.timeout
        inbox = await self._ack_inbox()
        loop = asyncio.get_running_loop()
        sent: list[tuple[asyncio.Future[PubAck] | Exception, Span, str]] = []
        failure: Exception | None = None
        for event in events:
            span = _producer_span(event.subject, event.msg_id, event.event_type, event.context)
            if failure is None:
                hdrs = _headers(event.headers, event.msg_id, event.event_type, span)
                token = str(next(self._tokens))
                future: asyncio.Future[PubAck] = loop.create_future()
                self._acks[token] = future
                try:
                    await self._send(event.subject, event.data, reply=inbox + token, headers=hdrs)
                    sent.append((future, span, event.event_type))
                    continue
                except Exception as exc:
                    del self._acks[token]
                    failure = exc
            sent.append((failure, span, event.event_type))  # type: ignore[arg-type]
        futures = [f for f, _, _ in sent if isinstance(f, asyncio.Future)]
        if futures:
            await asyncio.wait(futures, timeout=timeout)
        results: list[PubAck | Exception] = []
        for f, span, event_type in sent:
            result: PubAck | Exception
            if not isinstance(f, asyncio.Future):
                result = f
            elif not f.done():
                f.cancel()
                result = TimeoutError(f"no acknowledgement within {timeout}s")
            else:
                exc = f.exception()
                result = f.result() if exc is None else exc if isinstance(exc, Exception) else RuntimeError(exc)
            if isinstance(result, Exception):
                span.record_exception(result)
                span.set_status(Status(StatusCode.ERROR, type(result).__name__))
                metrics.EVENTS_PUBLISHED.labels(self.service, event_type, "error").inc()
            else:
                outcome = "duplicate" if result.duplicate else "ok"
                span.set_attribute("parley.publish.outcome", outcome)
                metrics.EVENTS_PUBLISHED.labels(self.service, event_type, outcome).inc()
            span.end()
            results.append(result)
        for token in [t for t, f in self._acks.items() if f.done()]:
            del self._acks[token]  # timed out: an acknowledgement arriving now finds nothing
        return results

    async def _send(self, subject: str, data: bytes, *, reply: str, headers: dict[str, str]) -> None:
        """Write one message to the connection (a seam for tests that slow the sending down)."""
        await self.js._nc.publish(subject, data, reply=reply, headers=headers)

    async def _ack_inbox(self) -> str:
        """The prefix of this publisher's acknowledgement subjects; subscribes on first use."""
        if self._inbox is None:
            nc = self.js._nc
            inbox = nc.new_inbox() + "."
            await nc.subscribe(inbox + "*", cb=self._on_ack)
            self._inbox = inbox
        return self._inbox

    async def _on_ack(self, msg: Msg) -> None:
        assert self._inbox is not None
        future = self._acks.pop(msg.subject[len(self._inbox) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
            if "error" in reply:
                APIError.from_error(reply["error"])  # raises the specific error for the known codes
                raise APIError(**reply["error"])
            future.set_result(PubAck.from_response(reply))
        except Exception as exc:
            future.set_exception(exc)


def _producer_span(subject: str, msg_id: str, event_type: str, context: Context | None) -> Span:
    """The PRODUCER span of one publish, child of `context` (or of the current span)."""
    return _tracer.start_span(
        f"publish {subject}",
        context=context,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "publish",
            "messaging.destination.name": subject,
            "messaging.message.id": msg_id,
            "parley.event_type": event_type,
        },
    )


def _headers(headers: Mapping[str, str] | None, msg_id: str, event_type: str, span: Span) -> dict[str, str]:
    """`headers` with the de-duplication id, the event type and `span`'s trace context (replacing any given)."""
    hdrs = {k: v for k, v in (headers or {}).items() if k not in (h.TRACEPARENT, h.TRACESTATE)}
    hdrs[h.MSG_ID] = msg_id
    hdrs[h.EVENT_TYPE] = event_type
    telemetry.inject(hdrs, context=trace.set_span_in_context(span))
    return hdrs
