"""Telegram Bot API updates to canonical events."""

from __future__ import annotations

import json

import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import CHANNEL_TYPE_TELEGRAM
from parley_channel_gateway.inbound import InvalidEnvelope, parse_telegram

CHANNEL, CHAT = "ch_telegram_1", "731234567"


def one(raw: bytes, channel_id: str = CHANNEL) -> ev.InboundEvent:
    [item] = parse_telegram(raw, channel_id=channel_id)
    assert item.channel_keys == ()
    assert item.event.channel_type == CHANNEL_TYPE_TELEGRAM
    return item.event


def test_private_text_message_with_reply_and_profile(body):
    event = one(body("telegram", "message_text"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.event_id == f"telegram:{CHANNEL}:msg:{CHAT}:41"
    assert event.contact_external_id == CHAT
    assert event.provider_message_id == f"{CHAT}:41"
    assert event.target_provider_message_id == f"{CHAT}:40"
    assert event.parts[0].text.text == "Dobrý den, where is my parcel?"
    profile = event.profile
    assert (profile.first_name, profile.last_name, profile.username, profile.language) == (
        "Mila",
        "Novak",
        "milanovak",
        "cs",
    )
    assert profile.display_name == "Mila Novak"
    assert event.provider_sequence == 500100001
    assert event.provider_timestamp.seconds == 1735726000


def test_ids_are_scoped_by_channel(body):
    raw = body("telegram", "message_text")
    assert one(raw).event_id != one(raw, channel_id="ch_other_bot").event_id
    assert one(raw).event_id == one(raw).event_id
    with pytest.raises(ValueError, match="channel_id"):
        parse_telegram(raw, channel_id="")


def test_group_message_profile_is_the_group(body):
    event = one(body("telegram", "message_group"))
    assert event.contact_external_id == "-1002233445566"
    assert (event.profile.display_name, event.profile.first_name) == ("Novak Family Orders", "")


def test_edited_message(body):
    event = one(body("telegram", "edited_message"))
    assert event.kind == ev.INBOUND_KIND_EDIT
    assert event.event_id == f"telegram:{CHANNEL}:edit:{CHAT}:41:1735726060"
    assert event.target_provider_message_id == f"{CHAT}:41"
    assert event.provider_timestamp.seconds == 1735726060
    assert event.parts[0].text.text == "Dobrý den, where is my parcel #1234?"


def test_channel_post(body):
    event = one(body("telegram", "channel_post"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.contact_external_id == "-1001122334455"
    assert (event.profile.display_name, event.profile.username) == ("Parley Shop News", "parleyshopnews")


def test_callback_query(body):
    event = one(body("telegram", "callback_query"))
    assert event.kind == ev.INBOUND_KIND_POSTBACK
    assert event.event_id == f"telegram:{CHANNEL}:callback:3141592653589793238"
    assert (event.payload, event.title) == ("slot:pm", "Evening")
    assert event.target_provider_message_id == f"{CHAT}:42"
    assert event.contact_external_id == CHAT
    assert event.profile.username == "milanovak"


def test_my_chat_member(body):
    event = one(body("telegram", "my_chat_member"))
    assert event.kind == ev.INBOUND_KIND_MEMBERSHIP
    assert (event.payload, event.title) == ("kicked", "member")
    assert event.event_id == f"telegram:{CHANNEL}:member:{CHAT}:1735726004:kicked"


def test_photo_takes_the_largest_size(body):
    [part] = one(body("telegram", "photo")).parts
    assert (part.media.kind, part.media.provider_media_id) == (ev.MEDIA_KIND_IMAGE, "AgACAgQAAxkBAAIBQ2W-large")
    assert (part.media.size_bytes, part.media.caption) == (98211, "The box is dented")


@pytest.mark.parametrize(
    ("name", "kind", "file_id", "mime_type", "filename"),
    [
        ("document", ev.MEDIA_KIND_FILE, "BQACAgQAAxkBAAIBRGW-doc", "application/pdf", "invoice-1234.pdf"),
        ("voice", ev.MEDIA_KIND_AUDIO, "AwACAgQAAxkBAAIBRWW-voice", "audio/ogg", ""),
        ("audio", ev.MEDIA_KIND_AUDIO, "CQACAgQAAxkBAAIBRmW-audio", "audio/mpeg", "jingle.mp3"),
        ("video", ev.MEDIA_KIND_VIDEO, "BAACAgQAAxkBAAIBR2W-video", "video/mp4", ""),
    ],
)
def test_files(body, name, kind, file_id, mime_type, filename):
    [part] = one(body("telegram", name)).parts
    assert (part.media.kind, part.media.provider_media_id, part.media.mime_type) == (kind, file_id, mime_type)
    assert part.media.filename == filename


def test_sticker(body):
    [part] = one(body("telegram", "sticker")).parts
    assert (part.sticker.provider_sticker_id, part.sticker.animated) == ("CAACAgIAAxkBAAIBSGW-sticker", True)


def test_location(body):
    [part] = one(body("telegram", "location")).parts
    assert (part.location.latitude, part.location.longitude) == (50.087451, 14.420671)


def test_contact(body):
    [part] = one(body("telegram", "contact")).parts
    assert part.contact_card.formatted_name == "Petr Novak"
    assert list(part.contact_card.phones) == ["+420601234567"]


def test_unknown_update_and_service_message_are_kept(body):
    inline = one(body("telegram", "unknown"))
    assert inline.kind == ev.INBOUND_KIND_UNKNOWN
    assert inline.event_id == f"telegram:{CHANNEL}:update:500100015:inline_query"
    assert json.loads(inline.raw_json)["query"] == "parcel"
    service = one(body("telegram", "service_message"))
    assert service.kind == ev.INBOUND_KIND_UNKNOWN
    assert service.event_id == f"telegram:{CHANNEL}:msg:-1002233445566:51"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"message": {}}', '"update_id" must be an integer'),
        (b'{"update_id": "5", "message": {}}', '"update_id" must be an integer'),
        (b'{"update_id": true}', '"update_id" must be an integer'),
        (b'{"ok": false, "error_code": 409, "description": "Conflict"}', '"update_id" must be an integer'),
    ],
)
def test_envelope_errors(raw, message):
    with pytest.raises(InvalidEnvelope, match=message):
        parse_telegram(raw, channel_id=CHANNEL)
