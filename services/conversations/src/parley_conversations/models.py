"""Database models of the conversations service (SQLAlchemy 2.0, PostgreSQL).

Invariants held by the schema itself, not by code paths:
- at most one open conversation per (space, contact, channel): partial unique index;
- a provider message is stored once per channel: unique (channel_id, provider_message_id);
- a retried SendMessage with the same client_request_id creates one message: unique per conversation.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from parley_kit.db import new_metadata
from parley_kit.outbox import outbox_table
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    Uuid,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = new_metadata()
outbox = outbox_table(metadata)

Id = str  # conversation/message/shortcut/category ids are UUIDs in text form


class Base(DeclarativeBase):
    metadata = metadata


def new_id() -> str:
    return str(uuid.uuid4())


class ConversationStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class ConversationSource(StrEnum):
    CONTACT = "contact"
    AGENT = "agent"
    WORKFLOW = "workflow"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class SenderType(StrEnum):
    CONTACT = "contact"
    USER = "user"
    WORKFLOW = "workflow"
    INTEGRATION = "integration"
    ECHO = "echo"
    SYSTEM = "system"


class MessageKind(StrEnum):
    MESSAGE = "message"
    POSTBACK = "postback"


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


# Forward order of outbound statuses; FAILED may follow QUEUED or SENT only.
STATUS_RANK = {
    DeliveryStatus.QUEUED: 1,
    DeliveryStatus.SENT: 2,
    DeliveryStatus.DELIVERED: 3,
    DeliveryStatus.READ: 4,
    DeliveryStatus.FAILED: 5,
}

_TS = DateTime(timezone=True)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[str] = mapped_column(String(64))
    channel_id: Mapped[str] = mapped_column(String(64))
    channel_type: Mapped[str] = mapped_column(String(16))
    contact_external_id: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default=ConversationStatus.OPEN)
    source: Mapped[str] = mapped_column(String(16))
    opened_by: Mapped[str] = mapped_column(String(128))
    opened_at: Mapped[datetime] = mapped_column(_TS)
    previous_conversation_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))

    assignee_user_id: Mapped[str | None] = mapped_column(String(64))
    assignee_team_id: Mapped[str | None] = mapped_column(String(64))
    assigned_at: Mapped[datetime | None] = mapped_column(_TS)
    first_assigned_at: Mapped[datetime | None] = mapped_column(_TS)

    closed_at: Mapped[datetime | None] = mapped_column(_TS)
    closed_by: Mapped[str | None] = mapped_column(String(128))
    close_category_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    close_category_name: Mapped[str | None] = mapped_column(String(120))
    close_summary: Mapped[str | None] = mapped_column(Text)
    auto_closed: Mapped[bool] = mapped_column(Boolean, default=False)

    last_activity_at: Mapped[datetime] = mapped_column(_TS)
    last_message_at: Mapped[datetime | None] = mapped_column(_TS)
    last_message_text: Mapped[str] = mapped_column(String(200), default="")
    last_inbound_at: Mapped[datetime | None] = mapped_column(_TS)
    last_agent_message_at: Mapped[datetime | None] = mapped_column(_TS)

    # Metrics: see service.py for definitions.
    first_inbound_at: Mapped[datetime | None] = mapped_column(_TS)
    first_response_at: Mapped[datetime | None] = mapped_column(_TS)
    first_response_seconds: Mapped[float | None] = mapped_column(Float)
    awaiting_reply_since: Mapped[datetime | None] = mapped_column(_TS)
    responses: Mapped[int] = mapped_column(Integer, default=0)
    response_seconds_total: Mapped[float] = mapped_column(Float, default=0.0)
    resolution_seconds: Mapped[float | None] = mapped_column(Float)
    incoming_count: Mapped[int] = mapped_column(Integer, default=0)
    outgoing_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index(
            "uq_conversations_one_open_per_contact_channel",
            "space_id",
            "contact_id",
            "channel_id",
            unique=True,
            postgresql_where=sql_text("status = 'open'"),
        ),
        Index("ix_conversations_inbox", "space_id", "status", "last_activity_at", "id"),
        Index("ix_conversations_activity", "space_id", "last_activity_at", "id"),
        Index("ix_conversations_opened", "space_id", "opened_at", "id"),
        Index("ix_conversations_assignee", "space_id", "assignee_user_id", "status"),
        Index("ix_conversations_team", "space_id", "assignee_team_id", "status"),
        Index("ix_conversations_contact", "space_id", "contact_id", "channel_id", "opened_at"),
        Index("ix_conversations_closed", "space_id", "closed_at"),
        Index("ix_conversations_open_contact", "contact_id", postgresql_where=sql_text("status = 'open'")),
        Index(
            "ix_conversations_auto_close",
            "last_agent_message_at",
            postgresql_where=sql_text("status = 'open' AND last_agent_message_at IS NOT NULL"),
        ),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True, default=new_id)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False), unique=True)
    space_id: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    contact_id: Mapped[str] = mapped_column(String(64))
    channel_id: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(16))
    sender_type: Mapped[str] = mapped_column(String(16))
    sender: Mapped[str] = mapped_column(String(128), default="")
    kind: Mapped[str] = mapped_column(String(16), default=MessageKind.MESSAGE)
    parts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    text: Mapped[str] = mapped_column(Text, default="")
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    quick_replies: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    payload: Mapped[str] = mapped_column(Text, default="")
    template: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    tag: Mapped[str | None] = mapped_column(String(40))
    shortcut_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    client_request_id: Mapped[str | None] = mapped_column(String(128))

    status: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[str] = mapped_column(String(64), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    provider_message_id: Mapped[str | None] = mapped_column(String(256))
    provider_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    reply_to_message_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    reactions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    edited_at: Mapped[datetime | None] = mapped_column(_TS)
    deleted_at: Mapped[datetime | None] = mapped_column(_TS)

    sent_at: Mapped[datetime] = mapped_column(_TS)
    delivered_at: Mapped[datetime | None] = mapped_column(_TS)
    read_at: Mapped[datetime | None] = mapped_column(_TS)
    created_at: Mapped[datetime] = mapped_column(_TS)

    __table_args__ = (
        Index("uq_messages_channel_provider_message", "channel_id", "provider_message_id", unique=True),
        Index(
            "uq_messages_conversation_client_request",
            "conversation_id",
            "client_request_id",
            unique=True,
            postgresql_where=sql_text("client_request_id IS NOT NULL"),
        ),
        Index("ix_messages_conversation_seq", "conversation_id", "seq"),
        Index(
            "ix_messages_outbound_unread",
            "channel_id",
            "contact_id",
            "sent_at",
            postgresql_where=sql_text("direction = 'outbound' AND status IN ('queued', 'sent', 'delivered')"),
        ),
    )


class ContactChannel(Base):
    """What this service knows of a contact on one channel (from inbound events)."""

    __tablename__ = "contact_channels"

    channel_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[str] = mapped_column(String(64))
    channel_type: Mapped[str] = mapped_column(String(16))
    last_inbound_at: Mapped[datetime | None] = mapped_column(_TS)
    # Messenger/Instagram receipts: every outbound message sent at or before these was delivered / read.
    delivered_watermark: Mapped[datetime | None] = mapped_column(_TS)
    read_watermark: Mapped[datetime | None] = mapped_column(_TS)
    # The latest interaction time this service has told the contacts service (UpsertByIdentity).
    interaction_reported_at: Mapped[datetime | None] = mapped_column(_TS)

    __table_args__ = (Index("ix_contact_channels_contact", "space_id", "contact_id", "channel_id"),)


class Contact(Base):
    """This service's copy of what shortcuts render: names and custom field values."""

    __tablename__ = "contacts"

    contact_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    first_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(200), default="")
    display_name: Mapped[str] = mapped_column(String(400), default="")
    # Custom values by field id (their keys are in contact_fields); "key:<key>" for a value copied before
    # field ids were kept (migration 0005), until an event naming its field adopts it.
    fields: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    updated_at: Mapped[datetime] = mapped_column(_TS)
    # From the contacts service's events; each part keeps the time of the event that set it, so a late,
    # older event never overwrites a newer one.
    assignee_user_id: Mapped[str | None] = mapped_column(String(64))
    assignee_team_id: Mapped[str | None] = mapped_column(String(64))
    assignee_at: Mapped[datetime | None] = mapped_column(_TS)
    names_at: Mapped[datetime | None] = mapped_column(_TS)
    fields_at: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)  # by the same ids as `fields`

    # A field's rename or deletion rewrites the copies of one space.
    __table_args__ = (Index("ix_contacts_space", "space_id"),)


class ContactField(Base):
    """A custom field of the contacts service as its events tell: its current key, or that it was deleted."""

    __tablename__ = "contact_fields"

    space_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The contacts service's field id; "key:<key>" stands for the values copied by that key before migration 0005.
    field_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    # The time of the rename that set `key`; None: learned from a value event, which a rename overrides.
    key_at: Mapped[datetime | None] = mapped_column(_TS)
    # contacts.field.deleted: the id is never used again, so an event naming it later changes nothing.
    deleted_at: Mapped[datetime | None] = mapped_column(_TS)

    __table_args__ = (Index("ix_contact_fields_space_key", "space_id", "key"),)


class Assignment(Base):
    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(String(64))
    team_id: Mapped[str | None] = mapped_column(String(64))
    assigned_by: Mapped[str] = mapped_column(String(128))
    assigned_at: Mapped[datetime] = mapped_column(_TS)
    ended_at: Mapped[datetime | None] = mapped_column(_TS)
    ended_by: Mapped[str | None] = mapped_column(String(128))


class ClosingCategory(Base):
    __tablename__ = "closing_categories"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(120))
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(_TS)

    __table_args__ = (Index("uq_closing_categories_space_name", "space_id", sql_text("lower(name)"), unique=True),)


class SpaceSettings(Base):
    __tablename__ = "space_settings"

    space_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    closing_category_required: Mapped[bool] = mapped_column(Boolean, default=False)
    closing_summary_required: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_close_after_seconds: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(_TS)


class Shortcut(Base):
    __tablename__ = "shortcuts"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True, default=new_id)
    space_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text, default="")
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    quick_replies: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(_TS)
    updated_at: Mapped[datetime] = mapped_column(_TS)

    __table_args__ = (Index("uq_shortcuts_space_name", "space_id", "name", unique=True),)


class IngestOffset(Base):
    """The last stream sequence applied per inbound partition, committed with the changes it made."""

    __tablename__ = "ingest_offsets"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    stream_sequence: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(_TS)


class PendingReceipt(Base):
    """A status for a provider message id not (yet) known: applied when the id gets attached."""

    __tablename__ = "pending_receipts"

    channel_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider_message_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(_TS)
    error_code: Mapped[str] = mapped_column(String(64), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(_TS)
