"""What a parser returns."""

from __future__ import annotations

from dataclasses import dataclass

from parley.channel_gateway.v1.events_pb2 import InboundEvent


@dataclass(frozen=True, slots=True)
class ParsedItem:
    """One canonical event from a webhook body, with the provider ids that select its channel.

    `channel_keys` lists candidate ids of the receiving account, most authoritative first (Messenger and
    Instagram: `entry[].id`, then the page-side participant; WhatsApp: `metadata.phone_number_id`). It is
    empty for Telegram and custom channels, whose channel comes from the URL. The HTTP layer fills
    `event.space_id`, `event.channel_id` and `event.received_at`.
    """

    event: InboundEvent
    channel_keys: tuple[str, ...] = ()
