"""Wiring: build the conversations runtime from settings (the seam tests and the launcher use)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from parley.channel_gateway.v1 import events_pb2 as gw
from parley.conversations.v1 import conversations_service_pb2_grpc as pb_grpc
from parley_kit.contracts import channel_gateway as cg
from parley_kit.contracts import contacts as contacts_contract
from parley_kit.contracts import workspace as workspace_contract
from parley_kit.directory import AssigneeReleases, attach, releases_consumer
from parley_kit.runtime import ServiceRuntime
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from parley_conversations import events, metrics
from parley_conversations.config import Settings
from parley_conversations.grpc_api import SERVICE_NAME, ConversationsApi
from parley_conversations.ingest import ContactsResolver, InboundIngest
from parley_conversations.models import outbox
from parley_conversations.repository import Repository
from parley_conversations.service import ContactFollower, ConversationsService

log = logging.getLogger(__name__)


class Conversations:
    """The pieces of one conversations process, for tests that reach inside."""

    def __init__(self, rt: ServiceRuntime, service: ConversationsService, ingest: InboundIngest | None) -> None:
        self.rt = rt
        self.service = service
        self.ingest = ingest


async def build(settings: Settings, *, contacts: ContactsResolver | None = None) -> ServiceRuntime:
    return (await build_app(settings, contacts=contacts)).rt


async def build_app(settings: Settings, *, contacts: ContactsResolver | None = None) -> Conversations:
    """A connected runtime serving ConversationsService, consuming inbound events, outbound statuses, contact
    events and member removals / team deletions, relaying its outbox, and auto-closing idle conversations."""
    replicas = settings.stream_replicas
    inbound = [
        events.inbound_consumer(p, ack_wait=settings.ingest_ack_wait_seconds, batch_size=settings.ingest_batch_size)
        for p in range(cg.INBOUND_PARTITIONS)
    ]
    rt = ServiceRuntime(
        settings,
        streams=[
            cg.stream_spec(replicas),
            contacts_contract.stream_spec(replicas),
            events.conversations_stream(replicas),
            workspace_contract.stream_spec(replicas),
            events.dead_letters(replicas),
        ],
        consumers=[
            events.outbound_status_consumer(),
            events.contacts_consumer(),
            releases_consumer(events.SERVICE),
            *inbound,
        ],
        outbox=outbox,
    )
    await rt.connect()
    repo = Repository(rt.sessions, events.write_events)
    directory, check = await attach(rt, settings)
    service = ConversationsService(
        repo,
        user_names=directory.display_name if directory else None,
        assignees=check,
        release_batch=settings.assignee_release_batch,
    )
    rt.add_servicer(pb_grpc.add_ConversationsServiceServicer_to_server, ConversationsApi(service), SERVICE_NAME)
    rt.add_consumer(
        events.outbound_status_consumer(),
        events.OutboundStatusHandler(service),
        message_type=gw.OutboundStatusEvent,
        concurrency=8,
    )
    rt.add_consumer(
        events.contacts_consumer(), events.ContactsHandler(ContactFollower(service)), message_type=None, concurrency=4
    )
    rt.add_consumer(
        releases_consumer(events.SERVICE),
        AssigneeReleases(release_member=service.release_member, release_team=service.release_team, directory=directory),
        message_type=None,
    )
    ingest: InboundIngest | None = None
    if settings.ingest_enabled and not settings.contacts_addr and contacts is None:
        log.warning(
            "PARLEY_CONTACTS_ADDR is not set: inbound events are not consumed (they wait in JetStream) "
            "until the service restarts with the contacts service's address"
        )
    elif settings.ingest_enabled:
        assert rt.js is not None
        ingest = InboundIngest(
            js=rt.js,
            engine=ingest_engine(settings.database_url),
            repo=repo,
            service=service,
            contacts=contacts
            or ContactsResolver.connect(
                settings.contacts_addr, settings.service_token, settings.contacts_timeout_seconds
            ),
            service_name=settings.service_name,
            batch_size=settings.ingest_batch_size,
            fetch_timeout=settings.ingest_fetch_timeout_seconds,
            ack_wait=settings.ingest_ack_wait_seconds,
            rebalance_seconds=settings.ingest_rebalance_seconds,
            max_partitions=settings.ingest_max_partitions,
            identity_attempts=settings.ingest_identity_attempts,
            report_every=timedelta(seconds=settings.contacts_report_interval_seconds)
            if settings.contacts_report_interval_seconds
            else None,
        )
        rt.add_background(_run_ingest(rt, ingest))
    rt.add_background(_auto_close_loop(rt, service, settings))
    return Conversations(rt, service, ingest)


def ingest_engine(url: str) -> AsyncEngine:
    """Connections that really close: a partition's advisory lock lives exactly as long as its connection."""
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    return create_async_engine(url, poolclass=NullPool)


async def _run_ingest(rt: ServiceRuntime, ingest: InboundIngest) -> None:
    """Start claiming partitions once the runtime serves; stop (finishing batches) when it is cancelled."""
    await rt.ready.wait()
    try:
        await ingest.start()
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(ingest.stop())
        await ingest.engine.dispose()


async def _auto_close_loop(rt: ServiceRuntime, service: ConversationsService, settings: Settings) -> None:
    await rt.ready.wait()
    while True:
        try:
            while (closed := await service.auto_close_due(settings.auto_close_batch)) >= settings.auto_close_batch:
                metrics.AUTO_CLOSED.inc(closed)
            metrics.AUTO_CLOSED.inc(closed)
        except Exception:
            log.warning("auto-close pass failed; retrying", exc_info=True)
        await asyncio.sleep(settings.auto_close_interval_seconds)


async def serve(settings: Settings) -> None:
    await (await build(settings)).run()
