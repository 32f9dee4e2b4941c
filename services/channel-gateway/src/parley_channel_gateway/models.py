"""The gateway's tables: channels, the outbound send log, per-channel rate buckets, the outbox."""

from __future__ import annotations

from datetime import datetime

from parley_kit.db import new_metadata
from parley_kit.outbox import outbox_table
from sqlalchemy import DateTime, Float, Index, Integer, LargeBinary, Text, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = new_metadata()
outbox = outbox_table(metadata)

# Channel statuses and send statuses as stored.
ACTIVE = "active"
DISCONNECTED = "disconnected"

QUEUED = "queued"  # received, not yet sent
SENDING = "sending"  # claimed; the provider call may be in flight
RETRYING = "retrying"  # the last attempt failed in a way that surely did not send; it will be tried again
SENT = "sent"
FAILED = "failed"


class Base(DeclarativeBase):
    metadata = metadata


class ChannelRow(Base):
    """A connected channel. `secrets` is the Fernet-encrypted JSON of its tokens and webhook secrets."""

    __tablename__ = "channels"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    space_id: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    # Page id, Instagram account id, WhatsApp phone_number_id, Telegram bot id; NULL for custom channels.
    external_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=ACTIVE)
    account_detail: Mapped[str] = mapped_column(Text, server_default="")
    outbound_webhook_url: Mapped[str] = mapped_column(Text, server_default="")
    credential_hint: Mapped[str] = mapped_column(Text, server_default="")
    secrets: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    disconnected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_inbound_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_outbound_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error_code: Mapped[str] = mapped_column(Text, server_default="")
    last_error_message: Mapped[str] = mapped_column(Text, server_default="")
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")

    __table_args__ = (
        # One active channel per provider account, across every space.
        Index(
            "uq_channels_active_account",
            "type",
            "external_id",
            unique=True,
            postgresql_where=text("status = 'active' AND external_id IS NOT NULL"),
        ),
        Index("ix_channels_space_created", "space_id", "created_at", "id"),
    )


class SendLogRow(Base):
    """One outbound send request and its outcome, keyed by the request's id."""

    __tablename__ = "send_log"

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    space_id: Mapped[str] = mapped_column(Text)
    channel_id: Mapped[str] = mapped_column(Text)
    channel_type: Mapped[str] = mapped_column(Text, server_default="")
    contact_external_id: Mapped[str] = mapped_column(Text, server_default="")
    origin: Mapped[str] = mapped_column(Text, server_default="")
    origin_ref: Mapped[str] = mapped_column(Text, server_default="")
    status: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    provider_message_id: Mapped[str] = mapped_column(Text, server_default="")
    error_code: Mapped[str] = mapped_column(Text, server_default="")
    error_message: Mapped[str] = mapped_column(Text, server_default="")
    # While SENDING: until when the claiming worker is presumed alive (it holds the JetStream message).
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_send_log_channel_created", "channel_id", "created_at"),)


class RateBucketRow(Base):
    """A token bucket per channel, shared by every worker replica (updated atomically in one statement)."""

    __tablename__ = "rate_buckets"

    channel_id: Mapped[str] = mapped_column(Text, primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    refilled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
