"""Telegram Bot API webhooks: one `Update` per request.

Every field of the update beside `update_id` becomes one event (a real update carries exactly one).
Ids are scoped by the Parley channel, because Telegram's ids are per bot and `update_id` restarts at a
random value after a week without updates: messages are keyed by chat and message id, which never repeat.
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
    full_name,
    integer,
    joined_id,
    load_object,
    new_event,
    number,
    obj,
    text,
    text_part,
)

_CHANNEL = ChannelType.CHANNEL_TYPE_TELEGRAM


def parse_telegram(body: bytes | str, *, channel_id: str) -> list[ParsedItem]:
    """Parse a Telegram `Update` posted to the webhook of channel `channel_id`; raise InvalidEnvelope when the
    body is not an update. `channel_id` (from the URL) scopes the event ids; the items carry no channel key."""
    if not channel_id:
        raise ValueError("channel_id is required: Telegram ids are only unique per bot")
    root = load_object(body, "Telegram update")
    update_id = root.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or integer(update_id) is None:
        raise InvalidEnvelope('"update_id" must be an integer')
    update = _Update(channel_id, update_id)
    return [ParsedItem(update.event(field, value)) for field, value in root.items() if field != "update_id"]


@dataclass(frozen=True, slots=True)
class _Update:
    channel_id: str
    update_id: int

    def new(
        self, kind: ev.InboundKind.ValueType, name: str, parts: list[str], raw: Any, **fields: Any
    ) -> ev.InboundEvent:
        """An event whose id is `telegram:<channel>:<name>:<parts>`, ordered by `update_id`."""
        event_id = joined_id(f"telegram:{self.channel_id}:{name}", parts, [self.update_id, raw])
        return new_event(_CHANNEL, kind, event_id, raw, sequence=self.update_id, **fields)

    def event(self, field: str, value: Any) -> ev.InboundEvent:
        if isinstance(value, dict):
            if field in ("message", "channel_post", "edited_message", "edited_channel_post"):
                return self._message(value, edited=field.startswith("edited_"))
            if field == "callback_query":
                return self._callback(value)
            if field == "my_chat_member":
                return self._membership(value)
        return self.new(ev.INBOUND_KIND_UNKNOWN, "update", [str(self.update_id), text(field)], value)

    def _message(self, message: JsonObject, *, edited: bool) -> ev.InboundEvent:
        chat = obj(message.get("chat"))
        chat_id, message_id = text(chat.get("id")), text(message.get("message_id"))
        edit_date = text(integer(message.get("edit_date")))
        kind = ev.INBOUND_KIND_EDIT if edited else ev.INBOUND_KIND_MESSAGE
        name, parts = ("edit", [chat_id, message_id, edit_date]) if edited else ("msg", [chat_id, message_id])
        event = self.new(
            kind,
            name,
            parts,
            message,
            contact=chat_id or text(obj(message.get("from")).get("id")),
            at_ms=epoch_ms(message.get("edit_date") if edited else message.get("date"), seconds=True),
        )
        event.profile.CopyFrom(_profile(obj(message.get("from")), chat))
        event.provider_message_id = _message_ref(chat_id, message_id)
        reply = obj(message.get("reply_to_message"))
        reply_chat = text(obj(reply.get("chat")).get("id")) or chat_id
        event.target_provider_message_id = (
            event.provider_message_id if edited else _message_ref(reply_chat, text(reply.get("message_id")))
        )
        event.parts.extend(_message_parts(message))
        if not event.parts:  # service messages (members joined, pinned, ...), polls, games
            event.kind = ev.INBOUND_KIND_UNKNOWN
        return event

    def _callback(self, query: JsonObject) -> ev.InboundEvent:
        sender, message = obj(query.get("from")), obj(query.get("message"))
        chat = obj(message.get("chat"))
        data = text(query.get("data")) or text(query.get("game_short_name"))
        event = self.new(
            ev.INBOUND_KIND_POSTBACK,
            "callback",
            [text(query.get("id"))],
            query,
            contact=text(chat.get("id")) or text(sender.get("id")),
        )
        event.profile.CopyFrom(_profile(sender, chat))
        event.payload, event.title = data, _button_text(message, data)
        event.target_provider_message_id = _message_ref(text(chat.get("id")), text(message.get("message_id")))
        button = ev.ButtonReplyPart(title=event.title, payload=data)
        event.parts.append(ev.ContentPart(button_reply=button))
        return event

    def _membership(self, change: JsonObject) -> ev.InboundEvent:
        chat = obj(change.get("chat"))
        new_status = text(obj(change.get("new_chat_member")).get("status"))
        event = self.new(
            ev.INBOUND_KIND_MEMBERSHIP,
            "member",
            [text(chat.get("id")), text(integer(change.get("date"))), new_status],
            change,
            contact=text(chat.get("id")),
            at_ms=epoch_ms(change.get("date"), seconds=True),
        )
        event.profile.CopyFrom(_profile(obj(change.get("from")), chat))
        event.payload = new_status
        event.title = text(obj(change.get("old_chat_member")).get("status"))
        return event


def _message_ref(chat_id: str, message_id: str) -> str:
    """Telegram's message ids are per chat: Parley names a message `<chat_id>:<message_id>`."""
    return f"{chat_id}:{message_id}" if chat_id and message_id else ""


def _button_text(message: JsonObject, data: str) -> str:
    """The label of the inline button whose callback_data is `data`, when the message shows its keyboard."""
    for row in arr(obj(message.get("reply_markup")).get("inline_keyboard")):
        for button in arr(row):
            if data and text(obj(button).get("callback_data")) == data:
                return text(obj(button).get("text"))
    return ""


def _profile(sender: JsonObject, chat: JsonObject) -> ev.ProfileHints:
    """Hints about the contact: the chat itself for groups and channels, else the person who wrote."""
    if "title" in chat:
        return ev.ProfileHints(display_name=text(chat.get("title")), username=text(chat.get("username")))
    person = sender or chat
    first, last = text(person.get("first_name")), text(person.get("last_name"))
    return ev.ProfileHints(
        display_name=full_name(first, last),
        first_name=first,
        last_name=last,
        username=text(person.get("username")),
        language=text(person.get("language_code")),
    )


def _message_parts(message: JsonObject) -> list[ev.ContentPart]:
    """The content of a Telegram Message: text, the largest photo, files, sticker, location or venue, contact."""
    parts = []
    body = text(message.get("text"))
    if body:
        parts.append(text_part(body))
    photos = [obj(size) for size in arr(message.get("photo"))]
    if photos:
        largest = max(photos, key=lambda size: (integer(size.get("file_size")) or 0, _area(size)))
        parts.append(_media(ev.MEDIA_KIND_IMAGE, largest))
    for field, kind in _FILES:
        if isinstance(message.get(field), dict) and not (field == "document" and "animation" in message):
            parts.append(_media(kind, message[field]))
    caption = text(message.get("caption"))
    media = [part.media for part in parts if part.HasField("media")]
    if caption and media:
        media[0].caption = caption
    elif caption:
        parts.append(text_part(caption))
    sticker = message.get("sticker")
    if isinstance(sticker, dict):
        animated = flag(sticker.get("is_animated")) or flag(sticker.get("is_video"))
        part = ev.StickerPart(provider_sticker_id=text(sticker.get("file_id")), animated=animated)
        parts.append(ev.ContentPart(sticker=part))
    location = _location(message)
    if location is not None:
        parts.append(ev.ContentPart(location=location))
    contact = message.get("contact")
    if isinstance(contact, dict):
        name = full_name(text(contact.get("first_name")), text(contact.get("last_name")))
        phone = text(contact.get("phone_number"))
        card = ev.ContactCardPart(formatted_name=name, phones=[phone] if phone else [])
        parts.append(ev.ContentPart(contact_card=card))
    return parts


_FILES = (
    ("animation", ev.MEDIA_KIND_VIDEO),
    ("document", ev.MEDIA_KIND_FILE),
    ("video", ev.MEDIA_KIND_VIDEO),
    ("video_note", ev.MEDIA_KIND_VIDEO),
    ("voice", ev.MEDIA_KIND_AUDIO),
    ("audio", ev.MEDIA_KIND_AUDIO),
)


def _area(size: JsonObject) -> int:
    return (integer(size.get("width")) or 0) * (integer(size.get("height")) or 0)


def _media(kind: ev.MediaKind.ValueType, file: Any) -> ev.ContentPart:
    file = obj(file)
    size = integer(file.get("file_size"))
    media = ev.MediaPart(
        kind=kind,
        provider_media_id=text(file.get("file_id")),
        mime_type=text(file.get("mime_type")),
        filename=text(file.get("file_name")) or text(file.get("title")),
        size_bytes=size if size is not None and size >= 0 else 0,
    )
    return ev.ContentPart(media=media)


def _location(message: JsonObject) -> ev.LocationPart | None:
    venue = obj(message.get("venue"))
    point = obj(venue.get("location")) or obj(message.get("location"))
    latitude, longitude = number(point.get("latitude")), number(point.get("longitude"))
    if latitude is None or longitude is None:
        return None
    return ev.LocationPart(
        latitude=latitude, longitude=longitude, name=text(venue.get("title")), address=text(venue.get("address"))
    )
