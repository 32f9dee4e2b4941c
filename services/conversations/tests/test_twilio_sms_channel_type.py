"""A Twilio SMS event keeps its channel type through conversations (not read as a custom channel) and has no
messaging window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from parley.channel_gateway.v1 import events_pb2 as gw
from parley.common.v1 import common_pb2 as common
from parley_conversations import mapping
from parley_conversations.service import check_window


def test_twilio_sms_events_keep_their_channel_type_both_ways() -> None:
    event = gw.InboundEvent(
        event_id="twilio_sms:SM1",
        space_id="space-1",
        channel_id="channel-1",
        channel_type=common.CHANNEL_TYPE_TWILIO_SMS,
        kind=gw.INBOUND_KIND_MESSAGE,
        contact_external_id="+12125550123",
        parts=[gw.ContentPart(text=gw.TextPart(text="hi"))],
    )
    item = mapping.inbound_item(event)
    assert item.channel_type == "twilio_sms"
    assert mapping.CHANNEL_TYPE_PB[item.channel_type] == common.CHANNEL_TYPE_TWILIO_SMS


def test_twilio_sms_has_no_window() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    check_window("twilio_sms", now - timedelta(days=400), now)
    check_window("twilio_sms", None, now)
