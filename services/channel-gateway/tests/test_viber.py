"""Viber REST Bot API callbacks to canonical events, and the callback signature."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import CHANNEL_TYPE_VIBER
from parley_channel_gateway.inbound import InvalidEnvelope, Verdict, parse_viber, verify_viber_signature

CHANNEL, USER = "ch_viber_1", "6a2Kq9Xw0mB+dZ1pLs7t4A=="
TOKEN = 7014185462843592705  # above 2^53: a double would round it


def one(raw: bytes, channel_id: str = CHANNEL) -> ev.InboundEvent:
    [item] = parse_viber(raw, channel_id=channel_id)
    assert item.channel_keys == ()
    assert item.event.channel_type == CHANNEL_TYPE_VIBER
    return item.event


def test_text_message_keeps_the_64_bit_token_exact_with_profile(body):
    event = one(body("viber", "message_text"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.event_id == f"viber:{CHANNEL}:msg:{TOKEN}"
    assert event.provider_message_id == str(TOKEN)
    assert event.contact_external_id == USER
    assert event.parts[0].text.text == "Доброго дня, where is order 5531?"
    assert (event.profile.display_name, event.profile.language) == ("Oksana Melnyk", "uk")
    assert event.profile.avatar_url.startswith("https://media-direct.cdn.viber.com/")
    assert event.provider_timestamp.ToMilliseconds() == 1764066930123 == event.provider_sequence
    assert json.loads(event.raw_json)["message_token"] == TOKEN


def test_ids_are_scoped_by_channel_and_deterministic(body):
    raw = body("viber", "message_text")
    assert one(raw).event_id == one(raw).event_id != one(raw, channel_id="ch_other").event_id
    with pytest.raises(ValueError, match="channel_id"):
        parse_viber(raw, channel_id="")


@pytest.mark.parametrize(
    ("fixture", "kind", "url", "caption", "filename", "size"),
    [
        ("message_picture", ev.MEDIA_KIND_IMAGE, "pic/photo.jpg", "the damaged box", "photo.jpg", 184233),
        ("message_video", ev.MEDIA_KIND_VIDEO, "video/clip.mp4", "", "", 5242880),
        ("message_file", ev.MEDIA_KIND_FILE, "file/invoice.pdf", "", "invoice.pdf", 48211),
    ],
)
def test_media_messages(body, fixture, kind, url, caption, filename, size):
    [part] = one(body("viber", fixture)).parts
    media = part.media
    assert media.kind == kind and media.url.endswith(url)
    assert (media.caption, media.filename, media.size_bytes) == (caption, filename, size)


def test_sticker_contact_location_url_and_rich_media(body):
    sticker = one(body("viber", "message_sticker")).parts[0].sticker
    assert (sticker.provider_sticker_id, sticker.url) == ("114406", "https://viber.com/sticker/114406.png")
    card = one(body("viber", "message_contact")).parts[0].contact_card
    assert (card.formatted_name, list(card.phones)) == ("Taras Bondar", ["+380671234567"])
    location = one(body("viber", "message_location")).parts[0].location
    assert (location.latitude, location.longitude, location.address) == (50.4501, 30.5234, "Khreshchatyk St, Kyiv")
    assert one(body("viber", "message_url")).parts[0].text.text == "https://shop.example.com/orders/5531"
    rich = one(body("viber", "message_rich_media"))
    assert rich.kind == ev.INBOUND_KIND_MESSAGE and rich.parts[0].template.name == "rich_media"
    assert json.loads(rich.parts[0].template.payload_json)["rich_media"]["Buttons"][0]["Text"] == "Shop"


def test_a_keyboard_reply_parley_offered_is_a_postback(body, doc):
    event = one(body("viber", "message_keyboard_reply"))
    assert event.kind == ev.INBOUND_KIND_POSTBACK
    assert (event.payload, event.title) == ("SLOT_EVENING", "Evening")
    assert event.parts[0].button_reply.title == "Evening"
    typed = doc("viber", "message_keyboard_reply")
    typed["message"]["text"] = "something else"
    assert one(json.dumps(typed).encode()).kind == ev.INBOUND_KIND_MESSAGE
    typed["message"]["tracking_data"] = "not json parley_replies"
    assert one(json.dumps(typed).encode()).parts[0].text.text == "something else"


def test_subscription_events(body):
    subscribed = one(body("viber", "subscribed"))
    assert subscribed.kind == ev.INBOUND_KIND_OPTIN and subscribed.payload == "subscribed"
    assert subscribed.contact_external_id == USER and subscribed.profile.display_name == "Oksana Melnyk"
    unsubscribed = one(body("viber", "unsubscribed"))
    assert unsubscribed.kind == ev.INBOUND_KIND_MEMBERSHIP
    assert (unsubscribed.payload, unsubscribed.title, unsubscribed.contact_external_id) == (
        "unsubscribed",
        "subscribed",
        USER,
    )
    started = one(body("viber", "conversation_started"))
    assert started.kind == ev.INBOUND_KIND_REFERRAL
    assert (started.payload, started.title, started.contact_external_id) == ("campaign-autumn", "open", USER)
    ids = {e.event_id for e in (subscribed, unsubscribed, started)}
    assert len(ids) == 3


@pytest.mark.parametrize(
    ("fixture", "kind", "status"),
    [
        ("delivered", ev.INBOUND_KIND_DELIVERY, ev.DELIVERY_STATUS_DELIVERED),
        ("seen", ev.INBOUND_KIND_READ, ev.DELIVERY_STATUS_READ),
        ("failed", ev.INBOUND_KIND_STATUS, ev.DELIVERY_STATUS_FAILED),
    ],
)
def test_receipts_name_the_outbound_message_token(body, fixture, kind, status):
    event = one(body("viber", fixture))
    token = json.loads(body("viber", fixture))["message_token"]
    assert event.kind == kind and event.receipt.status == status
    assert list(event.receipt.provider_message_ids) == [str(token)] == [event.target_provider_message_id]
    assert event.event_id == f"viber:{CHANNEL}:{fixture}:{token}:{USER}"
    assert event.contact_external_id == USER
    if fixture == "failed":
        assert event.receipt.error_message == "keyboard is not valid"


def test_delivered_and_seen_of_one_message_have_distinct_ids(body):
    assert one(body("viber", "delivered")).event_id != one(body("viber", "seen")).event_id


def test_client_status_and_unknown_events_and_types_are_unknown_with_raw_json(body, doc):
    status = one(body("viber", "client_status"))
    assert status.kind == ev.INBOUND_KIND_UNKNOWN and json.loads(status.raw_json)["status"] == "online"
    novel = {"event": "something_new", "timestamp": 1764066960000}
    assert one(json.dumps(novel).encode()).kind == ev.INBOUND_KIND_UNKNOWN
    empty = doc("viber", "message_text")
    empty["message"] = {"type": "text"}
    assert one(json.dumps(empty).encode()).kind == ev.INBOUND_KIND_UNKNOWN


def test_the_webhook_setup_check_is_no_event(body):
    assert parse_viber(body("viber", "webhook"), channel_id=CHANNEL) == []


@pytest.mark.parametrize("raw", [b"[]", b"{}", b'{"event": 5}', b'{"event": ""}', b"not json"])
def test_bodies_that_are_not_callbacks_are_invalid_envelopes(raw):
    with pytest.raises(InvalidEnvelope):
        parse_viber(raw, channel_id=CHANNEL)


def test_signature_is_the_hex_hmac_sha256_of_the_raw_body_keyed_with_the_auth_token(body):
    raw = body("viber", "message_text")
    token = "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f"
    good = hmac.new(token.encode(), raw, hashlib.sha256).hexdigest()
    assert verify_viber_signature(raw, good, token) is Verdict.VALID
    assert verify_viber_signature(raw, good.upper(), token) is Verdict.VALID
    assert verify_viber_signature(raw + b" ", good, token) is Verdict.MISMATCH
    assert verify_viber_signature(raw, good, "another-token-0000000000") is Verdict.MISMATCH
    assert verify_viber_signature(raw, None, token) is Verdict.MISSING
    assert verify_viber_signature(raw, "sha256=" + good, token) is Verdict.MALFORMED


def test_signature_vector_of_the_viber_sdks():
    """bottender's ViberConnector test vector: token ACCESS_TOKEN over the body `rawBody`."""
    header = "250a5136d2f241195d4cb981a7293958434ec3ba9e50ed20788e9b030a1dd878"
    assert verify_viber_signature(b"rawBody", header, "ACCESS_TOKEN") is Verdict.VALID
