"""Publishing protobuf events to JetStream with a de-duplication id, event type and trace context."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from parley_kit import metrics, telemetry
from parley_kit.nats import headers as h

_tracer = telemetry.tracer("parley_kit.nats")


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
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "publish",
            "messaging.destination.name": subject,
            "messaging.message.id": msg_id,
            "parley.event_type": event_type,
        }
        with _tracer.start_as_current_span(
            f"publish {subject}", context=context, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            hdrs = {k: v for k, v in (headers or {}).items() if k not in (h.TRACEPARENT, h.TRACESTATE)}
            hdrs[h.MSG_ID] = msg_id
            hdrs[h.EVENT_TYPE] = event_type
            telemetry.inject(hdrs)
            try:
                ack = await self.js.publish(subject, data, timeout=timeout or self.timeout, headers=hdrs)
            except Exception:  # the span records the exception itself
                metrics.EVENTS_PUBLISHED.labels(self.service, event_type, "error").inc()
                raise
            outcome = "duplicate" if ack.duplicate else "ok"
            span.set_attribute("parley.publish.outcome", outcome)
            metrics.EVENTS_PUBLISHED.labels(self.service, event_type, outcome).inc()
            return ack
