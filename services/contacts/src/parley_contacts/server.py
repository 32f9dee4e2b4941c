"""Wiring: the runtime (gRPC, NATS, outbox relay) around the contacts service."""

from __future__ import annotations

from parley_kit.db import run_migrations
from parley_kit.runtime import ServiceRuntime

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
    service = ContactsService(
        Repository(rt.sessions, events.outbox_sink), count_limit=settings.contacts_count_limit or None
    )
    rt.add_servicer(register, ContactsApi(service), SERVICE_NAME)
    return rt


async def serve(settings: Settings) -> None:
    if settings.contacts_migrate_on_start:
        await run_migrations("parley_contacts", settings.database_url)
    await (await build(settings)).run()
