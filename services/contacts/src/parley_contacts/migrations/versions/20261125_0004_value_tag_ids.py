"""A copy of the contact's tag ids on each of its custom values, carried by the value indexes.

`field_values.tag_ids` is kept equal to `contacts.tag_ids` (rewritten with it, under the contact's row
lock). The typed value indexes INCLUDE it, so a count of "tag conditions and a value condition" is one
index-only scan of the value's entries filtered on their tags, instead of a hash join of a tag's
contact ids with the value's. This migration backfills it from `contacts`.

Revision ID: 20261125_0004
Revises: 20261125_0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261125_0004"
down_revision: str | None = "20261125_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("number", "date", "datetime", "bool")
TEXT_INDEX = "ON field_values (field_id, lower(value_text) text_pattern_ops) INCLUDE (contact_id, value_text{extra})"


def _drop_indexes() -> None:
    for kind in (*KINDS, "text"):
        op.execute(f"DROP INDEX ix_field_values_{kind}")


def _create_indexes(extra: str) -> None:
    for kind in KINDS:
        op.execute(
            f"CREATE INDEX ix_field_values_{kind} ON field_values (field_id, value_{kind})"
            f" INCLUDE (contact_id{extra}) WHERE value_{kind} IS NOT NULL"
        )
    op.execute(f"CREATE INDEX ix_field_values_text {TEXT_INDEX.format(extra=extra)} WHERE value_text IS NOT NULL")


def upgrade() -> None:
    op.execute("ALTER TABLE field_values ADD COLUMN tag_ids uuid[] NOT NULL DEFAULT '{}'")
    _drop_indexes()  # backfilled without maintaining them, then built once
    op.execute(
        "UPDATE field_values v SET tag_ids = c.tag_ids FROM contacts c WHERE c.id = v.contact_id AND c.tag_ids <> '{}'"
    )
    _create_indexes(", tag_ids")


def downgrade() -> None:
    _drop_indexes()
    op.execute("ALTER TABLE field_values DROP COLUMN tag_ids")
    _create_indexes("")
