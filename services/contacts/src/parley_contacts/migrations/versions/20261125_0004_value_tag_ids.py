"""A copy of the contact's tag ids on each of its custom values, carried by the value indexes.

`field_values.tag_ids` equals `contacts.tag_ids`. The typed value indexes INCLUDE it, so a count of "tag
conditions and a value condition" is one index-only scan of the value's entries filtered on their tags,
instead of a hash join of a tag's contact ids with the value's. Two triggers keep the copy, so every
writer does, whatever its code (the previous release too, while a rolling upgrade runs both):

- after a contact's `tag_ids` change, its values get the new ones;
- a value inserted, or moved to another contact (merge), takes its contact's.

Both run their query with a fresh snapshot (plpgsql, READ COMMITTED) after the contact's row lock is
taken, so a tag change and a value write racing on one contact leave the copy exact whichever commits
first. This migration backfills the copy; it rewrites every tagged contact's values (about a minute per
few million values, with their writes waiting).

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


COPY_TO_VALUES = """
CREATE FUNCTION contacts_copy_tag_ids_to_values() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE field_values SET tag_ids = NEW.tag_ids WHERE contact_id = NEW.id AND tag_ids IS DISTINCT FROM NEW.tag_ids;
    RETURN NULL;
END $$
"""
TAKE_FROM_CONTACT = """
CREATE FUNCTION field_values_take_contact_tag_ids() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.tag_ids := coalesce((SELECT tag_ids FROM contacts WHERE id = NEW.contact_id), '{}');
    RETURN NEW;
END $$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE field_values ADD COLUMN tag_ids uuid[] NOT NULL DEFAULT '{}'")
    op.execute(COPY_TO_VALUES)
    op.execute(
        "CREATE TRIGGER contacts_tag_ids_to_values AFTER UPDATE OF tag_ids ON contacts FOR EACH ROW"
        " WHEN (OLD.tag_ids IS DISTINCT FROM NEW.tag_ids) EXECUTE FUNCTION contacts_copy_tag_ids_to_values()"
    )
    op.execute(TAKE_FROM_CONTACT)
    op.execute(
        "CREATE TRIGGER field_values_contact_tag_ids BEFORE INSERT OR UPDATE OF contact_id ON field_values"
        " FOR EACH ROW EXECUTE FUNCTION field_values_take_contact_tag_ids()"
    )
    _drop_indexes()  # backfilled without maintaining them, then built once
    op.execute(
        "UPDATE field_values v SET tag_ids = c.tag_ids FROM contacts c WHERE c.id = v.contact_id AND c.tag_ids <> '{}'"
    )
    _create_indexes(", tag_ids")


def downgrade() -> None:
    op.execute("DROP TRIGGER field_values_contact_tag_ids ON field_values")
    op.execute("DROP FUNCTION field_values_take_contact_tag_ids()")
    op.execute("DROP TRIGGER contacts_tag_ids_to_values ON contacts")
    op.execute("DROP FUNCTION contacts_copy_tag_ids_to_values()")
    _drop_indexes()
    op.execute("ALTER TABLE field_values DROP COLUMN tag_ids")
    _create_indexes("")
