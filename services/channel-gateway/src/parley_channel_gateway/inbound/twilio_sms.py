"""Twilio Programmable Messaging webhooks: one message or status callback per request, as form fields.

Twilio POSTs `application/x-www-form-urlencoded` parameters (every value a string) to the number's SmsUrl
(incoming messages) and to the StatusCallback URL of the messages Parley sent (status changes); Parley points
both at `/webhooks/twilio_sms/<channel_id>`. Each request becomes one event:

- a status callback (`MessageStatus`/`SmsStatus` of an outbound message: queued, sending, sent, delivered,
  undelivered, failed, read, ...) → STATUS with a Receipt (`ErrorCode` when it failed);
- an incoming message (`MessageSid` with `Body` or `NumMedia`) → MESSAGE: the body as text, `MediaUrl<N>` /
  `MediaContentType<N>` as media parts, `Latitude`/`Longitude` as a location. STOP, START and HELP are
  Twilio's opt-out keywords: Twilio handles them itself and still forwards them, so they are published as the
  ordinary messages they are;
- anything else (a voice webhook, a message without content) → UNKNOWN with the form as JSON.

Message SIDs are unique across Twilio, so they make the event ids as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import ChannelType

from .errors import InvalidEnvelope
from .model import ParsedItem
from .values import digest, new_event, number, text_part

_CHANNEL = ChannelType.CHANNEL_TYPE_TWILIO_SMS
MAX_FIELDS = 1000
_MEDIA_URL = re.compile(r"^MediaUrl([0-9]{1,4})$")
# Statuses of outbound messages (Message resource `status`); "receiving"/"received" are incoming messages'.
_STATUSES = {
    "accepted": ev.DELIVERY_STATUS_QUEUED,
    "scheduled": ev.DELIVERY_STATUS_QUEUED,
    "queued": ev.DELIVERY_STATUS_QUEUED,
    "sending": ev.DELIVERY_STATUS_QUEUED,
    "sent": ev.DELIVERY_STATUS_SENT,
    "delivered": ev.DELIVERY_STATUS_DELIVERED,
    "partially_delivered": ev.DELIVERY_STATUS_UNSPECIFIED,
    "read": ev.DELIVERY_STATUS_READ,
    "undelivered": ev.DELIVERY_STATUS_FAILED,
    "failed": ev.DELIVERY_STATUS_FAILED,
    "canceled": ev.DELIVERY_STATUS_FAILED,
}
_MEDIA_KINDS = {"image": ev.MEDIA_KIND_IMAGE, "video": ev.MEDIA_KIND_VIDEO, "audio": ev.MEDIA_KIND_AUDIO}


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """The name/value pairs of a form-encoded body, in order; InvalidEnvelope when it is not UTF-8 form data."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except ValueError as exc:  # UnicodeDecodeError, too many fields
        raise InvalidEnvelope(f"Twilio webhook body is not UTF-8 form data: {exc}") from None


def parse_twilio_sms(params: Sequence[tuple[str, str]], *, channel_id: str) -> list[ParsedItem]:
    """Parse the form fields Twilio posted to the webhook of channel `channel_id`; raise InvalidEnvelope when there
    are none. The item carries no channel key: the channel is in the URL."""
    if not channel_id:
        raise ValueError("channel_id is required: it scopes the ids of events without a message SID")
    if not params:
        raise InvalidEnvelope("a Twilio webhook carries form fields; this body has none")
    form = _Form(params)
    sid = form.first("MessageSid", "SmsMessageSid", "SmsSid")
    status = form.first("MessageStatus", "SmsStatus").lower()
    if sid and status in _STATUSES:
        return [ParsedItem(_status(form, sid, status))]
    if sid and ("Body" in form.values or "NumMedia" in form.values):
        event = _message(form, sid)
        if event.parts:
            return [ParsedItem(event)]
    raw = form.as_json()
    event_id = f"twilio_sms:{channel_id}:unknown:h{digest(raw)}"
    return [ParsedItem(new_event(_CHANNEL, ev.INBOUND_KIND_UNKNOWN, event_id, raw, contact=form.first("From")))]


class _Form:
    """Form fields by name (Twilio sends each once; a repeated name keeps every value)."""

    def __init__(self, params: Sequence[tuple[str, str]]) -> None:
        self.values: dict[str, list[str]] = {}
        for name, value in params:
            self.values.setdefault(name, []).append(value)

    def first(self, *names: str) -> str:
        """The first non-empty value among `names`, else ""."""
        for name in names:
            for value in self.values.get(name, ()):
                if value:
                    return value
        return ""

    def as_json(self) -> dict[str, Any]:
        """The fields as a JSON object: a string per name, a list for a repeated name."""
        return {name: values[0] if len(values) == 1 else values for name, values in self.values.items()}


def _status(form: _Form, sid: str, status: str) -> ev.InboundEvent:
    raw = form.as_json()
    event = new_event(
        _CHANNEL, ev.INBOUND_KIND_STATUS, f"twilio_sms:status:{sid}:{status}", raw, contact=form.first("To")
    )
    event.provider_message_id = sid
    event.receipt.status = _STATUSES[status]
    event.receipt.provider_message_ids.append(sid)
    event.receipt.error_code = form.first("ErrorCode")
    event.receipt.error_message = form.first("ErrorMessage")
    return event


def _message(form: _Form, sid: str) -> ev.InboundEvent:
    raw = form.as_json()
    sender = form.first("From")
    event = new_event(_CHANNEL, ev.INBOUND_KIND_MESSAGE, f"twilio_sms:{sid}", raw, contact=sender)
    event.provider_message_id = sid
    event.profile.CopyFrom(ev.ProfileHints(phone=sender, display_name=form.first("ProfileName")))
    body = form.first("Body")
    if body:
        event.parts.append(text_part(body))
    indexes = sorted(int(match.group(1)) for name in form.values if (match := _MEDIA_URL.match(name)))
    for index in indexes:
        url = form.first(f"MediaUrl{index}")
        mime_type = form.first(f"MediaContentType{index}")
        if url:
            kind = _MEDIA_KINDS.get(mime_type.partition("/")[0].lower(), ev.MEDIA_KIND_FILE)
            media = ev.MediaPart(kind=kind, url=url, mime_type=mime_type, provider_media_id=url.rsplit("/", 1)[-1])
            event.parts.append(ev.ContentPart(media=media))
    latitude, longitude = number(form.first("Latitude")), number(form.first("Longitude"))
    if latitude is not None and longitude is not None:
        location = ev.LocationPart(
            latitude=latitude, longitude=longitude, name=form.first("Label"), address=form.first("Address")
        )
        event.parts.append(ev.ContentPart(location=location))
    return event
