"""LINE: webhook bodies to canonical events, X-Line-Signature, and the push request and error classification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import httpx
import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import CHANNEL_TYPE_LINE
from parley_channel_gateway import outbound_line
from parley_channel_gateway.inbound import InvalidEnvelope, Verdict, parse_line, verify_line_signature
from parley_channel_gateway.providers import Attachment, Button, InvalidContent, OutboundMessage, QuickReply

CHANNEL = "ch_line_1"
USER = "U4c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
GROUP = "C7a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d"


def events(raw: bytes | str, channel_id: str = CHANNEL) -> list[ev.InboundEvent]:
    items = parse_line(raw, channel_id=channel_id)
    assert all(item.channel_keys == () and item.event.channel_type == CHANNEL_TYPE_LINE for item in items)
    return [item.event for item in items]


def one(raw: bytes | str) -> ev.InboundEvent:
    [event] = events(raw)
    return event


# -- inbound -----------------------------------------------------------------------------------------------------


def test_text_message_with_quote(body):
    event = one(body("line", "message_text"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.event_id == f"line:{CHANNEL}:01JDQ7R8ZK3M5N6P7Q8R9S0T1A"
    assert event.contact_external_id == USER
    assert event.provider_message_id == "534018264357213449"
    assert event.target_provider_message_id == "534018112946724997"
    assert event.parts[0].text.text == "Hi, is my order on its way?"
    assert event.provider_timestamp.ToMilliseconds() == 1764065730123
    assert event.provider_sequence == 1764065730123
    assert json.loads(event.raw_json)["webhookEventId"] == "01JDQ7R8ZK3M5N6P7Q8R9S0T1A"


def test_image_sent_through_line_has_no_url_but_its_message_id(body):
    [part] = one(body("line", "message_image")).parts
    assert part.media.kind == ev.MEDIA_KIND_IMAGE and part.media.url == ""
    assert part.media.provider_media_id == "534018291837562112"


def test_external_video_keeps_its_url(body):
    [part] = one(body("line", "message_video_external")).parts
    assert part.media.kind == ev.MEDIA_KIND_VIDEO and part.media.url == "https://media.example.com/clip.mp4"


def test_group_sticker_belongs_to_the_group(body):
    event = one(body("line", "message_group_sticker"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE and event.contact_external_id == GROUP
    assert event.parts[0].sticker.provider_sticker_id == "446:1988" and event.parts[0].sticker.animated


def test_file_and_location(body):
    [file] = one(body("line", "message_file")).parts
    assert (file.media.kind, file.media.filename, file.media.size_bytes) == (
        ev.MEDIA_KIND_FILE,
        "invoice-1042.pdf",
        48213,
    )
    [place] = one(body("line", "message_location")).parts
    assert (place.location.latitude, place.location.longitude) == (35.681236, 139.767125)
    assert place.location.name == "Pickup point" and place.location.address.startswith("1-1 Marunouchi")


def test_postback_carries_its_data_and_the_picked_datetime(body):
    event = one(body("line", "postback"))
    assert event.kind == ev.INBOUND_KIND_POSTBACK
    assert (event.payload, event.title) == ("action=book&slot=pick", "2026-12-01T10:30")
    assert event.parts[0].button_reply.payload == "action=book&slot=pick"


def test_follow_unfollow_join_and_unsend(body):
    follow = one(body("line", "follow"))
    assert (follow.kind, follow.payload, follow.title) == (ev.INBOUND_KIND_OPTIN, "follow", "")
    unfollow = one(body("line", "unfollow"))
    assert (unfollow.kind, unfollow.payload) == (ev.INBOUND_KIND_MEMBERSHIP, "blocked")
    join = one(body("line", "join"))
    assert (join.kind, join.payload, join.contact_external_id) == (ev.INBOUND_KIND_MEMBERSHIP, "joined", GROUP)
    unsend = one(body("line", "unsend"))
    assert unsend.kind == ev.INBOUND_KIND_DELETE and unsend.target_provider_message_id == "534018300012345678"


def test_events_parley_does_not_know_are_unknown_with_their_raw_json(body, doc):
    beacon = one(body("line", "beacon"))
    assert beacon.kind == ev.INBOUND_KIND_UNKNOWN and beacon.contact_external_id == USER
    assert json.loads(beacon.raw_json)["beacon"]["hwid"] == "d41d8cd98f"
    document = doc("line", "message_text")
    document["events"][0]["message"] = {"type": "hologram", "id": "1"}
    document["events"].append("not an event")
    odd, scalar = events(json.dumps(document))
    assert odd.kind == ev.INBOUND_KIND_UNKNOWN and odd.provider_message_id == "1"
    assert scalar.kind == ev.INBOUND_KIND_UNKNOWN and json.loads(scalar.raw_json) == "not an event"


def test_every_event_of_a_body_is_one_item(body):
    message, postback = events(body("line", "two_events"))
    assert (message.kind, postback.kind) == (ev.INBOUND_KIND_MESSAGE, ev.INBOUND_KIND_POSTBACK)


def test_a_redelivered_event_keeps_its_id(doc):
    document = doc("line", "message_text")
    first = one(json.dumps(document)).event_id
    document["events"][0]["deliveryContext"] = {"isRedelivery": True}
    assert one(json.dumps(document)).event_id == first
    assert one(json.dumps(document)).event_id != events(json.dumps(document), channel_id="ch_other")[0].event_id


def test_ids_stay_unique_when_a_body_repeats_a_webhook_event_id_or_has_none(doc):
    document = doc("line", "two_events")
    for event in document["events"]:
        event["webhookEventId"] = "same"
    document["events"].append(document["events"][0])  # an identical copy
    ids = [e.event_id for e in events(json.dumps(document))]
    assert len(set(ids)) == 3 and all(i.startswith(f"line:{CHANNEL}:same:") for i in ids)
    assert ids == [e.event_id for e in events(json.dumps(document))]
    for event in document["events"]:
        event.pop("webhookEventId", None)  # the copy is the same object
    assert len({e.event_id for e in events(json.dumps(document))}) == 3


def test_the_consoles_verify_events_are_not_published(doc):
    assert events(json.dumps(doc("line", "verify"))) == []
    document = doc("line", "message_text")
    document["events"] = [dict(document["events"][0], replyToken=token) for token in ("0" * 32, "f" * 32)]
    assert events(json.dumps(document)) == []


@pytest.mark.parametrize("raw", [b"[]", b'{"destination": "U1"}', b'{"events": {}}', b"nope"])
def test_bodies_that_are_not_line_webhooks_are_refused(raw):
    with pytest.raises(InvalidEnvelope):
        parse_line(raw, channel_id=CHANNEL)
    with pytest.raises(ValueError, match="channel_id"):
        parse_line(b'{"events": []}', channel_id="")


# -- signature -----------------------------------------------------------------------------------------------------


def test_line_signature_is_base64_hmac_sha256_of_the_body_with_the_channel_secret():
    secret, raw = "8c1f0e6b2a4d4e7f9a0b1c2d3e4f5a6b", b'{"destination":"U1","events":[]}'
    header = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    assert verify_line_signature(raw, header, secret) is Verdict.VALID
    assert verify_line_signature(raw + b" ", header, secret) is Verdict.MISMATCH
    assert verify_line_signature(raw, header, "0" * 32) is Verdict.MISMATCH
    assert verify_line_signature(raw, None, secret) is Verdict.MISSING
    assert verify_line_signature(raw, "not base64!", secret) is Verdict.MALFORMED
    assert verify_line_signature(raw, base64.b64encode(b"short").decode(), secret) is Verdict.MALFORMED


# -- outbound ------------------------------------------------------------------------------------------------------


def message(**fields) -> OutboundMessage:
    return OutboundMessage(request_id="req-1", space_id="s", channel_id="c", contact_external_id=USER, **fields)


def test_text_with_quick_replies_is_one_push():
    body = outbound_line.push_request(
        message(text="Pick one", quick_replies=(QuickReply("Track my parcel", "TRACK"), QuickReply("Agent", "")))
    )
    assert body == {
        "to": USER,
        "messages": [
            {
                "type": "text",
                "text": "Pick one",
                "quickReply": {
                    "items": [
                        {
                            "type": "action",
                            "action": {
                                "type": "postback",
                                "label": "Track my parcel",
                                "data": "TRACK",
                                "displayText": "Track my parcel",
                            },
                        },
                        {"type": "action", "action": {"type": "message", "label": "Agent", "text": "Agent"}},
                    ]
                },
            }
        ],
    }


def test_buttons_template_and_images_with_captions():
    body = outbound_line.push_request(
        message(
            text="Your order",
            buttons=(Button("Open the order page", url="https://shop.example.com/o/1"), Button("Cancel", "CANCEL")),
            attachments=(Attachment("image", "https://cdn.example.com/a.jpg", caption="The parcel"),),
        )
    )
    template, image, caption = body["messages"]
    assert template == {
        "type": "template",
        "altText": "Your order",
        "template": {
            "type": "buttons",
            "text": "Your order",
            "actions": [
                {"type": "uri", "label": "Open the order page", "uri": "https://shop.example.com/o/1"},
                {"type": "postback", "label": "Cancel", "data": "CANCEL", "displayText": "Cancel"},
            ],
        },
    }
    url = "https://cdn.example.com/a.jpg"
    assert image == {"type": "image", "originalContentUrl": url, "previewImageUrl": url}
    assert caption == {"type": "text", "text": "The parcel"}


@pytest.mark.parametrize(
    "msg",
    [
        message(),
        message(attachments=(Attachment("file", "https://cdn.example.com/a.pdf"),)),
        message(attachments=(Attachment("video", "https://cdn.example.com/a.mp4"),)),
        message(text="x", attachments=tuple(Attachment("image", f"https://cdn.example.com/{i}.jpg") for i in range(5))),
        message(buttons=(Button("No text", "X"),)),
        message(text="x" * 161, buttons=(Button("Long", "X"),)),
        message(text="x", buttons=tuple(Button(f"b{i}", "X") for i in range(5))),
        message(text="x", quick_replies=tuple(QuickReply(f"q{i}", "X") for i in range(14))),
        message(text="x", quick_replies=(QuickReply("big", "x" * 301),)),
    ],
)
def test_what_line_cannot_carry_is_unsupported_content(msg):
    with pytest.raises(InvalidContent):
        outbound_line.push_request(msg)


def test_the_retry_key_is_a_uuid_fixed_per_request():
    key = outbound_line.retry_key("req-1")
    assert key == outbound_line.retry_key("req-1") != outbound_line.retry_key("req-2")
    assert len(key) == 36 and key.count("-") == 4


def answer(status: int, payload: dict, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=payload, headers=headers)


def test_errors_are_classified():
    limited = outbound_line.line_error(answer(429, {"message": "Too Many Requests"}, **{"Retry-After": "2"}))
    assert (limited.code, limited.retryable, limited.rate_limited, limited.retry_after) == ("http_429", True, True, 2)
    quota = outbound_line.line_error(answer(429, {"message": "You have reached your monthly limit."}))
    assert (quota.code, quota.retryable) == ("monthly_limit", False)
    assert outbound_line.line_error(answer(500, {"message": "Internal"})).retryable
    invalid = outbound_line.line_error(
        answer(
            400, {"message": "The request body has 1 error(s)", "details": [{"message": "invalid", "property": "to"}]}
        )
    )
    assert (invalid.code, invalid.retryable) == ("http_400", False) and "to: invalid" in invalid.message
    assert not outbound_line.line_error(answer(403, {"message": "Not authorized"})).retryable
    assert outbound_line.sent_message_id({"sentMessages": [{"id": "461230966842064897", "quoteToken": "q"}]}) == (
        "461230966842064897"
    )
    assert outbound_line.sent_message_id({}) == ""
