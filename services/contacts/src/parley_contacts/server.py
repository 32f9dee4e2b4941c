"""Wiring: the runtime (gRPC, NATS, outbox relay) around the contacts service."""

from __future__ import annotations

import asyncio

from parley_kit import db
from parley_kit.db import run_migrations
from parley_kit.runtime import ServiceRuntime
from sqlalchemy.ext.asyncio import AsyncEngine

from parley_contacts import events
from parley_contacts.config import Settings
from parley_contacts.grpc_api import SERVICE_NAME, ContactsApi, register
from parley_contacts.models import outbox
from parley_contacts.repository import Repository
from parley_contacts.service import ContactsService


async def build(settings: Settings) -> ServiceRuntime:
    """A connected runtime serving ContactsService and relaying its outbox to stream CONTACTS."""
    rt = ServiceRuntime(settings, streams=[events.stream(settings.stream_replicas)], outbox=outbox)
    await rt.connect()
    # The service's own pool without pre-ping: UpsertByIdentity's fast path is one round trip, and
    # asyncpg's pre-ping would add three to every checkout. A dropped connection fails one request.
    engine = db.create_engine(
        settings.database_url, pool_size=settings.contacts_pool_size, pre_ping=False, pool_recycle=300
    )
    rt.add_background(_dispose_on_cancel(engine))
    service = ContactsService(
        Repository(db.session_factory(engine), events.outbox_sink), count_limit=settings.contacts_count_limit or None
    )
    rt.add_servicer(register, ContactsApi(service), SERVICE_NAME)
    # Untags the contacts of deleted tags in chunks, including deletions a restart interrupted.
    rt.add_background(
        service.run_tag_deletions(settings.contacts_tag_deletion_interval_seconds, settings.contacts_tag_deletion_chunk)
    )
    return rt


async def _dispose_on_cancel(engine: AsyncEngine) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await engine.dispose()


async def serve(settings: Settings) -> None:
    if settings.contacts_migrate_on_start:
        await run_migrations("parley_contacts", settings.database_url)
    await (await build(settings)).run()
