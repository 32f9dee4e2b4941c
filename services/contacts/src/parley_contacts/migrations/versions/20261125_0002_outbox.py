"""Transactional outbox: contact events are stored with the change, then relayed to stream CONTACTS.

Revision ID: 20261125_0002
Revises: 20261125_0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from parley_kit.outbox import create_outbox_table_op, drop_outbox_table_op

revision: str = "20261125_0002"
down_revision: str | None = "20261125_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_outbox_table_op()


def downgrade() -> None:
    drop_outbox_table_op()
