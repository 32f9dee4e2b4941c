"""Streams, consumers and the outbound worker's message handling."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import SpanKind
from parley.channel_gateway.v1 import events_pb2 as ev
from parley_kit import outbox, telemetry
from parley_kit.contracts import channel_gateway as contract
from parley_kit.nats.consumer import Delivery
from parley_kit.nats.errors import PoisonMessage, TransientError
from parley_kit.nats.streams import ConsumerSpec, StreamSpec, dead_letter_subject
from sqlalchemy.ext.asyncio import AsyncSession

from parley_channel_gateway.models import FAILED, SENT, SendLogRow
from parley_channel_gateway.providers import Attachment, Button, OutboundMessage, QuickReply, Template
from parley_channel_gateway.sender import OutboundSender, RetryLater

log = logging.getLogger(__name__)
_tracer = telemetry.tracer("parley_channel_gateway.worker")

SERVICE = "channel-gateway"
OUTBOUND_DURABLE = "channel-gateway--outbound"

_MEDIA = {
    ev.MEDIA_KIND_IMAGE: "image",
    ev.MEDIA_KIND_VIDEO: "video",
    ev.MEDIA_KIND_AUDIO: "audio",
    ev.MEDIA_KIND_FILE: "file",
}
_TAGS = {value: name.removeprefix("MESSAGE_TAG_") for name, value in ev.MessageTag.items() if value}


def streams(replicas: int) -> list[StreamSpec]:
    """The gateway's stream (the runtime adds the dead-letter stream of its consumers)."""
    return [contract.stream_spec(replicas)]


def outbound_consumer() -> ConsumerSpec:
    """The worker's durable consumer. Its own retries are bounded by the send log (send_attempts); the
    generous max_deliver only catches a request that keeps crashing its worker."""
    return ConsumerSpec(
        stream=contract.STREAM,
        durable=OUTBOUND_DURABLE,
        filter_subjects=(contract.OUTBOUND_REQUESTED,),
        ack_wait=timedelta(seconds=60),
        max_deliver=50,
        backoff=tuple(timedelta(seconds=s) for s in (2, 5, 15, 30, 60, 120, 300)),
        max_ack_pending=1000,
        dead_letter_subject=dead_letter_subject(SERVICE, OUTBOUND_DURABLE),
    )


def to_message(request: ev.OutboundSendRequest) -> OutboundMessage:
    """The domain view of a send request; a request without ids is poison."""
    missing = [f for f in ("request_id", "space_id", "channel_id", "contact_external_id") if not getattr(request, f)]
    if missing:
        raise PoisonMessage(f"send request lacks {', '.join(missing)}")
    template = None
    if request.HasField("template") and request.template.name:
        template = Template(request.template.name, request.template.language, tuple(request.template.body_parameters))
    last = request.contact_last_inbound_at.ToDatetime(UTC) if request.HasField("contact_last_inbound_at") else None
    return OutboundMessage(
        request_id=request.request_id,
        space_id=request.space_id,
        channel_id=request.channel_id,
        contact_external_id=request.contact_external_id,
        text=request.text,
        attachments=tuple(
            Attachment(_MEDIA.get(a.kind, ""), a.url, a.caption, a.filename) for a in request.attachments
        ),
        quick_replies=tuple(QuickReply(q.title, q.payload) for q in request.quick_replies),
        buttons=tuple(Button(b.title, b.payload, b.url) for b in request.buttons),
        template=template,
        tag=_TAGS.get(request.tag, ""),
        contact_last_inbound_at=last,
        origin=request.origin,
        origin_ref=request.origin_ref,
    )


async def enqueue_status(session: AsyncSession, row: SendLogRow) -> None:
    """The request's OutboundStatusEvent, into the outbox in the send log's transaction."""
    event_id = f"{row.request_id}:{row.status}"
    occurred = Timestamp()
    occurred.FromDatetime(row.updated_at)
    event = ev.OutboundStatusEvent(
        event_id=event_id,
        request_id=row.request_id,
        space_id=row.space_id,
        channel_id=row.channel_id,
        origin=row.origin,
        origin_ref=row.origin_ref,
        status={SENT: ev.DELIVERY_STATUS_SENT, FAILED: ev.DELIVERY_STATUS_FAILED}[row.status],
        provider_message_id=row.provider_message_id,
        error_code=row.error_code,
        error_message=row.error_message,
        occurred_at=occurred,
    )
    await outbox.enqueue(session, contract.OUTBOUND_STATUS, event, msg_id=event_id)


class OutboundHandler:
    """Batch handler: one contact's requests go out in stream order; different contacts in parallel.

    When a request of a contact must be retried later, the contact's later requests in the batch are
    given back too, so they cannot overtake it.
    """

    def __init__(self, sender: OutboundSender) -> None:
        self.sender = sender

    async def __call__(self, deliveries: list[Delivery]) -> Mapping[Delivery, BaseException] | None:
        groups: dict[tuple[str, str], list[tuple[Delivery, OutboundMessage]]] = defaultdict(list)
        failures: dict[Delivery, BaseException] = {}
        for delivery in deliveries:
            try:
                assert isinstance(delivery.message, ev.OutboundSendRequest)
                message = to_message(delivery.message)
            except PoisonMessage as exc:
                failures[delivery] = exc
                continue
            groups[(message.channel_id, message.contact_external_id)].append((delivery, message))
        results = await asyncio.gather(*(self._group(items) for items in groups.values()))
        for result in results:
            failures.update(result)
        return failures or None

    async def _group(self, items: list[tuple[Delivery, OutboundMessage]]) -> dict[Delivery, BaseException]:
        failures: dict[Delivery, BaseException] = {}
        blocked: BaseException | None = None
        for delivery, message in items:
            if blocked is not None:
                failures[delivery] = TransientError(f"an earlier message to this contact waits: {blocked}")
                continue
            attributes = {
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": delivery.subject,
                "messaging.consumer.group.name": OUTBOUND_DURABLE,
                "messaging.message.id": delivery.msg_id,
                "messaging.message.delivery_count": delivery.num_delivered,
                "parley.request_id": message.request_id,
                "parley.channel_id": message.channel_id,
            }
            try:
                # A child of the requester's trace (its traceparent came in the message headers), so one trace
                # runs from the request through the provider call (`send <provider>`) to the status event.
                with _tracer.start_as_current_span(
                    f"process {delivery.subject}",
                    context=delivery.trace_context,
                    kind=SpanKind.CONSUMER,
                    attributes=attributes,
                ) as span:
                    outcome = await self.sender.send(message)
                    span.set_attribute("parley.send.status", outcome.status)
                log.info(
                    "send %s: %s%s", message.request_id, outcome.status, " (already done)" if outcome.duplicate else ""
                )
            except RetryLater as exc:
                blocked = failures[delivery] = TransientError(str(exc), retry_after=exc.delay)
            except Exception as exc:
                log.exception("send %s failed unexpectedly", message.request_id)
                blocked = failures[delivery] = exc
        return failures


def new_request_id() -> str:
    return str(uuid.uuid4())
