"""Instagram messaging webhooks (object "instagram") to canonical events."""

from __future__ import annotations

import json

import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import CHANNEL_TYPE_INSTAGRAM
from parley_channel_gateway.inbound import InvalidEnvelope, parse_instagram, parse_meta

ACCOUNT, IGSID = "17841400000000001", "6234567890123456"


def events(raw: bytes) -> list[ev.InboundEvent]:
    items = parse_instagram(raw)
    assert all(item.channel_keys == (ACCOUNT,) for item in items)
    assert all(item.event.channel_type == CHANNEL_TYPE_INSTAGRAM for item in items)
    return [item.event for item in items]


def test_text_message(body):
    [event] = events(body("instagram", "message_text"))
    assert event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.event_id == "instagram:aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx"
    assert event.contact_external_id == IGSID
    assert event.parts[0].text.text == "Do you ship to Canada?"


def test_media_and_reel(body):
    [event] = events(body("instagram", "message_media"))
    image, video, audio, reel = event.parts
    assert [part.media.kind for part in (image, video, audio)] == [
        ev.MEDIA_KIND_IMAGE,
        ev.MEDIA_KIND_VIDEO,
        ev.MEDIA_KIND_AUDIO,
    ]
    assert (reel.template.name, reel.template.title) == ("ig_reel", "Our new collection")
    assert reel.template.url == "https://lookaside.fbsbx.example/ig/reel.mp4"


def test_story_reply(body):
    [event] = events(body("instagram", "story_reply"))
    text, story = event.parts
    assert text.text.text == "Love this look!"
    assert (story.template.name, story.template.url) == ("story_reply", "https://lookaside.fbsbx.example/ig/story.jpg")
    assert json.loads(story.template.payload_json)["id"] == "18023456789012345"
    assert event.target_provider_message_id == ""


def test_story_mention_and_share(body):
    mention, share = events(body("instagram", "story_mention_share"))
    assert mention.parts[0].template.name == "story_mention"
    assert share.parts[0].template.name == "share"
    assert share.parts[0].template.url == "https://lookaside.fbsbx.example/ig/post.jpg"


def test_echo(body):
    [event] = events(body("instagram", "echo"))
    assert event.kind == ev.INBOUND_KIND_ECHO
    assert event.contact_external_id == IGSID


def test_reaction(body):
    [event] = events(body("instagram", "reaction"))
    assert event.kind == ev.INBOUND_KIND_REACTION
    assert event.target_provider_message_id == "aWdfZAG1faXRlbToxOklHRWNobw"
    assert event.reaction.emoji == "\u2764\ufe0f" and not event.reaction.removed
    assert event.event_id.startswith("instagram:reaction:aWdfZAG1faXRlbToxOklHRWNobw:")


def test_postback(body):
    [event] = events(body("instagram", "postback"))
    assert event.kind == ev.INBOUND_KIND_POSTBACK
    assert (event.payload, event.title) == ("ICEBREAKER_SHIPPING", "Shipping info")
    assert event.event_id == "instagram:postback:aWdfZAG1faXRlbToxOklHUG9zdGJhY2s"


def test_seen_names_the_message(body):
    [event] = events(body("instagram", "seen"))
    assert event.kind == ev.INBOUND_KIND_READ
    assert list(event.receipt.provider_message_ids) == ["aWdfZAG1faXRlbToxOklHRWNobw"]
    assert not event.receipt.HasField("watermark")
    assert event.event_id == f"instagram:read:{ACCOUNT}:{IGSID}:aWdfZAG1faXRlbToxOklHRWNobw"


def test_unsend_and_unsupported(body):
    deleted, unsupported = events(body("instagram", "unsend_unsupported"))
    assert deleted.kind == ev.INBOUND_KIND_DELETE
    assert deleted.target_provider_message_id == "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx"
    assert deleted.event_id == "instagram:delete:aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx"
    assert unsupported.kind == ev.INBOUND_KIND_MESSAGE
    assert unsupported.parts[0].HasField("unsupported")


def test_iso_timestamps_are_tolerated(doc):
    payload = doc("instagram", "message_text")
    payload["entry"][0]["messaging"][0]["timestamp"] = "2025-01-01T10:01:40+0000"
    [event] = events(json.dumps(payload).encode())
    assert event.provider_timestamp.ToMilliseconds() == 1735725700000


def test_page_body_is_refused_on_the_instagram_route(body):
    with pytest.raises(InvalidEnvelope, match='"object" must be "instagram"'):
        parse_instagram(body("messenger", "message_text"))


def test_parse_meta_dispatches_on_object(body):
    [item] = parse_meta(body("instagram", "message_text"))
    assert item.event.channel_type == CHANNEL_TYPE_INSTAGRAM
    with pytest.raises(InvalidEnvelope, match='"page" or "instagram"'):
        parse_meta(b'{"object": "user", "entry": []}')
