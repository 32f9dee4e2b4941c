"""Viber REST Bot API callbacks: one JSON object per request, its kind in `event`.

`message` → MESSAGE (or POSTBACK for a keyboard reply button Parley sent, recognised by the `tracking_data` Viber
echoes), `subscribed` → OPTIN, `unsubscribed` → MEMBERSHIP, `conversation_started` → REFERRAL (payload = the deep
link `context`, title = its `type`), `delivered` / `seen` / `failed` → DELIVERY / READ / STATUS (failed) with a
Receipt for the outbound `message_token`; `client_status` and any other event → UNKNOWN. The `webhook` set-up check
is not an event (`is_setup_check`): the HTTP layer answers it 200 and publishes nothing.

`message_token` is a 64-bit integer above 2^53: Python's JSON reader keeps it exact and it is used as a string.
Ids are scoped by the Parley channel (as Telegram's), since Viber's user ids are per bot.
"""

from __future__ import annotations

import json

from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import ChannelType

from .errors import InvalidEnvelope
from .model import ParsedItem
from .values import (
    JsonObject,
    epoch_ms,
    integer,
    joined_id,
    load_object,
    new_event,
    number,
    obj,
    text,
    text_part,
)

_CHANNEL = ChannelType.CHANNEL_TYPE_VIBER
# Written by outbound_viber with a keyboard's reply buttons: {"parley_replies": {"<ActionBody>": "<title>"}}.
TRACKING_REPLIES_KEY = "parley_replies"
_RECEIPTS = {
    "delivered": (ev.INBOUND_KIND_DELIVERY, ev.DELIVERY_STATUS_DELIVERED),
    "seen": (ev.INBOUND_KIND_READ, ev.DELIVERY_STATUS_READ),
    "failed": (ev.INBOUND_KIND_STATUS, ev.DELIVERY_STATUS_FAILED),
}
_MEDIA = {"picture": ev.MEDIA_KIND_IMAGE, "video": ev.MEDIA_KIND_VIDEO, "file": ev.MEDIA_KIND_FILE}


def load_callback(body: bytes | str) -> JsonObject:
    """The callback object, or InvalidEnvelope when the body is not one (a JSON object with a string `event`)."""
    root = load_object(body, "Viber callback")
    if not isinstance(root.get("event"), str) or not root["event"]:
        raise InvalidEnvelope('a Viber callback needs a string "event"')
    return root


def is_setup_check(root: JsonObject) -> bool:
    """True for the `webhook` callback Viber sends while set_webhook runs: answer 200, publish nothing."""
    return root.get("event") == "webhook"


def parse_viber(body: bytes | str, *, channel_id: str) -> list[ParsedItem]:
    """Parse a Viber callback posted to the webhook of channel `channel_id`: one item (none for the set-up check)."""
    if not channel_id:
        raise ValueError("channel_id is required: Viber user ids are only unique per bot")
    root = load_callback(body)
    if is_setup_check(root):
        return []
    return [ParsedItem(_event(root, channel_id))]


def _event(root: JsonObject, channel_id: str) -> ev.InboundEvent:
    kind = text(root.get("event"))
    token = text(root.get("message_token"))  # an exact int from the JSON reader, as text
    at_ms = epoch_ms(root.get("timestamp"), seconds=False)
    user = obj(root.get("sender")) or obj(root.get("user"))
    contact = text(user.get("id")) or text(root.get("user_id"))

    def new(kind_: ev.InboundKind.ValueType, name: str, parts: list[str]) -> ev.InboundEvent:
        event_id = joined_id(f"viber:{channel_id}:{name}", parts, root)
        event = new_event(_CHANNEL, kind_, event_id, root, contact=contact, at_ms=at_ms)
        if user:
            event.profile.CopyFrom(_profile(user))
        return event

    if kind == "message" and isinstance(root.get("message"), dict):
        return _message(new(ev.INBOUND_KIND_MESSAGE, "msg", [token]), root, token)
    if kind in _RECEIPTS:
        inbound_kind, status = _RECEIPTS[kind]
        event = new(inbound_kind, kind, [token, contact])
        ids = [token] if token else []
        receipt = ev.Receipt(status=status, provider_message_ids=ids, error_message=text(root.get("desc")))
        event.receipt.CopyFrom(receipt)
        event.target_provider_message_id = token
        return event
    if kind == "subscribed":
        event = new(ev.INBOUND_KIND_OPTIN, kind, [contact, token or text(at_ms)])
        event.payload = "subscribed"
        return event
    if kind == "unsubscribed":
        event = new(ev.INBOUND_KIND_MEMBERSHIP, kind, [contact, token or text(at_ms)])
        event.payload, event.title = "unsubscribed", "subscribed"
        return event
    if kind == "conversation_started":
        event = new(ev.INBOUND_KIND_REFERRAL, kind, [contact, token or text(at_ms)])
        event.payload, event.title = text(root.get("context")), text(root.get("type"))
        return event
    return new(ev.INBOUND_KIND_UNKNOWN, "event", [text(kind), token or text(at_ms), contact])


def _message(event: ev.InboundEvent, root: JsonObject, token: str) -> ev.InboundEvent:
    message = obj(root.get("message"))
    event.provider_message_id = token
    choice = _button_reply(message)
    if choice is not None:
        event.kind = ev.INBOUND_KIND_POSTBACK
        event.payload, event.title = choice.payload, choice.title
        event.parts.append(ev.ContentPart(button_reply=choice))
        return event
    event.parts.extend(_parts(message))
    if not event.parts:
        event.kind = ev.INBOUND_KIND_UNKNOWN
    return event


def _button_reply(message: JsonObject) -> ev.ButtonReplyPart | None:
    """The reply button pressed, when the text is one Parley's last keyboard offered (listed in tracking_data)."""
    body = text(message.get("text"))
    tracking = text(message.get("tracking_data"))
    if message.get("type") != "text" or not body or TRACKING_REPLIES_KEY not in tracking:
        return None
    try:
        replies = obj(obj(json.loads(tracking)).get(TRACKING_REPLIES_KEY))
    except ValueError:
        return None
    if body not in replies:
        return None
    return ev.ButtonReplyPart(id=body, title=text(replies[body]), payload=body)


def _parts(message: JsonObject) -> list[ev.ContentPart]:
    """The content of a Viber message: text, picture/video/file, sticker, contact, location, url, rich media."""
    kind = text(message.get("type"))
    body = text(message.get("text"))
    if kind == "text":
        return [text_part(body)] if body else []
    if kind in _MEDIA:
        size = integer(message.get("size")) or integer(message.get("file_size"))
        media = ev.MediaPart(
            kind=_MEDIA[kind],
            url=text(message.get("media")),
            caption=body,
            filename=text(message.get("file_name")),
            size_bytes=size if size is not None and size >= 0 else 0,
        )
        return [ev.ContentPart(media=media)] if media.url else []
    if kind == "sticker":
        sticker = ev.StickerPart(provider_sticker_id=text(message.get("sticker_id")), url=text(message.get("media")))
        return [ev.ContentPart(sticker=sticker)] if sticker.provider_sticker_id else []
    if kind == "contact":
        contact = obj(message.get("contact"))
        phone = text(contact.get("phone_number"))
        card = ev.ContactCardPart(formatted_name=text(contact.get("name")), phones=[phone] if phone else [])
        return [ev.ContentPart(contact_card=card)] if card.formatted_name or phone else []
    if kind == "location":
        point = obj(message.get("location"))
        latitude, longitude = number(point.get("lat")), number(point.get("lon"))
        if latitude is None or longitude is None:
            return []
        location = ev.LocationPart(latitude=latitude, longitude=longitude, address=text(point.get("address")))
        return [ev.ContentPart(location=location)]
    if kind == "url":
        url = text(message.get("media"))
        return [text_part(url)] if url else []
    if kind:  # rich_media and types Viber adds later: kept whole, named after the type
        payload = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        return [ev.ContentPart(template=ev.TemplatePart(name=kind, payload_json=payload))]
    return []


def _profile(user: JsonObject) -> ev.ProfileHints:
    return ev.ProfileHints(
        display_name=text(user.get("name")),
        language=text(user.get("language")),
        avatar_url=text(user.get("avatar")),
    )
