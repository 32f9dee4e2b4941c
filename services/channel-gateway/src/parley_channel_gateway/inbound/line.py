"""LINE Messaging API webhooks: `{"destination": <bot user id>, "events": [...]}`, one event per item.

The contact is the chat the bot writes back to with a push message: the group or room for events from a
group chat or multi-person chat, else the user. Events of the console's "Verify" button (dummy reply tokens
of all 0s or all fs) are left out: they come from no real user and must not be answered.

Ids: LINE gives every event a `webhookEventId` (a ULID) that stays the same when it redelivers the event, so
the event id is `line:<channel>:<webhookEventId>`. When a body repeats a `webhookEventId` (test payloads) or
has none (older schema), the id falls back to a digest of the event without its `deliveryContext` (which
changes on redelivery), and to an occurrence number for identical copies, so each item keeps its own id.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import ChannelType

from .errors import InvalidEnvelope
from .model import ParsedItem
from .values import JsonObject, digest, epoch_ms, integer, load_object, new_event, number, obj, text, text_part

_CHANNEL = ChannelType.CHANNEL_TYPE_LINE
VERIFY_REPLY_TOKENS = frozenset({"0" * 32, "f" * 32})
_MEDIA = {"image": ev.MEDIA_KIND_IMAGE, "video": ev.MEDIA_KIND_VIDEO, "audio": ev.MEDIA_KIND_AUDIO}
_ANIMATED_STICKERS = frozenset({"ANIMATION", "ANIMATION_SOUND", "POPUP", "POPUP_SOUND"})
# Membership changes of the bot, as MEMBERSHIP's `payload`: blocked by a user, added to or removed from a group.
_MEMBERSHIP = {"unfollow": "blocked", "join": "joined", "leave": "left"}


def parse_line(body: bytes | str, *, channel_id: str) -> list[ParsedItem]:
    """Parse a LINE webhook body posted to the webhook of channel `channel_id`; raise InvalidEnvelope when it is
    not one. `channel_id` (from the URL) scopes the event ids; the items carry no channel key."""
    if not channel_id:
        raise ValueError("channel_id is required: event ids are scoped by channel")
    root = load_object(body, "LINE webhook")
    events = root.get("events")
    if not isinstance(events, list):
        raise InvalidEnvelope('"events" must be an array')
    kept = [event for event in events if not is_verification(event)]
    keys = _keys(kept)
    return [ParsedItem(_event(event, f"line:{channel_id}:{key}")) for event, key in zip(kept, keys, strict=True)]


def is_verification(event: Any) -> bool:
    """True for the dummy events of the LINE console's "Verify" request."""
    return isinstance(event, dict) and text(event.get("replyToken")) in VERIFY_REPLY_TOKENS


def _keys(events: list[Any]) -> list[str]:
    """Each event's id key: its webhookEventId, made unique within the body by digest and occurrence."""
    ids = [text(obj(event).get("webhookEventId")) for event in events]
    repeated = {event_id for event_id, count in Counter(ids).items() if count > 1}
    keys, seen = [], Counter[str]()
    for event_id, event in zip(ids, events, strict=True):
        key = event_id if event_id and event_id not in repeated else f"{event_id or 'h'}:{_content(event)}"
        seen[key] += 1
        keys.append(key if seen[key] == 1 else f"{key}:{seen[key]}")
    return keys


def _content(event: Any) -> str:
    """A digest of the event without `deliveryContext`, which LINE changes when it redelivers."""
    if isinstance(event, dict):
        return digest({k: v for k, v in event.items() if k != "deliveryContext"})
    return digest(event)


def _event(raw: Any, event_id: str) -> ev.InboundEvent:
    event_json = obj(raw)
    source = obj(event_json.get("source"))
    contact = text(source.get("groupId")) or text(source.get("roomId")) or text(source.get("userId"))
    event = new_event(
        _CHANNEL,
        ev.INBOUND_KIND_UNKNOWN,
        event_id,
        raw,
        contact=contact,
        at_ms=epoch_ms(event_json.get("timestamp"), seconds=False),
    )
    type_ = text(event_json.get("type"))
    if type_ in ("message", "messageEdited"):
        _message(event, obj(event_json.get("message")), edited=type_ == "messageEdited")
    elif type_ == "postback":
        _postback(event, obj(event_json.get("postback")))
    elif type_ == "follow":
        event.kind = ev.INBOUND_KIND_OPTIN
        event.payload = "follow"
        event.title = "unblocked" if obj(event_json.get("follow")).get("isUnblocked") is True else ""
    elif type_ in _MEMBERSHIP:
        event.kind = ev.INBOUND_KIND_MEMBERSHIP
        event.payload = _MEMBERSHIP[type_]
    elif type_ == "unsend":
        target = text(obj(event_json.get("unsend")).get("messageId"))
        if target:
            event.kind = ev.INBOUND_KIND_DELETE
            event.target_provider_message_id = target
    return event


def _message(event: ev.InboundEvent, message: JsonObject, *, edited: bool) -> None:
    """A message (or an edit of one): MESSAGE/EDIT with its parts; a message type Parley cannot read stays UNKNOWN."""
    event.provider_message_id = text(message.get("id"))
    event.target_provider_message_id = event.provider_message_id if edited else text(message.get("quotedMessageId"))
    event.parts.extend(_parts(message))
    if event.parts:
        event.kind = ev.INBOUND_KIND_EDIT if edited else ev.INBOUND_KIND_MESSAGE


def _parts(message: JsonObject) -> list[ev.ContentPart]:
    type_ = text(message.get("type"))
    if type_ == "text":
        body = text(message.get("text"))
        return [text_part(body)] if body else []
    if type_ in _MEDIA:
        # Content sent through LINE is fetched from the Messaging API by message id; only content another
        # service hosts ("external") has a URL.
        provider = obj(message.get("contentProvider"))
        url = text(provider.get("originalContentUrl")) if text(provider.get("type")) == "external" else ""
        media = ev.MediaPart(kind=_MEDIA[type_], url=url, provider_media_id=text(message.get("id")))
        return [ev.ContentPart(media=media)]
    if type_ == "file":
        size = integer(message.get("fileSize"))
        media = ev.MediaPart(
            kind=ev.MEDIA_KIND_FILE,
            provider_media_id=text(message.get("id")),
            filename=text(message.get("fileName")),
            size_bytes=size if size is not None and size >= 0 else 0,
        )
        return [ev.ContentPart(media=media)]
    if type_ == "location":
        latitude, longitude = number(message.get("latitude")), number(message.get("longitude"))
        if latitude is None or longitude is None:
            return []
        location = ev.LocationPart(
            latitude=latitude,
            longitude=longitude,
            name=text(message.get("title")),
            address=text(message.get("address")),
        )
        return [ev.ContentPart(location=location)]
    if type_ == "sticker":
        package, sticker = text(message.get("packageId")), text(message.get("stickerId"))
        if not sticker:
            return []
        part = ev.StickerPart(
            provider_sticker_id=f"{package}:{sticker}",
            animated=text(message.get("stickerResourceType")) in _ANIMATED_STICKERS,
        )
        return [ev.ContentPart(sticker=part)]
    return []


def _postback(event: ev.InboundEvent, postback: JsonObject) -> None:
    """A postback action: `payload` is its data; `title` the date or time the contact picked, when it was a
    datetime picker."""
    params = obj(postback.get("params"))
    event.kind = ev.INBOUND_KIND_POSTBACK
    event.payload = text(postback.get("data"))
    event.title = text(params.get("datetime")) or text(params.get("date")) or text(params.get("time"))
    event.parts.append(ev.ContentPart(button_reply=ev.ButtonReplyPart(title=event.title, payload=event.payload)))
