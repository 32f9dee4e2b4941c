"""Subjects, streams and consumers of the conversations service, the outbox writer for its domain
events, and the handler of the gateway's outbound statuses.

Publishes (stream CONVERSATIONS, through the outbox):
  conversations.conversation.opened|assigned|closed|reopened
  conversations.message.received|sent|status_changed|updated
  channel_gateway.outbound.requested (stream CHANNEL_GATEWAY): OutboundSendRequest, request_id = message id
Consumes:
  channel_gateway.inbound.<NN> (durables conversations--inbound-<NN>, see ingest.py)
  channel_gateway.outbound.status (durable conversations--outbound-status)
  contacts.contact.>, contacts.field.updated|renamed|deleted (durable conversations--contacts)
  workspace.member.removed, workspace.team.deleted (durable conversations--assignee-releases): the
    member's or team's open conversations are released (`parley_kit.directory`)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.json_format import ParseDict
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage
from parley.channel_gateway.v1 import events_pb2 as gw
from parley.common.v1 import common_pb2 as common
from parley.contacts.v1 import events_pb2 as cev
from parley.conversations.v1 import events_pb2 as ev
from parley_kit.contracts import channel_gateway as cg
from parley_kit.contracts import contacts as contacts_contract
from parley_kit.nats import (
    ConsumerSpec,
    Delivery,
    PoisonMessage,
    StreamSpec,
    dead_letter_stream,
    dead_letter_subject,
    max_deliver_outlasting,
)
from parley_kit.outbox import enqueue_many
from sqlalchemy.ext.asyncio import AsyncSession

from parley_conversations import mapping, metrics
from parley_conversations.domain import (
    LEGACY_FIELD,
    Actor,
    ContactChange,
    ConversationAssigned,
    ConversationClosed,
    ConversationOpened,
    ConversationReopened,
    DomainEvent,
    FieldValue,
    MessageReceived,
    MessageSent,
    MessageStatusChanged,
    MessageUpdated,
    OutboundSend,
    StatusUpdate,
)
from parley_conversations.service import ContactFollower, ConversationsService

log = logging.getLogger(__name__)

SERVICE = "conversations"
STREAM = "CONVERSATIONS"
CONVERSATION_OPENED = "conversations.conversation.opened"
CONVERSATION_ASSIGNED = "conversations.conversation.assigned"
CONVERSATION_CLOSED = "conversations.conversation.closed"
CONVERSATION_REOPENED = "conversations.conversation.reopened"
MESSAGE_RECEIVED = "conversations.message.received"
MESSAGE_SENT = "conversations.message.sent"
MESSAGE_STATUS_CHANGED = "conversations.message.status_changed"
MESSAGE_UPDATED = "conversations.message.updated"

OUTBOUND_STATUS_DURABLE = "conversations--outbound-status"
CONTACTS_DURABLE = "conversations--contacts"
INBOUND_DURABLE_PREFIX = "conversations--inbound"


def conversations_stream(replicas: int = 1) -> StreamSpec:
    return StreamSpec(name=STREAM, subjects=("conversations.>",), max_age=timedelta(days=7), replicas=replicas)


def dead_letters(replicas: int = 1) -> StreamSpec:
    return dead_letter_stream(SERVICE, replicas=replicas)


def inbound_durable(partition: int) -> str:
    return f"{INBOUND_DURABLE_PREFIX}-{partition:02d}"


INBOUND_BACKOFF = (timedelta(seconds=1), timedelta(seconds=5), timedelta(seconds=30))
# The runner must never dead-letter an inbound event for its delivery count: the events of a partition wait
# (failing) behind an earlier one, and all of them through a contacts outage, through no fault of their own,
# and the ingest reads a dead-lettered event back from the stream anyway. The ingest sets aside the events
# that do fail on their own (ingest.py); this bound outlasts the stream's retention at the longest backoff.
INBOUND_MAX_DELIVER = max_deliver_outlasting(cg.MAX_AGE, INBOUND_BACKOFF)


def inbound_consumer(partition: int, *, ack_wait: float = 30.0, batch_size: int = 200) -> ConsumerSpec:
    """One durable per inbound partition subject; only the replica owning the partition fetches from it."""
    max_ack_pending = max(batch_size * 2, 100)
    durable = inbound_durable(partition)
    return ConsumerSpec(
        stream=cg.STREAM,
        durable=durable,
        filter_subjects=(cg.inbound_partition_subject(partition),),
        ack_wait=timedelta(seconds=ack_wait),
        max_deliver=INBOUND_MAX_DELIVER,
        backoff=INBOUND_BACKOFF,
        max_ack_pending=max_ack_pending,
        dead_letter_subject=dead_letter_subject(SERVICE, durable),
    )


def outbound_status_consumer() -> ConsumerSpec:
    return ConsumerSpec(
        stream=cg.STREAM,
        durable=OUTBOUND_STATUS_DURABLE,
        filter_subjects=(cg.OUTBOUND_STATUS,),
        ack_wait=timedelta(seconds=30),
        max_deliver=10,
        backoff=(timedelta(seconds=1), timedelta(seconds=5), timedelta(seconds=30)),
        max_ack_pending=500,
        dead_letter_subject=dead_letter_subject(SERVICE, OUTBOUND_STATUS_DURABLE),
    )


def contacts_consumer() -> ConsumerSpec:
    """The contacts service's contact, custom-value and field events (tags are not needed here)."""
    return ConsumerSpec(
        stream=contacts_contract.STREAM,
        durable=CONTACTS_DURABLE,
        filter_subjects=(
            "contacts.contact.>",
            contacts_contract.FIELD_UPDATED,
            contacts_contract.FIELD_RENAMED,
            contacts_contract.FIELD_DELETED,
        ),
        ack_wait=timedelta(seconds=30),
        max_deliver=10,
        backoff=(timedelta(seconds=1), timedelta(seconds=5), timedelta(seconds=30)),
        max_ack_pending=100,
        dead_letter_subject=dead_letter_subject(SERVICE, CONTACTS_DURABLE),
    )


# -- domain events -> outbox -------------------------------------------------------------------


def _meta(actor: Actor, space_id: str, now: datetime) -> common.EventMeta:
    return common.EventMeta(
        event_id=str(uuid.uuid4()), occurred_at=mapping.ts(now), space_id=space_id, actor=actor.subject
    )


def to_outbox(event: DomainEvent, now: datetime) -> tuple[str, PbMessage, str]:
    """(subject, message, msg_id) of one domain event."""
    if isinstance(event, OutboundSend):
        msg = event.message
        request = gw.OutboundSendRequest(
            request_id=msg.id,
            space_id=msg.space_id,
            channel_id=msg.channel_id,
            contact_external_id=event.contact_external_id,
            text=msg.text,
            attachments=[ParseDict(a, gw.OutboundAttachment()) for a in msg.attachments or []],
            quick_replies=[ParseDict(q, gw.OutboundQuickReply()) for q in msg.quick_replies or []],
            template=ParseDict(msg.template, gw.OutboundTemplate()) if msg.template else None,
            tag=mapping.TAGS_PB.get(msg.tag or "", gw.MESSAGE_TAG_UNSPECIFIED),
            contact_last_inbound_at=mapping.ts(event.contact_last_inbound_at),
            origin=SERVICE,
            origin_ref=msg.id,
        )
        return cg.OUTBOUND_REQUESTED, request, msg.id
    out: PbMessage
    if isinstance(event, ConversationOpened):
        c = event.conversation
        out = ev.ConversationOpened(meta=_meta(event.actor, c.space_id, now), conversation=mapping.conversation(c))
        subject = CONVERSATION_OPENED
    elif isinstance(event, ConversationAssigned):
        c = event.conversation
        out = ev.ConversationAssigned(
            meta=_meta(event.actor, c.space_id, now),
            conversation=mapping.conversation(c),
            user_id=c.assignee_user_id or "",
            team_id=c.assignee_team_id or "",
            previous_user_id=event.previous_user_id or "",
            previous_team_id=event.previous_team_id or "",
        )
        subject = CONVERSATION_ASSIGNED
    elif isinstance(event, ConversationClosed):
        c = event.conversation
        out = ev.ConversationClosed(
            meta=_meta(event.actor, c.space_id, now),
            conversation=mapping.conversation(c),
            closing_note=mapping.closing_note(c),
            auto_closed=c.auto_closed,
        )
        subject = CONVERSATION_CLOSED
    elif isinstance(event, ConversationReopened):
        c = event.conversation
        out = ev.ConversationReopened(
            meta=_meta(event.actor, c.space_id, now),
            conversation=mapping.conversation(c),
            previous_conversation_id=event.previous_conversation_id,
        )
        subject = CONVERSATION_REOPENED
    elif isinstance(event, MessageReceived):
        msg = event.message
        out = ev.MessageReceived(
            meta=_meta(event.actor, msg.space_id, now),
            message=mapping.message(msg),
            opened_conversation=event.opened_conversation,
        )
        subject = MESSAGE_RECEIVED
    elif isinstance(event, MessageSent):
        msg = event.message
        out = ev.MessageSent(meta=_meta(event.actor, msg.space_id, now), message=mapping.message(msg))
        subject = MESSAGE_SENT
    elif isinstance(event, MessageStatusChanged):
        msg = event.message
        out = ev.MessageStatusChanged(
            meta=_meta(event.actor, msg.space_id, now),
            message_id=msg.id,
            conversation_id=msg.conversation_id,
            contact_id=msg.contact_id,
            status=mapping.DELIVERY_PB.get(event.status, gw.DELIVERY_STATUS_UNSPECIFIED),
            previous_status=mapping.DELIVERY_PB.get(event.previous_status or "", gw.DELIVERY_STATUS_UNSPECIFIED),
            provider_message_id=event.provider_message_id,
            error_code=event.error_code,
            error_message=event.error_message,
        )
        subject = MESSAGE_STATUS_CHANGED
    elif isinstance(event, MessageUpdated):
        msg = event.message
        out = ev.MessageUpdated(
            meta=_meta(event.actor, msg.space_id, now),
            message=mapping.message(msg),
            change={
                "reaction": ev.MESSAGE_CHANGE_REACTION,
                "edit": ev.MESSAGE_CHANGE_EDIT,
                "delete": ev.MESSAGE_CHANGE_DELETE,
            }[event.change],
        )
        subject = MESSAGE_UPDATED
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"unknown domain event {event!r}")
    return subject, out, out.meta.event_id  # type: ignore[attr-defined]


async def write_events(session: AsyncSession, events: Sequence[tuple[DomainEvent, Any]]) -> None:
    """The repository's EventWriter: every domain event into the outbox, in order, in the caller's
    transaction; an event caused by an inbound event carries that event's trace context."""
    now = datetime.now(UTC)
    await enqueue_many(session, [(*to_outbox(event, now), trace) for event, trace in events])
    for event, _ in events:
        metrics.count_event(event)


# -- consumers ----------------------------------------------------------------------------------


class OutboundStatusHandler:
    """channel_gateway.outbound.status -> message status (only requests this service made)."""

    def __init__(self, service: ConversationsService) -> None:
        self.service = service

    async def __call__(self, delivery: Delivery) -> None:
        event = delivery.message
        assert isinstance(event, gw.OutboundStatusEvent)
        if event.origin != SERVICE:
            return
        status = mapping.DELIVERY.get(event.status)
        if status is None:
            raise PoisonMessage(f"outbound status event {event.event_id} has no status")
        try:
            uuid.UUID(event.origin_ref or event.request_id)
        except ValueError:
            raise PoisonMessage(f"outbound status event {event.event_id} names no message id") from None
        await self.service.apply_status(
            StatusUpdate(
                space_id=event.space_id,
                channel_id=event.channel_id,
                message_id=event.origin_ref or event.request_id,
                status=status.value,
                provider_message_id=event.provider_message_id,
                error_code=event.error_code,
                error_message=event.error_message,
                occurred_at=mapping.from_ts(event.occurred_at),
            )
        )


class ContactsHandler:
    """contacts.contact.* and contacts.field.* -> assignee, names and custom values (by field id, with each
    field's key), erasure, merges."""

    def __init__(self, follower: ContactFollower) -> None:
        self.follower = follower

    async def __call__(self, delivery: Delivery) -> None:
        subject = delivery.subject
        kinds: dict[str, type[PbMessage]] = {
            contacts_contract.CONTACT_CREATED: cev.ContactCreated,
            contacts_contract.CONTACT_UPDATED: cev.ContactUpdated,
            contacts_contract.CONTACT_DELETED: cev.ContactDeleted,
            contacts_contract.CONTACT_MERGED: cev.ContactMerged,
            contacts_contract.CONTACT_ASSIGNED: cev.ContactAssigned,
            contacts_contract.FIELD_UPDATED: cev.ContactFieldUpdated,
            contacts_contract.FIELD_RENAMED: cev.FieldRenamed,
            contacts_contract.FIELD_DELETED: cev.FieldDeleted,
        }
        kind = kinds.get(subject)
        if kind is None:
            return  # another contacts event: nothing this service keeps
        event: Any = kind()
        try:
            event.ParseFromString(delivery.data)
        except DecodeError as exc:
            raise PoisonMessage(f"undecodable {subject}: {exc}") from None
        space_id = event.meta.space_id
        at = mapping.from_ts(event.meta.occurred_at) or datetime.now(UTC)
        actor = event.meta.actor or "service:contacts"
        if isinstance(event, cev.ContactCreated):
            await self.follower.changed(_snapshot(event.contact, at, actor))
        elif isinstance(event, cev.ContactUpdated):
            names = {c.field: c.new_value for c in event.changes if c.field in ("first_name", "last_name")}
            if names:
                await self.follower.changed(
                    ContactChange(
                        space_id, event.contact_id, at, actor, names.get("first_name"), names.get("last_name")
                    )
                )
        elif isinstance(event, cev.ContactFieldUpdated):
            value = FieldValue(_field_id(event.field_id, subject), _key(event.field_key, subject), event.new_value)
            await self.follower.changed(ContactChange(space_id, event.contact_id, at, actor, fields=(value,)))
        elif isinstance(event, cev.FieldRenamed):
            old, new = _key(event.old_key, subject), _key(event.new_key, subject)
            await self.follower.field_renamed(space_id, _field_id(event.field_id, subject), old, new, at)
        elif isinstance(event, cev.FieldDeleted):
            key = _key(event.key, subject)
            await self.follower.field_deleted(space_id, _field_id(event.field_id, subject), key, at)
        elif isinstance(event, cev.ContactAssigned):
            assignee = (event.assignee.user_id, event.assignee.team_id)
            released = (event.released.user_id, event.released.team_id) if event.HasField("released") else None
            await self.follower.changed(
                ContactChange(space_id, event.contact_id, at, actor, assignee=assignee, released=released)
            )
        elif isinstance(event, cev.ContactDeleted):
            await self.follower.erased(space_id, [event.contact_id, *event.merged_ids])
        elif isinstance(event, cev.ContactMerged):
            survivor = _snapshot(event.survivor, at, actor)
            await self.follower.merged(space_id, event.merged_contact_id, survivor)


def _snapshot(contact: Any, at: datetime, actor: str) -> ContactChange:
    return ContactChange(
        space_id=contact.space_id,
        contact_id=contact.id,
        occurred_at=at,
        actor=actor,
        first_name=contact.first_name,
        last_name=contact.last_name,
        fields=tuple(
            FieldValue(fv.field_id, fv.key, fv.value)
            for fv in contact.field_values
            if _valid_id(fv.field_id) and 0 < len(fv.key) <= MAX_KEY
        ),
        assignee=(contact.assignee.user_id, contact.assignee.team_id),
    )


# Custom field keys in the contacts service are at most 63 characters; ids are UUIDs.
MAX_KEY = 64


def _valid_id(field_id: str) -> bool:
    return 0 < len(field_id) <= 64 and not field_id.startswith(LEGACY_FIELD)


def _field_id(field_id: str, subject: str) -> str:
    if not _valid_id(field_id):
        raise PoisonMessage(f"{subject} names no valid field id ({field_id[:80]!r})")
    return field_id


def _key(key: str, subject: str) -> str:
    if not 0 < len(key) <= MAX_KEY:
        raise PoisonMessage(f"{subject} names no valid field key ({key[:80]!r})")
    return key
