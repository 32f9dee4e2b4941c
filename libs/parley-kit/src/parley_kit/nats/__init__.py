"""NATS JetStream: declared streams and consumers, publishing, and the consumer runner."""

from parley_kit.nats.consumer import BatchHandler, ConsumerRunner, Delivery, Handler
from parley_kit.nats.errors import PoisonMessage, ProvisioningError, TransientError, is_transient
from parley_kit.nats.publisher import Publisher, RawEvent
from parley_kit.nats.streams import (
    ConsumerSpec,
    StreamSpec,
    dead_letter_stream,
    dead_letter_subject,
    max_deliver_outlasting,
    provision,
)

__all__ = [
    "BatchHandler",
    "ConsumerRunner",
    "ConsumerSpec",
    "Delivery",
    "Handler",
    "PoisonMessage",
    "ProvisioningError",
    "Publisher",
    "RawEvent",
    "StreamSpec",
    "TransientError",
    "dead_letter_stream",
    "dead_letter_subject",
    "is_transient",
    "max_deliver_outlasting",
    "provision",
]
