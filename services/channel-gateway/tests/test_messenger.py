"""Messenger webhooks (object "page") to canonical events."""

from __future__ import annotations

import json

import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import CHANNEL_TYPE_MESSENGER
from parley_channel_gateway.inbound import InvalidEnvelope, parse_messenger, parse_meta

PAGE, PSID = "106385812345678", "5923481234567890"


def one(raw: bytes) -> ev.InboundEvent:
    [item] = parse_messenger(raw)
    assert item.channel_keys == (PAGE,)
    assert item.event.channel_type == CHANNEL_TYPE_MESSENGER
    return item.event


def test_text_message_with_reply(body):
    event = one(body("messenger", "message_text"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.event_id == "messenger:m_text0001AbCdEfGh"
    assert event.contact_external_id == PSID
    assert event.provider_message_id == "m_text0001AbCdEfGh"
    assert event.target_provider_message_id == "m_earlier0001XyZ"
    assert [part.text.text for part in event.parts] == ["Hi, is my order on its way?"]
    assert event.provider_timestamp.ToMilliseconds() == 1735725600000
    assert event.provider_sequence == 1735725600000
    assert not event.space_id and not event.channel_id and not event.HasField("received_at")


def test_raw_json_is_the_item_not_the_batch(body):
    event = one(body("messenger", "message_text"))
    raw = json.loads(event.raw_json)
    assert raw["message"]["mid"] == "m_text0001AbCdEfGh"
    assert "entry" not in raw


def test_media_attachments(body):
    event = one(body("messenger", "message_media"))
    media = [(part.media.kind, part.media.url) for part in event.parts]
    assert media == [
        (ev.MEDIA_KIND_IMAGE, "https://cdn.fbsbx.example/photo.jpg"),
        (ev.MEDIA_KIND_VIDEO, "https://cdn.fbsbx.example/clip.mp4"),
        (ev.MEDIA_KIND_AUDIO, "https://cdn.fbsbx.example/voice.mp4"),
        (ev.MEDIA_KIND_FILE, "https://cdn.fbsbx.example/invoice.pdf"),
    ]


def test_location_and_fallback(body):
    location, fallback = one(body("messenger", "message_location_fallback")).parts
    assert (location.location.latitude, location.location.longitude) == (48.8584, 2.2945)
    assert location.location.name == "Pinned Location"
    assert fallback.template.name == "fallback"
    assert (fallback.template.title, fallback.template.url) == ("Parley docs", "https://docs.example.com/parley")
    assert fallback.template.payload_json == ""


def test_sticker_is_one_sticker_part(body):
    [part] = one(body("messenger", "message_sticker")).parts
    assert part.sticker.provider_sticker_id == "369239263222822"
    assert part.sticker.url == "https://cdn.fbsbx.example/thumbs-up.png"


def test_quick_reply(body):
    text, quick_reply = one(body("messenger", "message_quick_reply")).parts
    assert text.text.text == "Track my order"
    assert (quick_reply.quick_reply.title, quick_reply.quick_reply.payload) == ("Track my order", "TRACK_ORDER")


def test_echo_contact_is_the_recipient_and_page_the_sender(body):
    event = one(body("messenger", "echo_template"))
    assert event.kind == ev.INBOUND_KIND_ECHO
    assert event.contact_external_id == PSID
    assert event.event_id == "messenger:m_echo0001AbCdEfGh"
    [part] = event.parts
    assert (part.template.name, part.template.title) == ("template", "Your order")
    assert json.loads(part.template.payload_json)["template_type"] == "button"


def test_echo_without_entry_id_takes_the_page_from_the_sender(doc):
    payload = doc("messenger", "echo_template")
    del payload["entry"][0]["id"]
    [item] = parse_messenger(json.dumps(payload))
    assert item.channel_keys == (PAGE,)


def test_postback(body):
    event = one(body("messenger", "postback"))
    assert event.kind == ev.INBOUND_KIND_POSTBACK
    assert event.event_id == "messenger:postback:m_postback0001AbCd"
    assert (event.payload, event.title) == ("GET_STARTED", "Get Started")
    assert event.parts[0].button_reply.payload == "GET_STARTED"
    assert json.loads(event.raw_json)["postback"]["referral"]["ref"] == "winter-sale"


def test_delivery_receipt(body):
    event = one(body("messenger", "delivery"))
    assert event.kind == ev.INBOUND_KIND_DELIVERY
    assert event.event_id == f"messenger:delivery:{PAGE}:{PSID}:1735725606500"
    assert event.receipt.status == ev.DELIVERY_STATUS_DELIVERED
    assert list(event.receipt.provider_message_ids) == ["m_out0001AbCd", "m_out0002AbCd"]
    assert event.receipt.watermark.ToMilliseconds() == 1735725606500
    assert event.provider_sequence == 1735725606500  # no timestamp: the watermark orders it


def test_read_receipt(body):
    event = one(body("messenger", "read"))
    assert event.kind == ev.INBOUND_KIND_READ
    assert event.event_id == f"messenger:read:{PAGE}:{PSID}:1735725606500"
    assert event.receipt.status == ev.DELIVERY_STATUS_READ
    assert event.receipt.watermark.ToMilliseconds() == 1735725606500


def test_reactions(body):
    react, unreact = (item.event for item in parse_messenger(body("messenger", "reaction")))
    assert react.kind == unreact.kind == ev.INBOUND_KIND_REACTION
    assert react.target_provider_message_id == unreact.target_provider_message_id == "m_out0001AbCd"
    assert (react.reaction.emoji, react.reaction.removed) == ("\u2764\ufe0f", False)
    assert (unreact.reaction.emoji, unreact.reaction.removed) == ("", True)
    assert react.event_id == f"messenger:reaction:m_out0001AbCd:{PSID}:react:\u2764\ufe0f:1735725608800"
    assert unreact.event_id == f"messenger:reaction:m_out0001AbCd:{PSID}:unreact:-:1735725608900"


def test_referral(body):
    event = one(body("messenger", "referral"))
    assert event.kind == ev.INBOUND_KIND_REFERRAL
    assert (event.payload, event.title) == ("ad-campaign-42", "ADS")
    assert event.event_id == f"messenger:referral:{PAGE}:{PSID}:1735725609900"


def test_optins_with_psid_and_with_user_ref(body):
    with_psid, with_user_ref = (item.event for item in parse_messenger(body("messenger", "optin")))
    assert with_psid.kind == with_user_ref.kind == ev.INBOUND_KIND_OPTIN
    assert (with_psid.contact_external_id, with_psid.payload, with_psid.title) == (
        PSID,
        "WEEKLY_DEALS",
        "notification_messages",
    )
    assert with_user_ref.contact_external_id == "user_ref:ur-7f3a9c"
    assert with_user_ref.payload == "checkout-page"
    assert with_user_ref.event_id == f"messenger:optin:{PAGE}:user_ref:ur-7f3a9c:1735725610900"


def test_message_edit(body):
    event = one(body("messenger", "edit"))
    assert event.kind == ev.INBOUND_KIND_EDIT
    assert event.event_id == "messenger:edit:m_text0001AbCdEfGh:1"
    assert event.target_provider_message_id == event.provider_message_id == "m_text0001AbCdEfGh"
    assert event.parts[0].text.text == "Hi, is my order (#1234) on its way?"


def test_standby_messages_are_parsed_like_messaging(body):
    event = one(body("messenger", "standby"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.event_id == "messenger:m_standby0001AbCd"


def test_unknown_items_are_kept_not_refused(body):
    handover, change = (item.event for item in parse_messenger(body("messenger", "unknown")))
    assert handover.kind == change.kind == ev.INBOUND_KIND_UNKNOWN
    assert "pass_thread_control" in json.loads(handover.raw_json)
    assert json.loads(change.raw_json)["field"] == "feed"
    assert handover.event_id.startswith("messenger:unknown:h") and handover.event_id != change.event_id


def test_event_ids_are_deterministic_and_distinct(body):
    raw = body("messenger", "optin")
    first, second = parse_messenger(raw), parse_messenger(raw)
    assert [item.event.event_id for item in first] == [item.event.event_id for item in second]
    assert len({item.event.event_id for item in first}) == 2


def test_parse_meta_dispatches_on_object(body):
    [item] = parse_meta(body("messenger", "message_text"))
    assert item.event.channel_type == CHANNEL_TYPE_MESSENGER


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe{", "not valid JSON"),
        (b'{"object": "page", "entry": [NaN]}', "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"object": "instagram", "entry": []}', '"object" must be "page"'),
        (b'{"entry": []}', '"object" must be "page"'),
        (b'{"object": "page"}', '"entry" must be a JSON array'),
        (b'{"object": "page", "entry": {}}', '"entry" must be a JSON array'),
        (b'{"object": "page", "entry": ' + b"[" * 100 + b"]" * 100 + b"}", "nested"),
    ],
)
def test_envelope_errors(raw, message):
    with pytest.raises(InvalidEnvelope, match=message) as caught:
        parse_messenger(raw)
    assert caught.value.as_json()["error"] == "invalid_envelope"


def test_empty_entry_list_is_valid_and_empty():
    assert parse_messenger(b'{"object": "page", "entry": []}') == []
