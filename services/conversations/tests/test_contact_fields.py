"""Custom field values for shortcuts follow their field: copied by field id, rendered by the field's current
key, through renames and deletions (contacts.field.renamed / deleted), whatever order events arrive in and
however often."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message as PbMessage
from opentelemetry.context import Context
from parley.common.v1 import common_pb2 as common
from parley.contacts.v1 import contact_pb2 as cmsg
from parley.contacts.v1 import contacts_service_pb2 as cpb
from parley.contacts.v1 import events_pb2 as cev
from parley.contacts.v1 import fields_pb2 as fpb
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley_conversations.domain import KnownField, values_by_key
from parley_conversations.events import ContactsHandler
from parley_conversations.models import Contact
from parley_conversations.service import ContactFollower
from parley_kit.contracts import contacts as contacts_contract
from parley_kit.nats import Delivery, PoisonMessage

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def space() -> str:
    return f"sp-{uuid.uuid4().hex[:8]}"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _meta(sp: str, when: datetime) -> common.EventMeta:
    meta = common.EventMeta(event_id=uuid.uuid4().hex, space_id=sp, actor="user:boss")
    meta.occurred_at.FromDatetime(when)
    return meta


def _delivery(subject: str, event: PbMessage) -> Delivery:
    return Delivery(
        message=None,
        data=event.SerializeToString(),
        headers={},
        subject=subject,
        event_type=event.DESCRIPTOR.full_name,
        msg_id=uuid.uuid4().hex,
        num_delivered=1,
        stream_sequence=0,
        trace_context=Context(),
    )


class Contacts:
    """The contacts service's field events for one contact of one space, delivered straight to the handler."""

    def __init__(self, handler: ContactsHandler, sp: str, contact_id: str) -> None:
        self.handler, self.sp, self.contact_id = handler, sp, contact_id

    async def value(self, field_id: str, key: str, value: str, when: datetime) -> None:
        event = cev.ContactFieldUpdated(
            meta=_meta(self.sp, when), contact_id=self.contact_id, field_id=field_id, field_key=key, new_value=value
        )
        await self.handler(_delivery(contacts_contract.FIELD_UPDATED, event))

    async def renamed(self, field_id: str, old: str, new: str, when: datetime) -> None:
        event = cev.FieldRenamed(meta=_meta(self.sp, when), field_id=field_id, old_key=old, new_key=new)
        await self.handler(_delivery(contacts_contract.FIELD_RENAMED, event))

    async def deleted(self, field_id: str, key: str, when: datetime) -> None:
        event = cev.FieldDeleted(meta=_meta(self.sp, when), field_id=field_id, key=key)
        await self.handler(_delivery(contacts_contract.FIELD_DELETED, event))


async def _open(app, stub, helpers, sp: str, contact: str = "psid-1"):
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, f"ch-{sp}", contact, f"{sp}-{contact}-1")])

    async def found():
        return list((await stub.ListConversations(pb.ListConversationsRequest())).conversations) or None

    return (await helpers.wait_for(found))[0]


@pytest.fixture
async def follow(service, stub_for, helpers):
    """(contacts' events for a new contact with an open conversation, render(template), its copy)."""
    app, _ = service
    sp = space()
    manager = stub_for(sp, role="manager")
    conv = await _open(app, manager, helpers, sp)
    source = Contacts(ContactsHandler(ContactFollower(app.service)), sp, conv.contact_id)

    async def render(template: str) -> str:
        name = f"s{uuid.uuid4().hex[:12]}"
        await manager.CreateShortcut(pb.CreateShortcutRequest(name=name, text=template))
        request = pb.RenderShortcutRequest(shortcut_name=name, conversation_id=conv.conversation_id)
        return (await manager.RenderShortcut(request)).text

    async def copy() -> Contact:
        async with app.service.repo.transaction() as tx:
            found = await tx.contact(conv.contact_id)
        assert found is not None
        return found

    return source, render, copy


async def test_a_rename_repeated_or_late_leaves_the_value_under_the_latest_key(follow) -> None:
    contacts, render, _ = follow
    plan = str(uuid.uuid4())
    await contacts.value(plan, "plan", "gold", at(1))
    await contacts.renamed(plan, "plan", "tier", at(2))
    await contacts.renamed(plan, "tier", "level", at(3))
    await contacts.renamed(plan, "tier", "level", at(3))  # redelivered
    await contacts.renamed(plan, "plan", "tier", at(2))  # redelivered after the later one
    # Written while the rename committed: the old key, a later time.
    await contacts.value(plan, "plan", "platinum", at(4))
    assert await render("{{contact.fields.level}}") == "platinum"
    assert await render("{{contact.fields.plan|-}} {{contact.fields.tier|-}}") == "- -"


async def test_renames_and_a_value_arriving_in_reverse_order_end_as_they_were_made(follow) -> None:
    contacts, render, _ = follow
    field = str(uuid.uuid4())
    await contacts.renamed(field, "b", "c", at(3))
    await contacts.renamed(field, "a", "b", at(2))
    await contacts.value(field, "a", "v", at(1))
    await contacts.value(field, "a", "", at(0))  # older than the value: ignored
    assert await render("{{contact.fields.c}} {{contact.fields.a|-}} {{contact.fields.b|-}}") == "v - -"


async def test_a_deleted_field_keeps_no_copy_and_its_key_goes_to_the_next_field(follow) -> None:
    contacts, render, copy = follow
    score, other = str(uuid.uuid4()), str(uuid.uuid4())
    await contacts.value(score, "score", "7", at(1))
    await contacts.value(other, "other", "x", at(1))
    await contacts.deleted(score, "score", at(3))
    await contacts.value(score, "score", "", at(2))  # the deletion's own removal, after it
    await contacts.value(score, "score", "8", at(2))  # a late write of the deleted field
    await contacts.renamed(score, "score", "points", at(4))  # cannot bring it back either
    got = await copy()
    assert score not in got.fields and score not in got.fields_at and got.fields[other] == "x"
    assert await render("{{contact.fields.score|none}} {{contact.fields.points|none}}") == "none none"
    successor = str(uuid.uuid4())
    await contacts.value(successor, "score", "9", at(5))
    await contacts.deleted(score, "score", at(3))  # redelivered
    assert await render("{{contact.fields.score}}") == "9"


def test_of_fields_claiming_one_key_one_known_by_id_then_the_latest_renamed_wins() -> None:
    """Two fields claim a key while a rename of one is not applied yet (or a legacy copy is not adopted)."""
    values = {"key:plan": "legacy", "f1": "one", "f2": "two", "f3": "three"}
    known = [
        KnownField("key:plan", "plan", None),
        KnownField("f1", "plan", None),
        KnownField("f2", "tier", at(1)),
        KnownField("f3", "tier", at(2)),
        KnownField("f4", "none", None),
    ]
    assert values_by_key(values, known) == {"plan": "one", "tier": "three"}
    assert values_by_key(values, list(reversed(known))) == {"plan": "one", "tier": "three"}


async def test_field_events_without_a_field_id_or_key_are_dead_lettered(follow) -> None:
    contacts, _, _ = follow
    with pytest.raises(PoisonMessage, match="field id"):
        await contacts.renamed("", "a", "b", at(1))
    with pytest.raises(PoisonMessage, match="field key"):
        await contacts.value(str(uuid.uuid4()), "k" * 65, "v", at(1))
    with pytest.raises(PoisonMessage, match="field id"):
        await contacts.deleted("key:plan", "plan", at(1))  # the legacy namespace is not an id


async def test_shortcuts_follow_a_rename_and_a_deletion_in_the_contacts_service(
    service, stub_for, helpers, contacts_stub
) -> None:
    app, _ = service
    sp = space()
    manager = stub_for(sp, role="manager")
    contacts = contacts_stub(sp)
    conv = await _open(app, manager, helpers, sp)
    made = await contacts.CreateField(cpb.CreateFieldRequest(key="plan", label="Plan", type=fpb.FIELD_TYPE_TEXT))
    await contacts.UpdateContact(
        cpb.UpdateContactRequest(
            contact_id=conv.contact_id, profile=cmsg.ContactProfile(), field_values={"plan": "gold"}
        )
    )
    await manager.CreateShortcut(pb.CreateShortcutRequest(name="old", text="{{contact.fields.plan|none}}"))
    await manager.CreateShortcut(pb.CreateShortcutRequest(name="new", text="{{contact.fields.tier|none}}"))

    async def renders(name: str, text: str):
        async def check():
            try:
                request = pb.RenderShortcutRequest(shortcut_name=name, conversation_id=conv.conversation_id)
                return (await manager.RenderShortcut(request)).text == text
            except grpc.aio.AioRpcError:
                return False

        await helpers.wait_for(check)

    await renders("old", "gold")
    await contacts.UpdateField(
        cpb.UpdateFieldRequest(field_id=made.field.id, key="tier", update_mask=FieldMask(paths=["key"]))
    )
    await renders("new", "gold")
    await renders("old", "none")
    await contacts.DeleteField(cpb.DeleteFieldRequest(field_id=made.field.id))
    await renders("new", "none")
    # The key is free again: a new field taking it starts without the old one's values.
    await contacts.CreateField(cpb.CreateFieldRequest(key="tier", label="Tier", type=fpb.FIELD_TYPE_TEXT))
    await contacts.UpdateContact(
        cpb.UpdateContactRequest(contact_id=conv.contact_id, profile=cmsg.ContactProfile(), field_values={"tier": "b"})
    )
    await renders("new", "b")


@pytest.fixture(autouse=True)
def _uses_real_contacts(contacts_service) -> None:
    """The last test talks to the real contacts service."""
