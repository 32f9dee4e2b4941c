"""Events: every change puts exactly one event per changed thing in the outbox, in the same
transaction; the runtime relays them to stream CONTACTS (real NATS)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import grpc
import nats
import pytest
from parley.contacts.v1 import contact_pb2, events_pb2
from parley.contacts.v1 import contacts_service_pb2 as pb
from parley.contacts.v1 import contacts_service_pb2_grpc as pb_grpc
from parley_contacts import events
from parley_contacts.config import Settings
from parley_contacts.models import outbox
from parley_contacts.repository import Repository
from parley_contacts.server import build
from parley_contacts.service import Actor, ContactsService, IdentityInput, ImportRow
from parley_kit.auth import SigningKey, jwks
from parley_kit.contracts import contacts as contacts_contract
from parley_kit.db import session_factory
from parley_kit.directory import WorkspaceDirectory
from parley_kit.errors import AlreadyExists, InvalidArgument, NotFound
from parley_kit.testing.processes import WorkspaceAdmin, WorkspaceProcess
from parley_kit.testing.service import running
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

ACTOR = Actor(subject="user:m", user_id="m", manage_shared_views=True)


@pytest.fixture(scope="module")
def real(engine: AsyncEngine, directory: WorkspaceDirectory) -> ContactsService:
    repo = Repository(session_factory(engine), events.outbox_sink)
    return ContactsService(repo, assignees=directory.require_assignee)


async def _subjects(engine: AsyncEngine, after: int) -> tuple[list[str], int]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(outbox.c.id, outbox.c.subject).where(outbox.c.id > after))).all()
    return [r.subject for r in rows], max([after, *(r.id for r in rows)])


async def test_each_change_puts_exactly_one_event_per_changed_thing_in_the_outbox(
    real: ContactsService, engine: AsyncEngine, space: str, admin: WorkspaceAdmin
) -> None:
    juan = await admin.member(space)
    _, mark = await _subjects(engine, 0)

    async def expect(subjects: list[str]) -> None:
        nonlocal mark
        got, mark = await _subjects(engine, mark)
        assert got == subjects

    await real.create_field(space, "score", "Score", "number")
    tag = await real.create_tag(space, "vip")
    await expect([])  # a new field (its values will say so), a tag: no event
    a = await real.create_contact(space, ACTOR, {"first_name": "Ana"})
    await expect(["contacts.contact.created"])
    await real.update_contact(space, ACTOR, str(a.id), {"first_name": "Anita", "last_name": "L"}, {"score": "3"})
    await expect(["contacts.contact.updated", "contacts.field.updated"])
    await real.update_contact(space, ACTOR, str(a.id), {"first_name": "Anita"}, {"score": "3"})
    await expect([])  # nothing changed
    await real.change_tags(space, ACTOR, [str(a.id)], [str(tag.id)], [])
    await real.change_tags(space, ACTOR, [str(a.id)], [str(tag.id)], [])
    await expect(["contacts.tag.added"])
    await real.change_tags(space, ACTOR, [str(a.id)], [], [str(tag.id)])
    await expect(["contacts.tag.removed"])
    await real.assign(space, ACTOR, [str(a.id)], juan, "")
    await expect(["contacts.contact.assigned"])
    b, _ = await real.upsert_by_identity(space, ACTOR, IdentityInput("ch", 1, "x"), {"first_name": "B"}, None)
    await real.upsert_by_identity(space, ACTOR, IdentityInput("ch", 1, "x"), {"first_name": "B"}, None)
    await expect(["contacts.contact.created"])
    await real.merge(space, ACTOR, str(a.id), str(b))
    await expect(["contacts.contact.merged"])
    rows = [
        ImportRow({"first_name": "Imp", "email": "imp@x.com"}, {"score": "1"}, ("vip", "fresh")),
        ImportRow({"email": "bad"}, {}, ("other",)),
    ]
    (imported, _) = await real.import_contacts(space, ACTOR, rows)
    await expect(["contacts.contact.created"])  # its tags and values come with it; a refused row: nothing
    imp = str(imported.contact_id)
    again = ImportRow({"email": "imp@x.com", "last_name": "I"}, {"score": "2"}, ("VIP", "csv"))
    await real.import_contacts(space, ACTOR, [again], dedupe_by="email")
    await expect(["contacts.contact.updated", "contacts.field.updated", "contacts.tag.added"])  # csv only
    await real.add_identity(space, ACTOR, imp, IdentityInput("ch", 1, "y"))
    await real.add_identity(space, ACTOR, imp, IdentityInput("ch", 1, "y"))
    await expect(["contacts.contact.updated"])
    await real.change_tags(space, ACTOR, [str(a.id)], [str(tag.id)], [])
    await expect(["contacts.tag.added"])
    await real.delete_tag(space, ACTOR, str(tag.id))
    await expect([])  # the tag leaves the catalog; its contacts are untagged afterwards
    await real.finish_tag_deletions()
    await expect(["contacts.tag.removed", "contacts.tag.removed"])  # one per contact that carried it
    plan = await real.create_field(space, "plan", "Plan", "list", options=["free", "pro"])
    await real.update_contact(space, ACTOR, str(a.id), {}, {"plan": "pro"})
    await real.update_contact(space, ACTOR, imp, {}, {"plan": "free"})
    await expect(["contacts.field.updated", "contacts.field.updated"])
    await real.update_field(space, ACTOR, str(plan.id), options=["free"])
    await expect(["contacts.field.updated"])  # one per value the removed option takes away
    await real.update_field(space, ACTOR, str(plan.id), label="Tier")
    await expect([])  # copies are keyed by id or key, not label
    await real.update_field(space, ACTOR, str(plan.id), key="tier")
    await expect(["contacts.field.renamed"])
    await real.delete_field(space, ACTOR, str(plan.id))
    await expect(["contacts.field.updated", "contacts.field.deleted"])  # one per value it takes away, then itself
    with pytest.raises(InvalidArgument):
        await real.update_contact(space, ACTOR, str(a.id), {"email": "bad"})
    await expect([])  # a refused change leaves no event
    await real.delete_contact(space, ACTOR, str(a.id))
    await expect(["contacts.contact.deleted"])


async def _payloads(engine: AsyncEngine, subject: str) -> list[bytes]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(outbox.c.payload).where(outbox.c.subject == subject).order_by(outbox.c.id))
        return [r.payload for r in rows]


async def test_a_fields_rename_and_deletion_name_its_id_and_keys(
    real: ContactsService, engine: AsyncEngine, space: str
) -> None:
    field = await real.create_field(space, "plan", "Plan", "text")
    await real.update_field(space, ACTOR, str(field.id), key="tier")
    await real.update_field(space, ACTOR, str(field.id), key="level")
    await real.delete_field(space, ACTOR, str(field.id))
    renamed = [events_pb2.FieldRenamed.FromString(p) for p in await _payloads(engine, "contacts.field.renamed")]
    assert [(e.field_id, e.old_key, e.new_key) for e in renamed if e.meta.space_id == space] == [
        (str(field.id), "plan", "tier"),
        (str(field.id), "tier", "level"),
    ]
    ours = [e for e in renamed if e.meta.space_id == space]
    assert ours[0].meta.occurred_at.ToDatetime() < ours[1].meta.occurred_at.ToDatetime()
    assert ours[0].meta.actor == "user:m" and ours[0].meta.event_id
    deleted = [events_pb2.FieldDeleted.FromString(p) for p in await _payloads(engine, "contacts.field.deleted")]
    assert [(e.field_id, e.key) for e in deleted if e.meta.space_id == space] == [(str(field.id), "level")]


async def test_a_rename_refused_leaves_no_event(real: ContactsService, engine: AsyncEngine, space: str) -> None:
    await real.create_field(space, "taken", "Taken", "text")
    field = await real.create_field(space, "plan", "Plan", "text")
    _, mark = await _subjects(engine, 0)
    with pytest.raises(AlreadyExists):
        await real.update_field(space, ACTOR, str(field.id), key="taken")
    with pytest.raises(InvalidArgument):
        await real.update_field(space, ACTOR, str(field.id), key="tier", options=["a"])  # not a list
    assert (await _subjects(engine, mark))[0] == []


async def test_a_rolled_back_change_leaves_no_event(real: ContactsService, engine: AsyncEngine, space: str) -> None:
    c = await real.create_contact(space, ACTOR, {"first_name": "Ana"})
    vip = await real.create_tag(space, "vip")
    _, mark = await _subjects(engine, 0)
    unknown = "7d7f2c3e-0000-4000-8000-000000000000"
    with pytest.raises(NotFound):  # the unknown tag aborts the whole call
        await real.change_tags(space, ACTOR, [str(c.id)], [str(vip.id)], [unknown])
    assert (await _subjects(engine, mark))[0] == []
    got, _ = await real.get_contact(space, str(c.id))
    assert got.tag_ids == ()


async def test_service_relays_events_to_the_contacts_stream(
    database_url: str,
    engine: AsyncEngine,
    nats_url: str,
    signing_key: SigningKey,
    mint_token: Callable[..., str],
    workspace_service: WorkspaceProcess,
) -> None:
    settings = Settings(
        database_url=database_url, nats_url=nats_url, grpc_port=0, metrics_port=0,
        auth_jwks=json.dumps(jwks(signing_key)), workspace_addr=workspace_service.target,
        service_token=mint_token(space_id="*", role="system", subject="service:contacts"),
    )  # fmt: skip
    runtime = await build(settings)
    async with running(runtime) as target:
        token = mint_token(space_id="sp_relay", role="manager", subject="user:m")
        meta = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.ContactsServiceStub(channel)
            profile = contact_pb2.ContactProfile(first_name="Relay")
            made = await stub.CreateContact(pb.CreateContactRequest(profile=profile), metadata=meta)
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe("contacts.contact.created", ordered_consumer=True)
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                msg = await sub.next_msg(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
                event = events_pb2.ContactCreated.FromString(msg.data)
                if event.contact.id == made.contact.id:
                    break
            assert event.meta.space_id == "sp_relay" and event.meta.actor == "user:m"
            assert event.contact.first_name == "Relay"
            assert msg.headers and msg.headers.get("Nats-Msg-Id") == event.meta.event_id
        finally:
            await nc.close()


def test_every_subject_published_is_named_in_the_shared_contract() -> None:
    """Consumers subscribe by the kit's names (parley_kit.contracts.contacts): none missing, none stale."""
    named = {v for k, v in vars(contacts_contract).items() if k.isupper() and str(v).startswith("contacts.")}
    assert {events.SUBJECT_PREFIX + kind for kind in events.SUBJECTS} == named
