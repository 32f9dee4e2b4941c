"""WhatsApp Cloud API webhooks to canonical events."""

from __future__ import annotations

import json

import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import CHANNEL_TYPE_WHATSAPP
from parley_channel_gateway.inbound import InvalidEnvelope, parse_whatsapp

PHONE_ID, WA_ID = "109876543210987", "5511987654321"


def events(raw: bytes) -> list[ev.InboundEvent]:
    items = parse_whatsapp(raw)
    assert all(item.channel_keys == (PHONE_ID,) for item in items)
    assert all(item.event.channel_type == CHANNEL_TYPE_WHATSAPP for item in items)
    return [item.event for item in items]


def wamid(index: int) -> str:
    return f"wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBMD{index:04d}"


def test_text_reply_with_profile(body):
    [event] = events(body("whatsapp", "message_text"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.event_id == f"whatsapp:{wamid(1)}"
    assert event.provider_message_id == wamid(1)
    assert event.contact_external_id == WA_ID
    assert (event.profile.display_name, event.profile.phone) == ("Ana Souza", WA_ID)
    assert event.target_provider_message_id == "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjBBQkNE"
    assert event.parts[0].text.text == "Olá! Meu pedido chegou?"
    assert event.provider_timestamp.seconds == 1735725801
    assert event.provider_sequence == 1735725801000
    assert json.loads(event.raw_json)["id"] == wamid(1)


def test_media(body):
    image, audio, video, document = (event.parts[0].media for event in events(body("whatsapp", "message_media")))
    assert (image.kind, image.provider_media_id, image.mime_type, image.caption) == (
        ev.MEDIA_KIND_IMAGE,
        "1479537139650973",
        "image/jpeg",
        "Box arrived damaged",
    )
    assert image.sha256 == "cQnS2lY0lMj1ivEDfNqv0FW/2ZCm5Gv9CsJeI8f8Wqk="
    assert (audio.kind, audio.mime_type) == (ev.MEDIA_KIND_AUDIO, "audio/ogg; codecs=opus")
    assert video.kind == ev.MEDIA_KIND_VIDEO
    assert (document.kind, document.filename, document.caption) == (ev.MEDIA_KIND_FILE, "receipt-1234.pdf", "Receipt")


def test_sticker_and_location(body):
    sticker, location = (event.parts[0] for event in events(body("whatsapp", "message_sticker_location")))
    assert (sticker.sticker.provider_sticker_id, sticker.sticker.animated) == ("4321098765432109", True)
    assert (location.location.latitude, location.location.longitude) == (-23.5614, -46.6559)
    assert (location.location.name, location.location.url) == ("Loja Paulista", "https://maps.example.com/?q=loja")


def test_contacts(body):
    [event] = events(body("whatsapp", "message_contacts"))
    [card] = event.parts
    assert card.contact_card.formatted_name == "Bruno Lima"
    assert list(card.contact_card.phones) == ["+55 11 91234-5678"]
    assert list(card.contact_card.emails) == ["bruno@example.com"]


def test_interactive_replies_are_postbacks(body):
    button, listed = events(body("whatsapp", "interactive"))
    assert button.kind == listed.kind == ev.INBOUND_KIND_POSTBACK
    assert (button.payload, button.title) == ("confirm-yes", "Yes, confirm")
    assert button.parts[0].button_reply.id == "confirm-yes"
    assert (listed.payload, listed.title) == ("slot-0930", "09:30")
    assert listed.target_provider_message_id == "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEkxJU1Q="


def test_template_button_is_a_postback(body):
    [event] = events(body("whatsapp", "button"))
    assert event.kind == ev.INBOUND_KIND_POSTBACK
    assert (event.payload, event.title) == ("OPT_OUT", "Stop promotions")


def test_reaction_added_and_removed(body):
    added, removed = events(body("whatsapp", "reaction"))
    assert added.kind == removed.kind == ev.INBOUND_KIND_REACTION
    assert added.target_provider_message_id == "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjBBQkNE"
    assert (added.reaction.emoji, added.reaction.removed) == ("\U0001f44d", False)
    assert (removed.reaction.emoji, removed.reaction.removed) == ("", True)
    assert added.event_id == f"whatsapp:{wamid(12)}"


def test_order(body):
    [event] = events(body("whatsapp", "order"))
    order = event.parts[0].order
    assert (order.catalog_id, order.text) == ("987654321012345", "Please deliver after 6pm")
    assert json.loads(order.items_json)[0]["product_retailer_id"] == "SKU-TSHIRT-M"


def test_system_number_change(body):
    [event] = events(body("whatsapp", "system"))
    assert event.kind == ev.INBOUND_KIND_SYSTEM
    assert (event.title, event.payload) == ("user_changed_number", "5511900001111")
    assert event.contact_external_id == WA_ID
    assert not event.HasField("profile")  # no contacts[] in a system notice


def test_unsupported_keeps_the_reason(body):
    [event] = events(body("whatsapp", "unsupported"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    unsupported = event.parts[0].unsupported
    assert unsupported.provider_code == "131051"
    assert unsupported.reason == "Message type unknown: Message type is currently not supported."


def test_statuses(body):
    sent, delivered, read, failed = events(body("whatsapp", "statuses"))
    out1 = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEk9VVDE="
    assert {sent.kind, delivered.kind, read.kind, failed.kind} == {ev.INBOUND_KIND_STATUS}
    assert [e.receipt.status for e in (sent, delivered, read, failed)] == [
        ev.DELIVERY_STATUS_SENT,
        ev.DELIVERY_STATUS_DELIVERED,
        ev.DELIVERY_STATUS_READ,
        ev.DELIVERY_STATUS_FAILED,
    ]
    assert sent.event_id == f"whatsapp:status:{out1}:sent"
    assert list(delivered.receipt.provider_message_ids) == [out1]
    assert read.contact_external_id == WA_ID
    assert failed.receipt.error_code == "131047"
    assert failed.receipt.error_message.startswith("Re-engagement message: Message failed to send")


def test_unknown_change_is_kept(body):
    [item] = parse_whatsapp(body("whatsapp", "unknown"))
    assert item.event.kind == ev.INBOUND_KIND_UNKNOWN
    assert item.channel_keys == ()  # no metadata: the HTTP layer counts it as unroutable
    assert json.loads(item.event.raw_json)["field"] == "message_template_status_update"


def test_unknown_message_type_is_kept(doc):
    payload = doc("whatsapp", "message_text")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["type"], message["hologram"] = "hologram", {"id": "1"}
    [event] = events(json.dumps(payload).encode())
    assert event.kind == ev.INBOUND_KIND_UNKNOWN
    assert event.event_id == f"whatsapp:{wamid(1)}"


def test_ids_are_deterministic(body):
    raw = body("whatsapp", "statuses")
    assert [e.event_id for e in events(raw)] == [e.event_id for e in events(raw)]
    assert len({e.event_id for e in events(raw)}) == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'"whatsapp_business_account"', "must be a JSON object"),
        (b'{"object": "page", "entry": []}', '"object" must be "whatsapp_business_account"'),
        (b'{"object": "whatsapp_business_account", "entry": null}', '"entry" must be a JSON array'),
    ],
)
def test_envelope_errors(raw, message):
    with pytest.raises(InvalidEnvelope, match=message):
        parse_whatsapp(raw)
