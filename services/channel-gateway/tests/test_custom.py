"""Custom channel events (the business's own app) to canonical events, with strict validation."""

from __future__ import annotations

import json

import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import CHANNEL_TYPE_CUSTOM
from parley_channel_gateway.inbound import InvalidEnvelope, parse_custom

CHANNEL = "ch_custom_1"


def one(raw: bytes | str) -> ev.InboundEvent:
    [item] = parse_custom(raw, channel_id=CHANNEL)
    assert item.channel_keys == ()
    assert item.event.channel_type == CHANNEL_TYPE_CUSTOM
    return item.event


def test_message(body):
    event = one(body("custom", "message"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.event_id == f"custom:{CHANNEL}:app-msg-000123"
    assert event.provider_message_id == "app-msg-000123"
    assert event.contact_external_id == "user-42"
    assert event.target_provider_message_id == "parley-out-77"
    assert event.provider_timestamp.ToMilliseconds() == 1735726530250
    assert event.provider_sequence == 1735726530250
    profile = event.profile
    assert (profile.display_name, profile.username, profile.phone, profile.language) == (
        "Lena Berg",
        "lena.b",
        "+4915112345678",
        "de",
    )
    assert profile.avatar_url == "https://app.example.com/avatars/42.png"
    text, image, document, location = event.parts
    assert text.text.text == "Hallo, I need help with my booking"
    assert (image.media.kind, image.media.mime_type) == (ev.MEDIA_KIND_IMAGE, "image/png")
    assert image.media.size_bytes == 48211
    assert (document.media.kind, document.media.filename, document.media.caption) == (
        ev.MEDIA_KIND_FILE,
        "booking.pdf",
        "My booking",
    )
    assert (location.location.latitude, location.location.name) == (52.52, "Hotel Mitte")
    assert json.loads(event.raw_json)["id"] == "app-msg-000123"


def test_postback(body):
    event = one(body("custom", "postback"))
    assert event.kind == ev.INBOUND_KIND_POSTBACK
    assert (event.payload, event.title) == ("CANCEL_BOOKING", "Cancel booking")
    assert event.profile.display_name == "Lena Berg"
    assert event.provider_timestamp.ToMilliseconds() == 1735726530000  # 11:15:30+01:00 is 10:15:30Z


def test_resent_event_is_a_duplicate(body):
    raw = body("custom", "message")
    assert one(raw).event_id == one(raw).event_id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"contact": None}, "contact: Input should be"),
        ({"contact": {"name": "x"}}, "contact.external_id: Field required"),
        ({"id": ""}, "id: String should have at least 1 character"),
        ({"id": "has space"}, "id: String should match pattern"),
        ({"timestamp": 1735726530}, "timestamp: Input should be a valid string"),
        ({"timestamp": "2025-01-01T10:15:30"}, "timestamp: Value error, must be an RFC 3339"),
        ({"timestamp": "2025-02-30T10:15:30Z"}, "is not a real date-time"),
        ({"text": "", "attachments": []}, 'a message needs "text" or "attachments"'),
        ({"type": "poll"}, "type: Input should be 'message' or 'postback'"),
        ({"attachments": [{"type": "image", "url": "http://insecure.example.com/a.png"}]}, "attachments.0.image.url"),
        ({"attachments": [{"type": "location", "latitude": 91, "longitude": 0}]}, "latitude"),
        ({"attachments": [{"type": "sticker"}]}, "attachments.0: Input tag 'sticker'"),
        ({"type": "postback"}, 'a postback needs "payload"'),
    ],
)
def test_validation_names_the_problem(doc, change, message):
    payload = {**doc("custom", "message"), **change}
    with pytest.raises(InvalidEnvelope, match="invalid custom channel event") as caught:
        parse_custom(json.dumps(payload), channel_id=CHANNEL)
    assert message in caught.value.message


def test_every_problem_is_named(doc):
    payload = {**doc("custom", "message"), "id": 5, "timestamp": None}
    with pytest.raises(InvalidEnvelope) as caught:
        parse_custom(json.dumps(payload), channel_id=CHANNEL)
    assert "id:" in caught.value.message and "timestamp:" in caught.value.message


def test_not_an_object():
    with pytest.raises(InvalidEnvelope, match="must be a JSON object"):
        parse_custom(b"[]", channel_id=CHANNEL)
