"""The life of one service process, the same for every service.

Start: logging, tracing, /metrics, database engine, NATS connection, stream and consumer
provisioning, gRPC server (NOT_SERVING). Once the database answers and NATS is connected,
consumers and the outbox relay start and health (readiness: "" and the service names) turns
SERVING; a lost NATS connection turns it NOT_SERVING until reconnected. The health name
"liveness" stays SERVING while the event loop answers: restarting does not bring NATS back.

Stop (SIGTERM or SIGINT): readiness NOT_SERVING, stop fetching new messages and let in-flight
handlers finish and ack, let the relay finish its batch, `server.stop(grace)` so in-flight
RPCs complete, close what the service handed to `add_closer` (its clients, its own engines),
drain NATS, dispose the engine.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from parley_kit import db, metrics, telemetry
from parley_kit.auth import TokenVerifier
from parley_kit.authenticators import WorkspaceAuthenticator
from parley_kit.grpc_server import Authenticator, GrpcServer, JwtAuthenticator
from parley_kit.logs import configure_logging
from parley_kit.nats.consumer import ConsumerRunner
from parley_kit.nats.publisher import Publisher
from parley_kit.nats.streams import ConsumerSpec, StreamSpec, dead_letter_stream, provision
from parley_kit.outbox import OutboxRelay
from parley_kit.settings import ServiceSettings, load_settings

log = logging.getLogger(__name__)


def verifier_from_settings(settings: ServiceSettings) -> TokenVerifier:
    """The token verifier for the configured JWKS (inline or file)."""
    if settings.auth_jwks_file is not None:
        return TokenVerifier.from_file(settings.auth_jwks_file)
    if settings.auth_jwks:
        return TokenVerifier.from_jwks(settings.auth_jwks)
    raise SystemExit("invalid configuration: set PARLEY_AUTH_JWKS or PARLEY_AUTH_JWKS_FILE (token verification keys)")


def authenticator_from_settings(settings: ServiceSettings) -> Authenticator:
    """JWTs with the configured keys; with PARLEY_WORKSPACE_ADDR set, API keys too (verified by the workspace)."""
    verifier = verifier_from_settings(settings)
    if settings.workspace_addr:
        return WorkspaceAuthenticator(verifier, settings.workspace_addr, settings.service_token)
    return JwtAuthenticator(verifier)


class ServiceRuntime:
    """Owns the engine, the NATS connection, the gRPC server, consumers and the outbox relay."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        streams: Sequence[StreamSpec] = (),
        consumers: Sequence[ConsumerSpec] = (),
        public_methods: Iterable[str] = (),
        authenticator: Authenticator | None = None,
        outbox: Table | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.service_name
        self._streams = streams
        self._consumer_specs = consumers
        self._outbox_table = outbox
        self._authenticator = authenticator or authenticator_from_settings(settings)
        self.grpc = GrpcServer(self.name, authenticator=self._authenticator, public_methods=public_methods)
        self.engine: AsyncEngine = db.create_engine(settings.database_url)
        self.sessions: async_sessionmaker[AsyncSession] = db.session_factory(self.engine)
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.publisher: Publisher | None = None
        self._runners: list[ConsumerRunner] = []
        self._pending_consumers: list[tuple[ConsumerSpec, Callable[..., Awaitable[Any]], dict[str, Any]]] = []
        self._relay: OutboxRelay | None = None
        self._background: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Awaitable[object]]] = []
        self._stop = asyncio.Event()
        self._ready = False
        self.ready = asyncio.Event()

    # -- wiring -----------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to NATS (retrying until it answers) and provision streams and consumers."""
        configure_logging(self.name, self.settings.log_level)
        telemetry.configure_tracing(self.name)
        metrics.start_metrics_server(self.settings.metrics_port)
        self.nc = await nats.connect(
            self.settings.nats_url,
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            disconnected_cb=self._on_nats_down,
            reconnected_cb=self._on_nats_up,
        )
        self.js = self.nc.jetstream()
        streams = list(self._streams)
        if self._consumer_specs:
            streams.append(dead_letter_stream(self.name, replicas=self.settings.stream_replicas))
        await provision(self.js, streams, self._consumer_specs)
        self.publisher = Publisher(self.js, self.name)

    def add_servicer(self, register: Callable[[Any, Any], None], servicer: Any, full_name: str) -> None:
        self.grpc.add(register, servicer, full_name)

    def add_consumer(self, spec: ConsumerSpec, handler: Callable[..., Awaitable[Any]], **options: Any) -> None:
        """Run `handler` for `spec`'s messages once the process is ready (options go to ConsumerRunner)."""
        self._pending_consumers.append((spec, handler, options))

    def add_background(self, coro: Awaitable[None]) -> None:
        """A long-running task (e.g. a timer loop) cancelled at shutdown."""
        self._background.append(asyncio.ensure_future(coro))

    def add_closer(self, close: Callable[[], Awaitable[object]]) -> None:
        """Awaited at shutdown (in the order added) once consumers, background tasks and in-flight RPCs are
        done, before NATS is drained: e.g. a client's `close` or an engine's `dispose`."""
        self._closers.append(close)

    # -- life -------------------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Serve until SIGTERM/SIGINT (or request_stop()), then shut down gracefully."""
        assert self.js is not None and self.publisher is not None, "call connect() first"
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        port = await self.grpc.start(self.settings.grpc_host, self.settings.grpc_port)
        await db.ping(self.engine)
        for spec, handler, options in self._pending_consumers:
            runner = ConsumerRunner(self.js, spec, handler, service=self.name, **options)
            await runner.start()
            self._runners.append(runner)
        if self._outbox_table is not None:
            self._relay = OutboxRelay(self.sessions, self._outbox_table, self.publisher, self.name)
            await self._relay.start()
        self._ready = True
        await self.grpc.set_serving(self.nc is not None and self.nc.is_connected)
        self.ready.set()
        log.info("serving", extra={"grpc_port": port, "metrics_port": self.settings.metrics_port})
        await self._stop.wait()
        await self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        log.info("shutting down")
        self._ready = False
        await self.grpc.set_serving(False)
        for runner in self._runners:
            await runner.stop(self.settings.shutdown_grace_seconds)
        if self._relay is not None:
            await self._relay.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.grpc.stop(self.settings.shutdown_grace_seconds)
        for close in self._closers:
            try:
                await close()
            except Exception:
                log.warning("closing %r failed", close, exc_info=True)
        if isinstance(self._authenticator, WorkspaceAuthenticator):
            await self._authenticator.close()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception as exc:  # NATS already gone (e.g. Ctrl-C on `make run` stops it too): just close
                log.warning("NATS drain failed (%s); closing the connection", type(exc).__name__)
                await self.nc.close()
        await self.engine.dispose()
        log.info("stopped")

    async def _on_nats_down(self) -> None:
        if self._ready:
            log.warning("NATS connection lost; NOT_SERVING until it is back")
            await self.grpc.set_serving(False)

    async def _on_nats_up(self) -> None:
        if self._ready:
            log.info("NATS connection back; SERVING")
            await self.grpc.set_serving(True)


def service_main(
    package: str,
    settings_cls: type[ServiceSettings],
    serve: Callable[[Any], Awaitable[None]],
    argv: Sequence[str] | None = None,
) -> None:
    """`python -m parley_<service> serve|migrate`: the entry point every service shares."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "serve"
    settings = load_settings(settings_cls)
    if command == "migrate":
        configure_logging(settings.service_name, settings.log_level)
        asyncio.run(db.run_migrations(package, settings.database_url))
    elif command == "serve":
        asyncio.run(serve(settings))
    else:
        raise SystemExit(f"usage: python -m {package} serve|migrate (got {command!r})")
