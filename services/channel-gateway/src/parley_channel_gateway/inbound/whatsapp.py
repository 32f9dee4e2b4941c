"""WhatsApp Cloud API webhooks (object "whatsapp_business_account").

Every `entry[].changes[].value` yields one event per `messages[]`, `message_echoes[]` and `statuses[]` item;
a change with none of them (template or account updates, value-level errors only) becomes one UNKNOWN event.
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
    integer,
    items,
    joined_id,
    load_object,
    new_event,
    number,
    obj,
    raw_json,
    text,
    text_part,
    unique,
)

_CHANNEL = ChannelType.CHANNEL_TYPE_WHATSAPP
_MEDIA = {
    "image": ev.MEDIA_KIND_IMAGE,
    "video": ev.MEDIA_KIND_VIDEO,
    "audio": ev.MEDIA_KIND_AUDIO,
    "document": ev.MEDIA_KIND_FILE,
}
_STATUSES = {
    "sent": ev.DELIVERY_STATUS_SENT,
    "delivered": ev.DELIVERY_STATUS_DELIVERED,
    "read": ev.DELIVERY_STATUS_READ,
    "failed": ev.DELIVERY_STATUS_FAILED,
}


def parse_whatsapp(body: bytes | str) -> list[ParsedItem]:
    """Parse a WhatsApp Cloud API webhook body into events; raise InvalidEnvelope when it is not one.

    Channel key: the business phone number id (`value.metadata.phone_number_id`).
    """
    root = load_object(body, "WhatsApp webhook")
    if root.get("object") != "whatsapp_business_account":
        raise InvalidEnvelope(f'"object" must be "whatsapp_business_account", got {raw_json(root.get("object"))[:40]}')
    entries = root.get("entry")
    if not isinstance(entries, list):
        raise InvalidEnvelope('"entry" must be a JSON array')
    return [
        parsed
        for entry in entries
        for change in (items(entry, "changes") if isinstance(entry, dict) else [entry])
        for parsed in _parse_change(change)
    ]


@dataclass(frozen=True, slots=True)
class _Value:
    """One change's value and what every item in it needs."""

    raw: JsonObject
    keys: tuple[str, ...]
    profiles: dict[str, ev.ProfileHints]


def _parse_change(change: Any) -> list[ParsedItem]:
    value = obj(change).get("value")
    if not isinstance(value, dict):
        return [_unknown(change, ())]
    context = _Value(value, unique(text(obj(value.get("metadata")).get("phone_number_id"))), _profiles(value))
    events = [_message(item, context, echo=False) for item in items(value, "messages")]
    events += [_message(item, context, echo=True) for item in items(value, "message_echoes")]
    events += [_status(item) for item in items(value, "statuses")]
    if not events:
        return [_unknown(change, context.keys)]
    return [ParsedItem(event, context.keys) for event in events]


def _unknown(raw: Any, keys: tuple[str, ...]) -> ParsedItem:
    event_id = joined_id("whatsapp:unknown", [""], [keys, raw])
    return ParsedItem(new_event(_CHANNEL, ev.INBOUND_KIND_UNKNOWN, event_id, raw), keys)


def _profiles(value: JsonObject) -> dict[str, ev.ProfileHints]:
    profiles = {}
    for contact in arr(value.get("contacts")):
        wa_id = text(obj(contact).get("wa_id"))
        profile = obj(obj(contact).get("profile"))
        if wa_id:
            profiles[wa_id] = ev.ProfileHints(
                display_name=text(profile.get("name")), username=text(profile.get("username")), phone=wa_id
            )
    return profiles


def _message(raw: Any, context: _Value, *, echo: bool) -> ev.InboundEvent:
    message = obj(raw)
    wamid, kind_name = text(message.get("id")), text(message.get("type"))
    contact = text(message.get("to")) if echo else text(message.get("from"))
    event = new_event(
        _CHANNEL,
        ev.INBOUND_KIND_ECHO if echo else ev.INBOUND_KIND_MESSAGE,
        joined_id("whatsapp", [wamid], [context.keys, raw]),
        raw,
        contact=contact,
        at_ms=epoch_ms(message.get("timestamp"), seconds=True),
    )
    event.provider_message_id = wamid
    if contact in context.profiles:
        event.profile.CopyFrom(context.profiles[contact])
    event.target_provider_message_id = text(obj(message.get("context")).get("id"))
    special = _SPECIAL.get(kind_name)
    if special is not None:
        special(event, message, context)
    else:
        event.parts.extend(_content_parts(kind_name, message))
        if not event.parts:
            event.kind = ev.INBOUND_KIND_UNKNOWN
    return event


def _content_parts(kind_name: str, message: JsonObject) -> list[ev.ContentPart]:
    """The content of a message of type `kind_name` (text, media, sticker, location, contacts, order)."""
    content = obj(message.get(kind_name))
    if kind_name == "text":
        body = text(content.get("body"))
        return [text_part(body)] if body else []
    if kind_name in _MEDIA:
        media = ev.MediaPart(
            kind=_MEDIA[kind_name],
            url=text(content.get("url")),
            provider_media_id=text(content.get("id")),
            mime_type=text(content.get("mime_type")),
            caption=text(content.get("caption")),
            filename=text(content.get("filename")),
            sha256=text(content.get("sha256")),
        )
        return [ev.ContentPart(media=media)]
    if kind_name == "sticker":
        sticker = ev.StickerPart(
            provider_sticker_id=text(content.get("id")),
            url=text(content.get("url")),
            animated=flag(content.get("animated")),
        )
        return [ev.ContentPart(sticker=sticker)]
    if kind_name == "location":
        latitude, longitude = number(content.get("latitude")), number(content.get("longitude"))
        if latitude is None or longitude is None:
            return []
        location = ev.LocationPart(
            latitude=latitude,
            longitude=longitude,
            name=text(content.get("name")),
            address=text(content.get("address")),
            url=text(content.get("url")),
        )
        return [ev.ContentPart(location=location)]
    if kind_name == "contacts":
        return [_contact_card(card) for card in arr(message.get("contacts"))]
    if kind_name == "order":
        order = ev.OrderPart(
            catalog_id=text(content.get("catalog_id")),
            text=text(content.get("text")),
            items_json=raw_json(arr(content.get("product_items"))),
        )
        return [ev.ContentPart(order=order)]
    return []


def _contact_card(card: Any) -> ev.ContentPart:
    card = obj(card)
    contact = ev.ContactCardPart(
        formatted_name=text(obj(card.get("name")).get("formatted_name")),
        phones=[text(obj(phone).get("phone")) for phone in arr(card.get("phones")) if text(obj(phone).get("phone"))],
        emails=[text(obj(mail).get("email")) for mail in arr(card.get("emails")) if text(obj(mail).get("email"))],
    )
    return ev.ContentPart(contact_card=contact)


def _reaction(event: ev.InboundEvent, message: JsonObject, _: _Value) -> None:
    reaction = obj(message.get("reaction"))
    event.kind = ev.INBOUND_KIND_REACTION
    event.target_provider_message_id = text(reaction.get("message_id"))
    event.reaction.emoji = text(reaction.get("emoji"))
    event.reaction.removed = not event.reaction.emoji


def _button_reply(event: ev.InboundEvent, reply_id: str, title: str, payload: str) -> None:
    event.kind = ev.INBOUND_KIND_POSTBACK
    event.payload, event.title = payload, title
    event.parts.append(ev.ContentPart(button_reply=ev.ButtonReplyPart(id=reply_id, title=title, payload=payload)))


def _interactive(event: ev.InboundEvent, message: JsonObject, context: _Value) -> None:
    interactive = obj(message.get("interactive"))
    subtype = text(interactive.get("type"))
    reply = obj(interactive.get(subtype))
    if subtype in ("button_reply", "list_reply"):
        reply_id = text(reply.get("id"))
        _button_reply(event, reply_id, text(reply.get("title")), reply_id)
    elif subtype == "nfm_reply":  # a WhatsApp Flow's answers
        _button_reply(event, "", text(reply.get("name")), text(reply.get("response_json")))
    else:
        _unsupported(event, message, context)


def _button(event: ev.InboundEvent, message: JsonObject, _: _Value) -> None:
    button = obj(message.get("button"))
    _button_reply(event, "", text(button.get("text")), text(button.get("payload")))


def _unsupported(event: ev.InboundEvent, message: JsonObject, context: _Value) -> None:
    """Content WhatsApp could not deliver: the reason comes from the message's errors, else the value's."""
    code, reason = _first_error(arr(message.get("errors")) or arr(context.raw.get("errors")))
    unsupported = ev.UnsupportedPart(
        reason=reason or f"unsupported {text(message.get('type'))} message", provider_code=code
    )
    event.parts.append(ev.ContentPart(unsupported=unsupported))


def _first_error(errors: list[Any]) -> tuple[str, str]:
    """The code and "title: details" of the first of WhatsApp's `errors[]`, or empty strings."""
    error = obj(errors[0]) if errors else {}
    title, details = text(error.get("title")), text(obj(error.get("error_data")).get("details"))
    return text(integer(error.get("code"))), ": ".join(filter(None, (title, details)))


def _system(event: ev.InboundEvent, message: JsonObject, _: _Value) -> None:
    system = obj(message.get("system"))
    event.kind = ev.INBOUND_KIND_SYSTEM
    event.title = text(system.get("type"))
    event.payload = text(system.get("wa_id")) or text(system.get("new_wa_id"))
    body = text(system.get("body"))
    if body:
        event.parts.append(text_part(body))


def _edit(event: ev.InboundEvent, message: JsonObject, _: _Value) -> None:
    edit = obj(message.get("edit"))
    edited = obj(edit.get("message"))
    event.kind = ev.INBOUND_KIND_EDIT
    event.target_provider_message_id = text(edit.get("original_message_id"))
    event.parts.extend(_content_parts(text(edited.get("type")), edited))


def _revoke(event: ev.InboundEvent, message: JsonObject, _: _Value) -> None:
    event.kind = ev.INBOUND_KIND_DELETE
    event.target_provider_message_id = text(obj(message.get("revoke")).get("original_message_id"))


_SPECIAL = {
    "reaction": _reaction,
    "interactive": _interactive,
    "button": _button,
    "unsupported": _unsupported,
    "system": _system,
    "edit": _edit,
    "revoke": _revoke,
}


def _status(raw: Any) -> ev.InboundEvent:
    status = obj(raw)
    wamid, name = text(status.get("id")), text(status.get("status"))
    event = new_event(
        _CHANNEL,
        ev.INBOUND_KIND_STATUS,
        joined_id("whatsapp:status", [wamid, name], raw),
        raw,
        contact=text(status.get("recipient_id")),
        at_ms=epoch_ms(status.get("timestamp"), seconds=True),
    )
    event.provider_message_id = wamid
    event.receipt.status = _STATUSES.get(name, ev.DELIVERY_STATUS_UNSPECIFIED)
    event.receipt.provider_message_ids.extend([wamid] if wamid else [])
    event.receipt.error_code, event.receipt.error_message = _first_error(arr(status.get("errors")))
    return event
