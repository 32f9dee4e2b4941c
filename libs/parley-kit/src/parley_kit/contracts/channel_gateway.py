"""The channel gateway's stream `CHANNEL_GATEWAY` and its subjects.

- `channel_gateway.inbound.<NN>`: every canonical `InboundEvent`, on one of `INBOUND_PARTITIONS` subjects.
  NN is `crc32("<space_id>:<channel_id>:<contact_external_id>") % INBOUND_PARTITIONS` as two digits, so all
  events of one contact share a subject and keep their order; consumers may run one ordered worker per
  partition. Nats-Msg-Id is the event's `event_id`.
- `channel_gateway.outbound.requested`: `OutboundSendRequest`s (conversations, broadcast, automation publish;
  the gateway's worker consumes). Nats-Msg-Id is the `request_id`.
- `channel_gateway.outbound.status`: `OutboundStatusEvent`s (the gateway publishes). Nats-Msg-Id is its `event_id`.
"""

from __future__ import annotations

import zlib
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parley_kit.nats.streams import StreamSpec

STREAM = "CHANNEL_GATEWAY"
SUBJECTS = ("channel_gateway.>",)
INBOUND_PARTITIONS = 16
INBOUND_PREFIX = "channel_gateway.inbound"
INBOUND_ALL = f"{INBOUND_PREFIX}.*"
OUTBOUND_REQUESTED = "channel_gateway.outbound.requested"
OUTBOUND_STATUS = "channel_gateway.outbound.status"
MAX_AGE = timedelta(days=7)
DUPLICATE_WINDOW = timedelta(minutes=10)
"""Longer than the default: Meta and Telegram retry a failed webhook within minutes."""


def inbound_partition(space_id: str, channel_id: str, contact_external_id: str) -> int:
    """The partition of one contact's inbound events (stable across processes and releases)."""
    key = f"{space_id}:{channel_id}:{contact_external_id}".encode()
    return zlib.crc32(key) % INBOUND_PARTITIONS


def inbound_subject(space_id: str, channel_id: str, contact_external_id: str) -> str:
    """`channel_gateway.inbound.<NN>` for one contact."""
    return f"{INBOUND_PREFIX}.{inbound_partition(space_id, channel_id, contact_external_id):02d}"


def inbound_partition_subject(partition: int) -> str:
    """The subject of partition `partition` (0 <= partition < INBOUND_PARTITIONS)."""
    if not 0 <= partition < INBOUND_PARTITIONS:
        raise ValueError(f"partition must be in [0, {INBOUND_PARTITIONS}), got {partition}")
    return f"{INBOUND_PREFIX}.{partition:02d}"


def stream_spec(replicas: int = 1, *, max_age: timedelta = MAX_AGE) -> StreamSpec:
    """The `CHANNEL_GATEWAY` stream; every service that publishes to or consumes from it provisions it alike."""
    from parley_kit.nats.streams import StreamSpec

    return StreamSpec(
        name=STREAM, subjects=SUBJECTS, max_age=max_age, duplicate_window=DUPLICATE_WINDOW, replicas=replicas
    )
