"""Initial schema: conversations, messages, assignments, closing categories, space settings, shortcuts,
the contacts this service knows, ingest offsets, pending receipts, and the outbox.

Revision ID: 20261125_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from parley_kit.outbox import create_outbox_table_op, drop_outbox_table_op
from sqlalchemy.dialects import postgresql

revision: str = "20261125_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
UUID = sa.Uuid(as_uuid=False)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", UUID, nullable=False),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("contact_id", sa.String(64), nullable=False),
        sa.Column("channel_id", sa.String(64), nullable=False),
        sa.Column("channel_type", sa.String(16), nullable=False),
        sa.Column("contact_external_id", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("opened_by", sa.String(128), nullable=False),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("previous_conversation_id", UUID, nullable=True),
        sa.Column("assignee_user_id", sa.String(64), nullable=True),
        sa.Column("assignee_team_id", sa.String(64), nullable=True),
        sa.Column("assigned_at", TS, nullable=True),
        sa.Column("first_assigned_at", TS, nullable=True),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("closed_by", sa.String(128), nullable=True),
        sa.Column("close_category_id", UUID, nullable=True),
        sa.Column("close_category_name", sa.String(120), nullable=True),
        sa.Column("close_summary", sa.Text(), nullable=True),
        sa.Column("auto_closed", sa.Boolean(), nullable=False),
        sa.Column("last_activity_at", TS, nullable=False),
        sa.Column("last_message_at", TS, nullable=True),
        sa.Column("last_message_text", sa.String(200), nullable=False),
        sa.Column("last_inbound_at", TS, nullable=True),
        sa.Column("last_agent_message_at", TS, nullable=True),
        sa.Column("first_inbound_at", TS, nullable=True),
        sa.Column("first_response_at", TS, nullable=True),
        sa.Column("first_response_seconds", sa.Float(), nullable=True),
        sa.Column("awaiting_reply_since", TS, nullable=True),
        sa.Column("responses", sa.Integer(), nullable=False),
        sa.Column("response_seconds_total", sa.Float(), nullable=False),
        sa.Column("resolution_seconds", sa.Float(), nullable=True),
        sa.Column("incoming_count", sa.Integer(), nullable=False),
        sa.Column("outgoing_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
    )
    op.create_index(
        "uq_conversations_one_open_per_contact_channel",
        "conversations",
        ["space_id", "contact_id", "channel_id"],
        unique=True,
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_index("ix_conversations_inbox", "conversations", ["space_id", "status", "last_activity_at", "id"])
    op.create_index("ix_conversations_opened", "conversations", ["space_id", "opened_at", "id"])
    op.create_index("ix_conversations_assignee", "conversations", ["space_id", "assignee_user_id", "status"])
    op.create_index("ix_conversations_team", "conversations", ["space_id", "assignee_team_id", "status"])
    op.create_index("ix_conversations_contact", "conversations", ["space_id", "contact_id", "channel_id", "opened_at"])
    op.create_index("ix_conversations_closed", "conversations", ["space_id", "closed_at"])
    op.create_index(
        "ix_conversations_auto_close",
        "conversations",
        ["last_agent_message_at"],
        postgresql_where=sa.text("status = 'open' AND last_agent_message_at IS NOT NULL"),
    )

    op.create_table(
        "messages",
        sa.Column("id", UUID, nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("conversation_id", UUID, nullable=False),
        sa.Column("contact_id", sa.String(64), nullable=False),
        sa.Column("channel_id", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("sender_type", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parts", postgresql.JSONB(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("attachments", postgresql.JSONB(), nullable=False),
        sa.Column("quick_replies", postgresql.JSONB(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("template", postgresql.JSONB(), nullable=True),
        sa.Column("tag", sa.String(40), nullable=True),
        sa.Column("shortcut_id", UUID, nullable=True),
        sa.Column("client_request_id", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("provider_message_id", sa.String(256), nullable=True),
        sa.Column("provider_sequence", sa.BigInteger(), nullable=False),
        sa.Column("reply_to_message_id", UUID, nullable=True),
        sa.Column("reactions", postgresql.JSONB(), nullable=False),
        sa.Column("edited_at", TS, nullable=True),
        sa.Column("deleted_at", TS, nullable=True),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("read_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("seq", name="uq_messages_seq"),
    )
    op.create_index(
        "uq_messages_channel_provider_message", "messages", ["channel_id", "provider_message_id"], unique=True
    )
    op.create_index(
        "uq_messages_conversation_client_request",
        "messages",
        ["conversation_id", "client_request_id"],
        unique=True,
        postgresql_where=sa.text("client_request_id IS NOT NULL"),
    )
    op.create_index("ix_messages_conversation_seq", "messages", ["conversation_id", "seq"])
    op.create_index(
        "ix_messages_outbound_unread",
        "messages",
        ["channel_id", "contact_id", "sent_at"],
        postgresql_where=sa.text("direction = 'outbound' AND status IN ('queued', 'sent', 'delivered')"),
    )

    op.create_table(
        "contact_channels",
        sa.Column("channel_id", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(256), nullable=False),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("contact_id", sa.String(64), nullable=False),
        sa.Column("channel_type", sa.String(16), nullable=False),
        sa.Column("last_inbound_at", TS, nullable=True),
        sa.Column("delivered_watermark", TS, nullable=True),
        sa.Column("read_watermark", TS, nullable=True),
        sa.PrimaryKeyConstraint("channel_id", "external_id", name="pk_contact_channels"),
    )
    op.create_index("ix_contact_channels_contact", "contact_channels", ["space_id", "contact_id", "channel_id"])

    op.create_table(
        "contacts",
        sa.Column("contact_id", sa.String(64), nullable=False),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("first_name", sa.String(200), nullable=False),
        sa.Column("last_name", sa.String(200), nullable=False),
        sa.Column("display_name", sa.String(400), nullable=False),
        sa.Column("fields", postgresql.JSONB(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("contact_id", name="pk_contacts"),
    )

    op.create_table(
        "assignments",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("conversation_id", UUID, nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("team_id", sa.String(64), nullable=True),
        sa.Column("assigned_by", sa.String(128), nullable=False),
        sa.Column("assigned_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("ended_by", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_assignments_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_assignments"),
    )
    op.create_index("ix_assignments_conversation_id", "assignments", ["conversation_id"])

    op.create_table(
        "closing_categories",
        sa.Column("id", UUID, nullable=False),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_closing_categories"),
    )
    op.create_index(
        "uq_closing_categories_space_name", "closing_categories", ["space_id", sa.text("lower(name)")], unique=True
    )

    op.create_table(
        "space_settings",
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("closing_category_required", sa.Boolean(), nullable=False),
        sa.Column("closing_summary_required", sa.Boolean(), nullable=False),
        sa.Column("auto_close_after_seconds", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("space_id", name="pk_space_settings"),
    )

    op.create_table(
        "shortcuts",
        sa.Column("id", UUID, nullable=False),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("attachments", postgresql.JSONB(), nullable=False),
        sa.Column("quick_replies", postgresql.JSONB(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_shortcuts"),
    )
    op.create_index("uq_shortcuts_space_name", "shortcuts", ["space_id", "name"], unique=True)

    op.create_table(
        "ingest_offsets",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("stream_sequence", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("partition", name="pk_ingest_offsets"),
    )

    op.create_table(
        "pending_receipts",
        sa.Column("channel_id", sa.String(64), nullable=False),
        sa.Column("provider_message_id", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "provider_message_id", "status", name="pk_pending_receipts"),
    )

    create_outbox_table_op()


def downgrade() -> None:
    drop_outbox_table_op()
    for table in (
        "pending_receipts",
        "ingest_offsets",
        "shortcuts",
        "space_settings",
        "closing_categories",
        "assignments",
        "contacts",
        "contact_channels",
        "messages",
        "conversations",
    ):
        op.drop_table(table)
