"""Wiring: the runtime (gRPC, NATS, outbox relay, the WORKSPACE consumer) around the contacts service."""

from __future__ import annotations

from parley_kit import db
from parley_kit.contracts import workspace as workspace_contract
from parley_kit.db import run_migrations
from parley_kit.directory import AssigneeReleases, attach, releases_consumer
from parley_kit.runtime import ServiceRuntime

from parley_contacts import events
from parley_contacts.config import Settings
from parley_contacts.grpc_api import SERVICE_NAME, ContactsApi, register
from parley_contacts.models import outbox
from parley_contacts.repository import Repository
from parley_contacts.service import ContactsService


async def build(settings: Settings) -> ServiceRuntime:
    """A connected runtime serving ContactsService, relaying its outbox to stream CONTACTS, and releasing
    the contacts of members who leave a space and of deleted teams."""
    replicas = settings.stream_replicas
    rt = ServiceRuntime(
        settings,
        streams=[events.stream(replicas), workspace_contract.stream_spec(replicas)],
        consumers=[releases_consumer(events.SERVICE)],
        outbox=outbox,
    )
    await rt.connect()
    directory, check = await attach(rt, settings)
    # The service's own pool without pre-ping: UpsertByIdentity's fast path is one round trip, and
    # asyncpg's pre-ping would add three to every checkout. A dropped connection fails one request.
    engine = db.create_engine(
        settings.database_url, pool_size=settings.contacts_pool_size, pre_ping=False, pool_recycle=300
    )
    rt.add_closer(engine.dispose)
    service = ContactsService(
        Repository(db.session_factory(engine), events.outbox_sink),
        count_limit=settings.contacts_count_limit or None,
        assignees=check,
        release_batch=settings.assignee_release_batch,
    )
    rt.add_servicer(register, ContactsApi(service), SERVICE_NAME)
    rt.add_consumer(
        releases_consumer(events.SERVICE),
        AssigneeReleases(release_member=service.release_member, release_team=service.release_team, directory=directory),
        message_type=None,
    )
    # Untags the contacts of deleted tags in chunks, including deletions a restart interrupted.
    rt.add_background(
        service.run_tag_deletions(settings.contacts_tag_deletion_interval_seconds, settings.contacts_tag_deletion_chunk)
    )
    return rt


async def serve(settings: Settings) -> None:
    if settings.contacts_migrate_on_start:
        await run_migrations("parley_contacts", settings.database_url)
    await (await build(settings)).run()
