"""channels, send log, rate buckets, outbox

Revision ID: 20261125_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from parley_kit.outbox import create_outbox_table_op, drop_outbox_table_op

revision: str = "20261125_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("space_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("account_detail", sa.Text(), server_default="", nullable=False),
        sa.Column("outbound_webhook_url", sa.Text(), server_default="", nullable=False),
        sa.Column("credential_hint", sa.Text(), server_default="", nullable=False),
        sa.Column("secrets", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("disconnected_at", TS, nullable=True),
        sa.Column("last_inbound_at", TS, nullable=True),
        sa.Column("last_outbound_at", TS, nullable=True),
        sa.Column("last_error_at", TS, nullable=True),
        sa.Column("last_error_code", sa.Text(), server_default="", nullable=False),
        sa.Column("last_error_message", sa.Text(), server_default="", nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_channels"),
    )
    op.create_index(
        "uq_channels_active_account",
        "channels",
        ["type", "external_id"],
        unique=True,
        postgresql_where=sa.text("status = 'active' AND external_id IS NOT NULL"),
    )
    op.create_index("ix_channels_space_created", "channels", ["space_id", "created_at", "id"])
    op.create_table(
        "send_log",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("space_id", sa.Text(), nullable=False),
        sa.Column("channel_id", sa.Text(), nullable=False),
        sa.Column("channel_type", sa.Text(), server_default="", nullable=False),
        sa.Column("contact_external_id", sa.Text(), server_default="", nullable=False),
        sa.Column("origin", sa.Text(), server_default="", nullable=False),
        sa.Column("origin_ref", sa.Text(), server_default="", nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("provider_message_id", sa.Text(), server_default="", nullable=False),
        sa.Column("error_code", sa.Text(), server_default="", nullable=False),
        sa.Column("error_message", sa.Text(), server_default="", nullable=False),
        sa.Column("claimed_until", TS, nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_send_log"),
    )
    op.create_index("ix_send_log_channel_created", "send_log", ["channel_id", "created_at"])
    op.create_table(
        "rate_buckets",
        sa.Column("channel_id", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name="pk_rate_buckets"),
    )
    create_outbox_table_op()


def downgrade() -> None:
    drop_outbox_table_op()
    op.drop_table("rate_buckets")
    op.drop_index("ix_send_log_channel_created", table_name="send_log")
    op.drop_table("send_log")
    op.drop_index("ix_channels_space_created", table_name="channels")
    op.drop_index("uq_channels_active_account", table_name="channels")
    op.drop_table("channels")
