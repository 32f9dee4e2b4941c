"""Header names Parley sets on NATS messages."""

from __future__ import annotations

MSG_ID = "Nats-Msg-Id"
"""JetStream de-duplication key; stable for one event (derived from its source id)."""
EVENT_TYPE = "Parley-Event-Type"
"""The event's type, by default the full protobuf name of the payload."""
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

DEAD_LETTER_REASON = "Parley-Dead-Letter-Reason"
ORIGINAL_SUBJECT = "Parley-Original-Subject"
ORIGINAL_MSG_ID = "Parley-Original-Msg-Id"
ORIGINAL_STREAM = "Parley-Original-Stream"
ORIGINAL_SEQUENCE = "Parley-Original-Sequence"
CONSUMER = "Parley-Consumer"
NUM_DELIVERED = "Parley-Num-Delivered"
