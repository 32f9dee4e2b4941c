"""Transactional outbox: events written with their change, published by the relay.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 08:30:00
"""

from collections.abc import Sequence

from parley_kit.outbox import create_outbox_table_op, drop_outbox_table_op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_outbox_table_op()


def downgrade() -> None:
    drop_outbox_table_op()
