"""What the contacts service's events tell: the contact's assignee and when each part was set.

Revision ID: 20261125_0002
Revises: 20261125_0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261125_0002"
down_revision: str | None = "20261125_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("contacts", sa.Column("assignee_user_id", sa.String(64), nullable=True))
    op.add_column("contacts", sa.Column("assignee_team_id", sa.String(64), nullable=True))
    op.add_column("contacts", sa.Column("assignee_at", TS, nullable=True))
    op.add_column("contacts", sa.Column("names_at", TS, nullable=True))
    op.add_column(
        "contacts",
        sa.Column("fields_at", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.create_index(
        "ix_conversations_open_contact", "conversations", ["contact_id"], postgresql_where=sa.text("status = 'open'")
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_open_contact", table_name="conversations")
    for column in ("fields_at", "names_at", "assignee_at", "assignee_team_id", "assignee_user_id"):
        op.drop_column("contacts", column)
