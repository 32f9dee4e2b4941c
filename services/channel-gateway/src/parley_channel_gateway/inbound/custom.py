"""Custom channels: a business's own app posts one JSON event per request (schema in the service README).

Validation is strict: unknown keys, wrong types and missing fields are refused with every problem named.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import ChannelType
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidEnvelope
from .model import ParsedItem
from .values import epoch_ms, full_name, load_object, new_event, text, text_part

_Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@+-]+$")]
_Short = Annotated[str, Field(max_length=256)]
_Url = Annotated[str, Field(max_length=2048, pattern=r"^https://\S+$")]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_MEDIA = {
    "image": ev.MEDIA_KIND_IMAGE,
    "video": ev.MEDIA_KIND_VIDEO,
    "audio": ev.MEDIA_KIND_AUDIO,
    "file": ev.MEDIA_KIND_FILE,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CustomContact(_Strict):
    """Who wrote: `external_id` is the business's own, stable id for the person."""

    external_id: _Id
    name: _Short = ""
    first_name: _Short = ""
    last_name: _Short = ""
    username: _Short = ""
    phone: _Short = ""
    language: _Short = ""
    avatar_url: _Url | None = None


class CustomMedia(_Strict):
    """A file the gateway can fetch over HTTPS."""

    type: Literal["image", "video", "audio", "file"]
    url: _Url
    mime_type: _Short = ""
    filename: _Short = ""
    caption: Annotated[str, Field(max_length=4096)] = ""
    size_bytes: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0


class CustomLocation(_Strict):
    """A point on the map."""

    type: Literal["location"]
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    name: _Short = ""
    address: _Short = ""


class CustomEvent(_Strict):
    """One inbound event from a custom channel: a message, or a button press (`type: "postback"`)."""

    id: _Id
    type: Literal["message", "postback"] = "message"
    contact: CustomContact
    timestamp: Annotated[str, Field(description="RFC 3339 with a UTC offset, e.g. 2025-01-31T12:00:00Z")]
    text: Annotated[str, Field(max_length=4096)] = ""
    attachments: Annotated[
        list[Annotated[CustomMedia | CustomLocation, Field(discriminator="type")]], Field(max_length=10)
    ] = []
    reply_to: _Id | None = None
    payload: Annotated[str, Field(max_length=1000)] = ""
    title: _Short = ""

    @field_validator("timestamp")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        if not _RFC3339.match(value):
            raise ValueError("must be an RFC 3339 date-time with a UTC offset, e.g. 2025-01-31T12:00:00Z")
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("is not a real date-time") from None
        if epoch_ms(value, seconds=False) is None:
            raise ValueError("must be between 1970 and 9999")
        return value

    @model_validator(mode="after")
    def _has_content(self) -> CustomEvent:
        if self.type == "message" and not (self.text or self.attachments):
            raise ValueError('a message needs "text" or "attachments"')
        if self.type == "postback" and not self.payload:
            raise ValueError('a postback needs "payload"')
        if self.type == "postback" and self.attachments:
            raise ValueError('a postback carries no "attachments"')
        return self


def parse_custom(body: bytes | str, *, channel_id: str) -> list[ParsedItem]:
    """Parse a custom channel's event posted to the webhook of `channel_id`, or raise InvalidEnvelope naming
    every problem. The event id is `custom:<channel_id>:<id>`, so a resent event is a duplicate."""
    if not channel_id:
        raise ValueError("channel_id is required: custom event ids are only unique per channel")
    root = load_object(body, "custom channel")
    try:
        custom = CustomEvent.model_validate(root)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors()[:10]
        )
        raise InvalidEnvelope(f"invalid custom channel event: {problems}") from None
    return [ParsedItem(_event(custom, channel_id, root))]


def _event(custom: CustomEvent, channel_id: str, raw: object) -> ev.InboundEvent:
    kind = ev.INBOUND_KIND_POSTBACK if custom.type == "postback" else ev.INBOUND_KIND_MESSAGE
    event = new_event(
        ChannelType.CHANNEL_TYPE_CUSTOM,
        kind,
        f"custom:{text(channel_id)}:{custom.id}",
        raw,
        contact=custom.contact.external_id,
        at_ms=epoch_ms(custom.timestamp, seconds=False),
    )
    contact = custom.contact
    event.profile.CopyFrom(
        ev.ProfileHints(
            display_name=text(contact.name) or full_name(text(contact.first_name), text(contact.last_name)),
            first_name=text(contact.first_name),
            last_name=text(contact.last_name),
            username=text(contact.username),
            phone=text(contact.phone),
            language=text(contact.language),
            avatar_url=text(contact.avatar_url),
        )
    )
    event.provider_message_id = custom.id
    event.target_provider_message_id = custom.reply_to or ""
    event.payload, event.title = text(custom.payload), text(custom.title)
    if custom.text:
        event.parts.append(text_part(text(custom.text)))
    for attachment in custom.attachments:
        event.parts.append(_part(attachment))
    if kind == ev.INBOUND_KIND_POSTBACK:
        event.parts.append(ev.ContentPart(button_reply=ev.ButtonReplyPart(title=event.title, payload=event.payload)))
    return event


def _part(attachment: CustomMedia | CustomLocation) -> ev.ContentPart:
    if isinstance(attachment, CustomLocation):
        location = ev.LocationPart(
            latitude=attachment.latitude,
            longitude=attachment.longitude,
            name=text(attachment.name),
            address=text(attachment.address),
        )
        return ev.ContentPart(location=location)
    media = ev.MediaPart(
        kind=_MEDIA[attachment.type],
        url=text(attachment.url),
        mime_type=text(attachment.mime_type),
        filename=text(attachment.filename),
        caption=text(attachment.caption),
        size_bytes=attachment.size_bytes,
    )
    return ev.ContentPart(media=media)
