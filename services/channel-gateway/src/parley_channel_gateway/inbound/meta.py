"""Meta's Messenger Platform webhooks, shared by Messenger (object "page") and Instagram (object "instagram").

Each `entry[].messaging[]` and `entry[].standby[]` item becomes one event; each `entry[].changes[]` item (the
dashboard's test sample, feed changes) becomes an UNKNOWN event. See the service README for the event ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import ChannelType

from .errors import InvalidEnvelope
from .model import ParsedItem
from .values import (
    JsonObject,
    arr,
    epoch_ms,
    flag,
    items,
    joined_id,
    load_object,
    new_event,
    number,
    obj,
    raw_json,
    text,
    text_part,
    timestamp,
    unique,
)

_MEDIA = {
    "image": ev.MEDIA_KIND_IMAGE,
    "video": ev.MEDIA_KIND_VIDEO,
    "audio": ev.MEDIA_KIND_AUDIO,
    "file": ev.MEDIA_KIND_FILE,
}


@dataclass(frozen=True, slots=True)
class Flavor:
    """What differs between Messenger and Instagram: the envelope `object`, the channel type, the id prefix."""

    object_name: str
    channel_type: ChannelType.ValueType
    prefix: str


MESSENGER = Flavor("page", ChannelType.CHANNEL_TYPE_MESSENGER, "messenger")
INSTAGRAM = Flavor("instagram", ChannelType.CHANNEL_TYPE_INSTAGRAM, "instagram")
FLAVORS = {flavor.object_name: flavor for flavor in (MESSENGER, INSTAGRAM)}


def parse_envelope(body: bytes | str, flavor: Flavor | None) -> list[ParsedItem]:
    """Parse a Meta webhook body of `flavor`, or of either flavor (chosen by `object`) when None."""
    root = load_object(body, "Meta webhook")
    found = root.get("object")
    chosen = flavor or (FLAVORS.get(found) if isinstance(found, str) else None)
    if chosen is None or found != chosen.object_name:
        wanted = " or ".join(f'"{name}"' for name in ([flavor.object_name] if flavor else FLAVORS))
        raise InvalidEnvelope(f'"object" must be {wanted}, got {raw_json(found)[:40]}')
    entries = root.get("entry")
    if not isinstance(entries, list):
        raise InvalidEnvelope('"entry" must be a JSON array')
    return [parsed for entry in entries for parsed in _parse_entry(entry, chosen)]


def parse_meta(body: bytes | str) -> list[ParsedItem]:
    """Parse a body posted to one callback URL shared by Messenger and Instagram, choosing by `object`."""
    return parse_envelope(body, None)


def _parse_entry(entry: Any, flavor: Flavor) -> list[ParsedItem]:
    if not isinstance(entry, dict):
        return [_unknown(flavor, entry, ())]
    entry_id = text(entry.get("id"))
    parsed = [_parse_item(item, entry_id, flavor) for key in ("messaging", "standby") for item in items(entry, key)]
    parsed += [_unknown(flavor, change, unique(entry_id)) for change in items(entry, "changes")]
    return parsed


@dataclass(frozen=True, slots=True)
class _Item:
    """One messaging item and what every handler needs from it."""

    flavor: Flavor
    raw: JsonObject
    keys: tuple[str, ...]
    sender: str
    contact: str
    at_ms: int | None

    @property
    def page(self) -> str:
        return self.keys[0] if self.keys else ""

    def event(
        self, kind: ev.InboundKind.ValueType, name: str, *parts: str, at_ms: int | None = None
    ) -> ev.InboundEvent:
        """An event of `kind` whose id is `<prefix>:<name>:<parts>` (a digest of the item when a part is missing)."""
        prefix = f"{self.flavor.prefix}:{name}" if name else self.flavor.prefix
        event_id = joined_id(prefix, parts, [self.keys, self.raw])
        return new_event(
            self.flavor.channel_type,
            kind,
            event_id,
            self.raw,
            contact=self.contact,
            at_ms=at_ms if at_ms is not None else self.at_ms,
        )


def _parse_item(raw: Any, entry_id: str, flavor: Flavor) -> ParsedItem:
    if not isinstance(raw, dict):
        return _unknown(flavor, raw, unique(entry_id))
    sender = text(obj(raw.get("sender")).get("id"))
    recipient = text(obj(raw.get("recipient")).get("id"))
    echo = flag(obj(raw.get("message")).get("is_echo"))
    page_side, contact = (sender, recipient) if echo else (recipient, sender)
    item = _Item(
        flavor=flavor,
        raw=raw,
        keys=unique(entry_id, page_side),
        sender=sender,
        contact=contact,
        at_ms=epoch_ms(raw.get("timestamp"), seconds=False),
    )
    for key, handler in _HANDLERS:
        body = raw.get(key)
        if isinstance(body, dict):
            return ParsedItem(handler(item, body), item.keys)
    return ParsedItem(item.event(ev.INBOUND_KIND_UNKNOWN, "unknown", ""), item.keys)


def _unknown(flavor: Flavor, raw: Any, keys: tuple[str, ...]) -> ParsedItem:
    event_id = joined_id(f"{flavor.prefix}:unknown", [""], [keys, raw])
    return ParsedItem(new_event(flavor.channel_type, ev.INBOUND_KIND_UNKNOWN, event_id, raw), keys)


def _message(item: _Item, message: JsonObject) -> ev.InboundEvent:
    mid = text(message.get("mid"))
    if flag(message.get("is_deleted")):
        event = item.event(ev.INBOUND_KIND_DELETE, "delete", mid)
        event.target_provider_message_id = mid
        return event
    kind = ev.INBOUND_KIND_ECHO if flag(message.get("is_echo")) else ev.INBOUND_KIND_MESSAGE
    event = item.event(kind, "" if mid else "message", mid)
    event.provider_message_id = mid
    event.parts.extend(_message_parts(message))
    event.target_provider_message_id = text(obj(message.get("reply_to")).get("mid"))
    return event


def _message_parts(message: JsonObject) -> list[ev.ContentPart]:
    """The content of a Messenger/Instagram `message`: text, attachments, sticker, quick reply, story reply."""
    parts = []
    body = text(message.get("text"))
    if body:
        parts.append(text_part(body))
    parts += [_attachment(attachment) for attachment in arr(message.get("attachments"))]
    sticker_id = text(message.get("sticker_id"))
    if sticker_id and not any(part.sticker.provider_sticker_id == sticker_id for part in parts):
        parts.append(ev.ContentPart(sticker=ev.StickerPart(provider_sticker_id=sticker_id)))
    quick_reply = message.get("quick_reply")
    if isinstance(quick_reply, dict):
        reply = ev.QuickReplyPart(title=body, payload=text(quick_reply.get("payload")))
        parts.append(ev.ContentPart(quick_reply=reply))
    story = obj(message.get("reply_to")).get("story")
    if isinstance(story, dict):
        template = ev.TemplatePart(name="story_reply", url=text(story.get("url")), payload_json=raw_json(story))
        parts.append(ev.ContentPart(template=template))
    if flag(message.get("is_unsupported")):
        parts.append(ev.ContentPart(unsupported=ev.UnsupportedPart(reason="the provider did not deliver the content")))
    return parts


def _attachment(attachment: Any) -> ev.ContentPart:
    """Media types become MediaPart, stickers StickerPart, locations LocationPart; every other type
    (template, fallback, share, story_mention, ig_reel, ...) a TemplatePart named after its type."""
    if not isinstance(attachment, dict):
        return ev.ContentPart(unsupported=ev.UnsupportedPart(reason="attachment is not a JSON object"))
    kind = text(attachment.get("type"))
    payload = obj(attachment.get("payload"))
    url = text(payload.get("url")) or text(attachment.get("url")) or text(attachment.get("URL"))
    sticker_id = text(payload.get("sticker_id"))
    if sticker_id:
        return ev.ContentPart(sticker=ev.StickerPart(provider_sticker_id=sticker_id, url=url))
    if kind in _MEDIA:
        return ev.ContentPart(media=ev.MediaPart(kind=_MEDIA[kind], url=url))
    coordinates = obj(payload.get("coordinates"))
    latitude, longitude = number(coordinates.get("lat")), number(coordinates.get("long"))
    if kind == "location" and latitude is not None and longitude is not None:
        location = ev.LocationPart(latitude=latitude, longitude=longitude, name=text(attachment.get("title")), url=url)
        return ev.ContentPart(location=location)
    raw_payload = attachment.get("payload")
    template = ev.TemplatePart(
        name=kind or "attachment",
        title=text(attachment.get("title")) or text(payload.get("title")),
        url=url,
        payload_json=raw_json(raw_payload) if raw_payload is not None else "",
    )
    return ev.ContentPart(template=template)


def _edit(item: _Item, edit: JsonObject) -> ev.InboundEvent:
    mid = text(edit.get("mid"))
    version = text(edit.get("num_edit")) or _time_key(item)
    event = item.event(ev.INBOUND_KIND_EDIT, "edit", mid, version)
    event.provider_message_id = event.target_provider_message_id = mid
    body = text(edit.get("text"))
    if body:
        event.parts.append(text_part(body))
    return event


def _reaction(item: _Item, reaction: JsonObject) -> ev.InboundEvent:
    mid, action, emoji = text(reaction.get("mid")), text(reaction.get("action")), text(reaction.get("emoji"))
    at = _time_key(item)
    event = item.event(ev.INBOUND_KIND_REACTION, "reaction", mid, item.sender, action, emoji or "-", at)
    event.target_provider_message_id = mid
    event.reaction.emoji = emoji
    event.reaction.removed = action == "unreact"
    return event


def _postback(item: _Item, postback: JsonObject) -> ev.InboundEvent:
    mid = text(postback.get("mid"))
    if mid:
        event = item.event(ev.INBOUND_KIND_POSTBACK, "postback", mid)
    else:
        event = item.event(ev.INBOUND_KIND_POSTBACK, "postback", item.page, item.sender, _time_key(item))
    event.provider_message_id = mid
    event.payload, event.title = text(postback.get("payload")), text(postback.get("title"))
    event.parts.append(ev.ContentPart(button_reply=ev.ButtonReplyPart(title=event.title, payload=event.payload)))
    return event


def _receipt(
    item: _Item, receipt: JsonObject, kind: ev.InboundKind.ValueType, status: ev.DeliveryStatus.ValueType
) -> ev.InboundEvent:
    watermark_ms = epoch_ms(receipt.get("watermark"), seconds=False)
    mids = [text(mid) for mid in arr(receipt.get("mids")) if text(mid)]
    read_mid = text(receipt.get("mid"))  # Instagram's messaging_seen names the message, not a watermark
    mids += [read_mid] if read_mid else []
    name = "delivery" if kind == ev.INBOUND_KIND_DELIVERY else "read"
    marker = text(watermark_ms) if watermark_ms is not None else read_mid
    event = item.event(kind, name, item.page, item.sender, marker, at_ms=item.at_ms or watermark_ms)
    event.receipt.status = status
    event.receipt.provider_message_ids.extend(mids)
    if watermark_ms is not None:
        event.receipt.watermark.CopyFrom(timestamp(watermark_ms))
    return event


def _delivery(item: _Item, delivery: JsonObject) -> ev.InboundEvent:
    return _receipt(item, delivery, ev.INBOUND_KIND_DELIVERY, ev.DELIVERY_STATUS_DELIVERED)


def _read(item: _Item, read: JsonObject) -> ev.InboundEvent:
    return _receipt(item, read, ev.INBOUND_KIND_READ, ev.DELIVERY_STATUS_READ)


def _referral(item: _Item, referral: JsonObject) -> ev.InboundEvent:
    event = item.event(ev.INBOUND_KIND_REFERRAL, "referral", item.page, item.sender, _time_key(item))
    event.payload, event.title = text(referral.get("ref")), text(referral.get("source"))
    return event


def _optin(item: _Item, optin: JsonObject) -> ev.InboundEvent:
    user_ref = text(optin.get("user_ref"))
    contact = item.contact or (f"user_ref:{user_ref}" if user_ref else "")
    event = item.event(ev.INBOUND_KIND_OPTIN, "optin", item.page, contact, _time_key(item))
    event.contact_external_id = contact
    event.payload = text(optin.get("ref")) or text(optin.get("payload"))
    event.title = text(optin.get("type"))
    return event


def _time_key(item: _Item) -> str:
    return text(item.at_ms) if item.at_ms is not None else ""


_HANDLERS = (
    ("message", _message),
    ("message_edit", _edit),
    ("reaction", _reaction),
    ("postback", _postback),
    ("delivery", _delivery),
    ("read", _read),
    ("referral", _referral),
    ("optin", _optin),
)
