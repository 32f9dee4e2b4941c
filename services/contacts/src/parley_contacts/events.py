"""Events of the contacts service: the CONTACTS stream, its subjects, and the outbox sink that
turns domain events into protobuf messages inside the changing transaction.

Subjects (all on stream CONTACTS): contacts.contact.created|updated|deleted|merged|assigned,
contacts.tag.added|removed, contacts.field.updated|renamed|deleted. The event id is the Nats-Msg-Id.

Consumes workspace.member.removed and workspace.team.deleted (stream WORKSPACE, durable
contacts--assignee-releases): the member's or team's contacts are released (`parley_kit.directory`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.message import Message
from parley.common.v1 import common_pb2
from parley.contacts.v1 import contact_pb2, events_pb2
from parley_kit.contracts import contacts as contacts_contract
from parley_kit.nats.streams import StreamSpec
from parley_kit.outbox import enqueue
from sqlalchemy.ext.asyncio import AsyncSession

from parley_contacts.convert import contact_to_pb, tag_to_pb, ts
from parley_contacts.repository import DomainEvent

SERVICE = "contacts"
STREAM_NAME = contacts_contract.STREAM
SUBJECT_PREFIX = "contacts."
SUBJECTS = {
    "contact.created": events_pb2.ContactCreated,
    "contact.updated": events_pb2.ContactUpdated,
    "contact.deleted": events_pb2.ContactDeleted,
    "contact.merged": events_pb2.ContactMerged,
    "contact.assigned": events_pb2.ContactAssigned,
    "tag.added": events_pb2.ContactTagChanged,
    "tag.removed": events_pb2.ContactTagChanged,
    "field.updated": events_pb2.ContactFieldUpdated,
    "field.renamed": events_pb2.FieldRenamed,
    "field.deleted": events_pb2.FieldDeleted,
}


def stream(replicas: int = 1) -> StreamSpec:
    """The CONTACTS stream, declared once in the shared contract its consumers provision too."""
    return contacts_contract.stream_spec(replicas)


def to_message(event: DomainEvent, event_id: str, occurred_at: datetime) -> Message:
    """The protobuf message of a domain event."""
    meta = common_pb2.EventMeta(
        event_id=event_id, occurred_at=ts(occurred_at), space_id=event.space_id, actor=event.actor
    )
    d = event.data
    kind = event.kind
    if kind == "contact.created":
        return events_pb2.ContactCreated(meta=meta, contact=contact_to_pb(d["contact"], d.get("field_defs", {})))
    if kind == "contact.updated":
        changes = [events_pb2.FieldChange(field=c.field, old_value=c.old, new_value=c.new) for c in d["changes"]]
        return events_pb2.ContactUpdated(meta=meta, contact_id=str(d["contact_id"]), changes=changes)
    if kind == "contact.deleted":
        contact = contact_to_pb(d["contact"], {})
        return events_pb2.ContactDeleted(
            meta=meta,
            contact_id=contact.id,
            identities=contact.identities,
            merged_ids=[str(i) for i in d.get("merged_ids", ())],
        )
    if kind == "contact.merged":
        return events_pb2.ContactMerged(
            meta=meta,
            survivor_contact_id=str(d["survivor"].id),
            merged_contact_id=str(d["merged"].id),
            survivor=contact_to_pb(d["survivor"], d.get("field_defs", {})),
        )
    if kind == "contact.assigned":
        return events_pb2.ContactAssigned(
            meta=meta,
            contact_id=str(d["contact_id"]),
            assignee=contact_pb2.Assignee(user_id=d["user_id"], team_id=d["team_id"]),
            previous=contact_pb2.Assignee(user_id=d["previous_user_id"], team_id=d["previous_team_id"]),
            released=_released(d.get("released_user_id", ""), d.get("released_team_id", "")),
        )
    if kind in ("tag.added", "tag.removed"):
        return events_pb2.ContactTagChanged(meta=meta, contact_id=str(d["contact_id"]), tag=tag_to_pb(d["tag"]))
    if kind == "field.updated":
        return events_pb2.ContactFieldUpdated(
            meta=meta,
            contact_id=str(d["contact_id"]),
            field_id=str(d["field"].id),
            field_key=d["field"].key,
            old_value=d["old"],
            new_value=d["new"],
        )
    if kind == "field.renamed":
        field = d["field"]
        return events_pb2.FieldRenamed(meta=meta, field_id=str(field.id), old_key=d["old_key"], new_key=field.key)
    if kind == "field.deleted":
        return events_pb2.FieldDeleted(meta=meta, field_id=str(d["field"].id), key=d["field"].key)
    raise ValueError(f"unknown event kind {kind!r}")


def _released(user_id: str, team_id: str) -> contact_pb2.Assignee | None:
    """A release's departed member or deleted team; None (field unset) for an assignment."""
    return contact_pb2.Assignee(user_id=user_id, team_id=team_id) if user_id or team_id else None


async def outbox_sink(session: AsyncSession, event: DomainEvent) -> None:
    """Store the event in the outbox, in the transaction of the change it describes."""
    event_id = uuid.uuid4().hex
    message = to_message(event, event_id, datetime.now(UTC))
    await enqueue(session, SUBJECT_PREFIX + event.kind, message, msg_id=event_id)
