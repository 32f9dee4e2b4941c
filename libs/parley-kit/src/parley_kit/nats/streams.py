"""Streams and consumers declared in code, and provisioned explicitly (create or update).

Naming: the stream of service `contacts` is `CONTACTS` with subjects `contacts.<entity>.<event>`;
durable consumers are `<consumer-service>--<purpose>`; dead letters of a consumer go to
`dead_letter.<consumer-service>.<durable>` in the stream `<CONSUMER_SERVICE>_DEAD_LETTER`. The
dead-letter subjects start with `dead_letter.` rather than the service name so that a service's
own stream may claim `<service>.>` without overlapping its dead-letter stream (JetStream refuses
overlapping streams).

`max_deliver` and `backoff` are enforced by `ConsumerRunner`, not by the server: the server's
`max_deliver` drops a message with only an advisory (a silent loss), and a server-side backoff
distorts the delay of a `nak(delay=...)`. The server's copy of the consumer therefore has
`max_deliver=-1` and no backoff; the declared values are kept in its metadata for operators.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from parley_kit.nats.errors import ProvisioningError

log = logging.getLogger(__name__)
T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
META_MAX_DELIVER = "parley.max_deliver"
META_BACKOFF = "parley.backoff"
META_DEAD_LETTER_SUBJECT = "parley.dead_letter_subject"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream with limits retention."""

    name: str
    subjects: tuple[str, ...]
    max_age: timedelta | None
    duplicate_window: timedelta = timedelta(minutes=2)
    replicas: int = 1
    storage: StorageType = StorageType.FILE
    max_msg_size: int = -1
    """Largest message in bytes; -1 leaves the server's max_payload as the limit."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"stream name {self.name!r} may hold only letters, digits, '_' and '-'")
        if not self.subjects:
            raise ValueError(f"stream {self.name} needs at least one subject")

    def config(self) -> StreamConfig:
        """The server-side config this spec provisions."""
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            max_age=self.max_age.total_seconds() if self.max_age else 0,
            duplicate_window=self.duplicate_window.total_seconds(),
            num_replicas=self.replicas,
            storage=self.storage,
            max_msg_size=self.max_msg_size,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer with explicit acks.

    `backoff[i]` is the delay before the attempt after a transient failure of attempt i+1 (the
    last value repeats); a message failing its `max_deliver`-th attempt goes to
    `dead_letter_subject`. A handler that runs longer than `ack_wait` is kept alive by the
    runner's in-progress heartbeats.
    """

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait: timedelta
    max_deliver: int
    backoff: tuple[timedelta, ...]
    max_ack_pending: int
    dead_letter_subject: str
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL

    def __post_init__(self) -> None:
        if not _NAME.match(self.durable):
            raise ValueError(f"durable name {self.durable!r} may hold only letters, digits, '_' and '-'")
        if self.max_deliver < 1:
            raise ValueError(f"{self.durable}: max_deliver must be at least 1")
        if self.ack_wait <= timedelta(0) or any(d <= timedelta(0) for d in self.backoff):
            raise ValueError(f"{self.durable}: ack_wait and backoff values must be positive")
        if self.max_ack_pending < 1:
            raise ValueError(f"{self.durable}: max_ack_pending must be at least 1")

    def retry_delay(self, num_delivered: int) -> float | None:
        """Seconds to wait before redelivering after failed attempt `num_delivered` (None: at once)."""
        if not self.backoff:
            return None
        return self.backoff[min(num_delivered, len(self.backoff)) - 1].total_seconds()

    def config(self) -> ConsumerConfig:
        """The server-side config this spec provisions (see the module docstring on max_deliver)."""
        filters = list(self.filter_subjects)
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_policy=self.deliver_policy,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait.total_seconds(),
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
            metadata={
                META_MAX_DELIVER: str(self.max_deliver),
                META_BACKOFF: ",".join(f"{d.total_seconds():g}s" for d in self.backoff),
                META_DEAD_LETTER_SUBJECT: self.dead_letter_subject,
            },
        )


def max_deliver_outlasting(retention: timedelta, backoff: tuple[timedelta, ...]) -> int:
    """A `max_deliver` that a stream's `retention` runs out before: at the longest (last) backoff, a message
    is retried for longer than the stream keeps it, so the runner never dead-letters it for its delivery
    count; only a `PoisonMessage` is. For consumers whose every other failure is worth waiting out (a
    dependency down for hours, a message stuck behind an earlier one through no fault of its own)."""
    if not backoff:
        raise ValueError("max_deliver_outlasting needs a backoff")
    return retention // backoff[-1] + len(backoff)


def dead_letter_subject(service: str, durable: str) -> str:
    """Where consumer `durable` of `service` puts messages it gave up on."""
    return f"dead_letter.{service}.{durable}"


def dead_letter_stream(service: str, *, max_age: timedelta = timedelta(days=30), replicas: int = 1) -> StreamSpec:
    """The stream `<SERVICE>_DEAD_LETTER` keeping every dead letter of `service`'s consumers."""
    return StreamSpec(
        name=f"{service.upper().replace('-', '_')}_DEAD_LETTER",
        subjects=(f"dead_letter.{service}.>",),
        max_age=max_age,
        replicas=replicas,
    )


async def provision(js: JetStreamContext, streams: Iterable[StreamSpec], consumers: Iterable[ConsumerSpec]) -> None:
    """Create every stream and consumer, or update the existing ones whose config differs."""
    for stream in streams:
        await _provision_stream(js, stream)
    for consumer in consumers:
        await _provision_consumer(js, consumer)


async def _provision_stream(js: JetStreamContext, spec: StreamSpec) -> None:
    desired = spec.config()
    try:
        current = (await js.stream_info(spec.name)).config
    except NotFoundError:
        await _apply(js.add_stream(desired), f"create stream {spec.name}")
        log.info("created stream %s", spec.name)
        return
    if _stream_differs(current, desired):
        await _apply(js.update_stream(desired), f"update stream {spec.name}")
        log.info("updated stream %s", spec.name)


def _stream_differs(current: StreamConfig, desired: StreamConfig) -> bool:
    return (
        set(current.subjects or ()) != set(desired.subjects or ())
        or (current.max_age or 0) != desired.max_age
        or current.duplicate_window != desired.duplicate_window
        or current.num_replicas != desired.num_replicas
        or current.storage != desired.storage
        or current.max_msg_size != desired.max_msg_size
    )


async def _provision_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    desired = spec.config()
    try:
        current = (await js.consumer_info(spec.stream, spec.durable)).config
    except NotFoundError:
        current = None
    if current is not None and not _consumer_differs(current, desired):
        return
    # The server's create call is "create or update" (it refuses changes to immutable fields).
    action = "create" if current is None else "update"
    await _apply(js.add_consumer(spec.stream, desired), f"{action} consumer {spec.stream}/{spec.durable}")
    log.info("%sd consumer %s/%s", action, spec.stream, spec.durable)


def _filters(config: ConsumerConfig) -> set[str]:
    return set(config.filter_subjects or ([config.filter_subject] if config.filter_subject else []))


def _consumer_differs(current: ConsumerConfig, desired: ConsumerConfig) -> bool:
    current_meta = current.metadata or {}
    return (
        _filters(current) != _filters(desired)
        or current.ack_wait != desired.ack_wait
        or current.max_deliver != desired.max_deliver
        or current.max_ack_pending != desired.max_ack_pending
        or current.deliver_policy != desired.deliver_policy
        or bool(current.backoff)
        or any(current_meta.get(k) != v for k, v in (desired.metadata or {}).items())
    )


async def _apply(call: Awaitable[T], what: str) -> T:
    try:
        return await call
    except APIError as exc:
        raise ProvisioningError(f"cannot {what}: {exc.description} (error code {exc.err_code})") from exc
