"""Channel types survive the gateway event → conversation → API round trip (none falls back to custom)."""

from __future__ import annotations

from parley.channel_gateway.v1 import events_pb2 as gw
from parley.common.v1 import common_pb2 as common
from parley_conversations import mapping


def test_a_viber_event_keeps_its_channel_type_both_ways() -> None:
    event = gw.InboundEvent(
        event_id="viber:c1:msg:1", space_id="s1", channel_id="c1", contact_external_id="u1",
        channel_type=common.CHANNEL_TYPE_VIBER, kind=gw.INBOUND_KIND_MESSAGE,
    )  # fmt: skip
    item = mapping.inbound_item(event)
    assert item.channel_type == "viber"
    assert mapping.CHANNEL_TYPE_PB[item.channel_type] == common.CHANNEL_TYPE_VIBER
