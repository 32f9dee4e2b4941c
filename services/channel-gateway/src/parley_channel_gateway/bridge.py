"""The web process's asyncio side, on the gunicorn worker's event loop: the NATS connection, the kit Publisher and
the database engine, and `run()`, through which the synchronous Flask app, running in a greenlet per request
on that same loop (`asgi.py`), waits for a coroutine (`greenlets.wait`): no thread, no hand-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from opentelemetry import context as otel_context
from parley.channel_gateway.v1.events_pb2 import InboundEvent
from parley_kit import db, metrics
from parley_kit.contracts import channel_gateway as contract
from parley_kit.nats.publisher import Publisher
from parley_kit.nats.streams import provision

from parley_channel_gateway.config import Settings
from parley_channel_gateway.crypto import SecretBox
from parley_channel_gateway.greenlets import wait
from parley_channel_gateway.models import ACTIVE, ChannelRow
from parley_channel_gateway.repository import Repository

log = logging.getLogger(__name__)
T = TypeVar("T")


class NatsUnavailable(Exception):
    """JetStream did not acknowledge in time (or NATS is disconnected): answer 503 so the provider retries."""


class LookupUnavailable(Exception):
    """The channel database did not answer: answer 503 so the provider retries."""


# Where each URL-addressed channel type keeps the secret its webhooks are checked with.
_SECRET_KEYS = {
    "telegram": "secret_token",
    "custom": "webhook_secret",
    "line": "channel_secret",
    "viber": "access_token",
    "twilio_sms": "access_token",
}


@dataclass(frozen=True)
class ChannelInfo:
    """What the web process needs to know of a channel."""

    id: str
    space_id: str
    type: str
    active: bool
    secret: str = ""
    """Telegram: the setWebhook secret token; custom channels: the HMAC secret; LINE: the channel secret; Viber: the
    auth token (its HMAC key); Twilio SMS: the auth token."""


class _Cache:
    """A small TTL cache of channel lookups (None = known to be absent), used only on the loop."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], tuple[float, ChannelInfo | None]] = {}

    def get(self, key: tuple[str, str]) -> tuple[bool, ChannelInfo | None]:
        found = self._entries.get(key)
        if found is None or found[0] < time.monotonic():
            return False, None
        return True, found[1]

    def put(self, key: tuple[str, str], value: ChannelInfo | None) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl, value)


class Bridge:
    def __init__(self, settings: Settings, *, touch_interval: float = 5.0) -> None:
        self.settings = settings
        self.box = SecretBox(settings.channel_gateway_encryption_key)
        self.publish_timeout = settings.channel_gateway_publish_timeout_seconds
        self._touch_interval = touch_interval
        self._cache = _Cache(settings.channel_gateway_channel_cache_seconds)
        self._stopping = asyncio.Event()
        self._main_task: asyncio.Task[None] | None = None
        self._touched: set[str] = set()
        self.nc: NatsClient | None = None
        self.publisher: Publisher | None = None
        self.repo: Repository | None = None
        self._engine: Any = None

    # -- life ---------------------------------------------------------------------------------------------------

    async def start(self) -> Bridge:
        """Connect (in the background, retrying) on the running loop, whose greenlets then call `run()`."""
        self._engine = db.create_engine(self.settings.database_url, pool_size=5)
        self.repo = Repository(db.session_factory(self._engine))
        self._main_task = asyncio.create_task(self._main())
        return self

    async def aclose(self) -> None:
        """Stop: write pending last-inbound times, drain NATS, close the engine."""
        if self._main_task is not None:
            self._serving(False)
            self._stopping.set()
            if self._main_task.done():  # it ended on its own (see `alive`): nothing is left to drain
                await self._engine.dispose()
                return
            await self._main_task

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._connect()), asyncio.create_task(self._flush_touches())]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._flush_once()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5)
        await self._engine.dispose()

    async def _connect(self) -> None:
        """Connect to NATS (retrying until it answers), then provision the stream (idempotent)."""
        while True:
            try:
                self.nc = await nats.connect(
                    self.settings.nats_url,
                    name=f"{self.settings.service_name}-web",
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=self._nats_error,
                    disconnected_cb=self._nats_down,
                    reconnected_cb=self._nats_up,
                )
                break
            except Exception as exc:
                log.warning("cannot connect to NATS at %s (%s); retrying", self.settings.nats_url, exc)
                await asyncio.sleep(1)
        js = self.nc.jetstream()
        while True:
            try:
                await provision(js, [contract.stream_spec(self.settings.stream_replicas)], [])
                break
            except Exception as exc:
                log.warning("cannot provision stream %s (%s); retrying", contract.STREAM, exc)
                await asyncio.sleep(1)
        self.publisher = Publisher(js, self.settings.service_name, timeout=self.publish_timeout)
        self._serving(True)
        log.info("connected to NATS; publishing webhooks to %s", contract.STREAM)

    async def _nats_error(self, exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    async def _nats_down(self) -> None:
        self._serving(False)
        log.warning("NATS connection lost; webhooks answer 503 until it is back")

    async def _nats_up(self) -> None:
        self._serving(self.publisher is not None)
        log.info("NATS connection back")

    def _serving(self, serving: bool) -> None:
        """The kit's parley_service_serving gauge, as the gRPC processes set it: 1 while webhooks can be stored."""
        metrics.SERVICE_UP.labels(self.settings.service_name).set(1 if serving else 0)

    @property
    def alive(self) -> bool:
        """The bridge's main task (NATS connection, last-inbound writes) runs, or is being stopped on purpose.

        Liveness: NATS being down does not matter here (that is readiness); a main task that ended on its own
        does, and only a restart brings it back. A dead event loop answers no probe at all."""
        task = self._main_task
        return task is not None and (not task.done() or self._stopping.is_set())

    @property
    def ready(self) -> bool:
        return self.publisher is not None and self.nc is not None and self.nc.is_connected

    # -- calls from the Flask app ------------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """From a request's greenlet: `coro`'s result, awaited on the loop with the caller's trace context; at most
        `timeout` seconds (then NatsUnavailable)."""
        assert self._main_task is not None, "start() the bridge first"
        return wait(_within(timeout, _with_context(otel_context.get_current(), coro)))

    # -- on the loop ------------------------------------------------------------------------------------------------

    async def channel_by_account(self, type_: str, external_id: str) -> ChannelInfo | None:
        """The active channel of type `type_` for the provider account `external_id` (cached)."""
        key = (type_, external_id)
        hit, value = self._cache.get(key)
        if hit:
            return value
        try:
            assert self.repo is not None
            async with self.repo.sessions() as session:
                row = await self.repo.active_channel_for_account(session, type_, external_id)
        except Exception as exc:
            raise LookupUnavailable(f"channel lookup failed: {exc}") from exc
        value = self._info(row)
        self._cache.put(key, value)
        return value

    async def channel_by_id(self, channel_id: str) -> ChannelInfo | None:
        key = ("id", channel_id)
        hit, value = self._cache.get(key)
        if hit:
            return value
        try:
            assert self.repo is not None
            async with self.repo.sessions() as session:
                row = await self.repo.channel(session, channel_id)
        except Exception as exc:
            raise LookupUnavailable(f"channel lookup failed: {exc}") from exc
        value = self._info(row)
        self._cache.put(key, value)
        return value

    def _info(self, row: ChannelRow | None) -> ChannelInfo | None:
        if row is None:
            return None
        secret = ""
        if row.type in _SECRET_KEYS:
            secret = str(self.box.open(row.secrets).get(_SECRET_KEYS[row.type], ""))
        return ChannelInfo(row.id, row.space_id, row.type, row.status == ACTIVE, secret)

    async def publish(self, events: Sequence[tuple[str, InboundEvent]]) -> None:
        """Publish in order, each waiting for its JetStream ack; raise NatsUnavailable on any failure."""
        if not self.ready:
            raise NatsUnavailable("not connected to NATS")
        assert self.publisher is not None
        try:
            for subject, event in events:
                await self.publisher.publish(subject, event, msg_id=event.event_id)
        except Exception as exc:
            raise NatsUnavailable(f"JetStream did not acknowledge: {type(exc).__name__}: {exc}") from exc

    async def resolve_accounts(self, type_: str, keys: Iterable[tuple[str, ...]]) -> list[ChannelInfo | None]:
        """For each item's candidate keys, the first active channel that matches."""
        found: list[ChannelInfo | None] = []
        for candidates in keys:
            match = None
            for key in candidates:
                if key:
                    match = await self.channel_by_account(type_, key)
                    if match is not None:
                        break
            found.append(match)
        return found

    def note_inbound(self, channel_ids: Iterable[str]) -> None:
        """Remember channels that just received events; their last_inbound_at is written every few seconds."""
        self._touched.update(channel_ids)

    async def _flush_touches(self) -> None:
        while True:
            await asyncio.sleep(self._touch_interval)
            await self._flush_once()

    async def _flush_once(self) -> None:
        if not self._touched or self.repo is None:
            return
        ids, self._touched = self._touched, set()
        try:
            await self.repo.touch_inbound(ids)
        except Exception:
            log.warning("cannot record last inbound time of %d channels", len(ids), exc_info=True)


async def _within(timeout: float, coro: Coroutine[Any, Any, T]) -> T:
    """`coro`'s result, or NatsUnavailable after `timeout` seconds (no extra task, unlike asyncio.wait_for)."""
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError:
        raise NatsUnavailable(f"no answer within {timeout}s") from None


async def _with_context(ctx: otel_context.Context, coro: Coroutine[Any, Any, T]) -> T:
    token = otel_context.attach(ctx)
    try:
        return await coro
    finally:
        otel_context.detach(token)
