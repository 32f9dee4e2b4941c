"""Channel types the gateway added after conversations was written survive the gateway event → conversation → API
round trip with their own type (none falls back to "custom")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from parley.channel_gateway.v1 import events_pb2 as gw
from parley.common.v1 import common_pb2 as common
from parley_conversations import mapping
from parley_conversations.service import check_window


def test_a_line_event_is_stored_and_served_as_line() -> None:
    event = gw.InboundEvent(
        event_id="line:ch:01J", space_id="sp", channel_id="ch", channel_type=common.CHANNEL_TYPE_LINE,
        kind=gw.INBOUND_KIND_MESSAGE, contact_external_id="U1", parts=[gw.ContentPart(text=gw.TextPart(text="hi"))],
    )  # fmt: skip
    item = mapping.inbound_item(event)
    assert item.channel_type == "line"
    assert mapping.CHANNEL_TYPE_PB[item.channel_type] == common.CHANNEL_TYPE_LINE


def test_a_viber_event_keeps_its_channel_type_both_ways() -> None:
    event = gw.InboundEvent(
        event_id="viber:c1:msg:1", space_id="s1", channel_id="c1", contact_external_id="u1",
        channel_type=common.CHANNEL_TYPE_VIBER, kind=gw.INBOUND_KIND_MESSAGE,
    )  # fmt: skip
    item = mapping.inbound_item(event)
    assert item.channel_type == "viber"
    assert mapping.CHANNEL_TYPE_PB[item.channel_type] == common.CHANNEL_TYPE_VIBER


def test_a_twilio_sms_event_is_stored_and_served_as_twilio_sms_without_a_window() -> None:
    event = gw.InboundEvent(
        event_id="twilio_sms:SM1", space_id="sp", channel_id="ch", channel_type=common.CHANNEL_TYPE_TWILIO_SMS,
        kind=gw.INBOUND_KIND_MESSAGE, contact_external_id="+12125550123",
        parts=[gw.ContentPart(text=gw.TextPart(text="hi"))],
    )  # fmt: skip
    item = mapping.inbound_item(event)
    assert item.channel_type == "twilio_sms"
    assert mapping.CHANNEL_TYPE_PB[item.channel_type] == common.CHANNEL_TYPE_TWILIO_SMS
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    check_window("twilio_sms", now - timedelta(days=400), now)
    check_window("twilio_sms", None, now)
