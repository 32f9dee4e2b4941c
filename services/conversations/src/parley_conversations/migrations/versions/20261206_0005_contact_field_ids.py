"""Custom values copied by field id, with each field's key in contact_fields, so that a field's rename or deletion
(contacts.field.renamed / deleted) changes one row there instead of every copy, whatever the order of events.

The copies so far were keyed by key, without ids: they become "key:<key>" entries, and a contact_fields row of that
id stands for them (rendering finds them by key) until the first event naming their field's id adopts them.

Revision ID: 20261206_0005
Revises: 20261125_0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261206_0005"
down_revision: str | None = "20261125_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)

# Each entry (e.k, e.v) of a contacts row's `fields` and `fields_at` under a new name; {new} is that name.
_REKEY = """
UPDATE contacts AS c SET
  fields = (SELECT coalesce(jsonb_object_agg({new}, e.v), '{{}}'::jsonb)
            FROM jsonb_each(c.fields) AS e(k, v){join}),
  fields_at = (SELECT coalesce(jsonb_object_agg({new}, e.v), '{{}}'::jsonb)
               FROM jsonb_each(c.fields_at) AS e(k, v){join})
WHERE c.fields <> '{{}}'::jsonb OR c.fields_at <> '{{}}'::jsonb
"""

_LEGACY_FIELDS = """
INSERT INTO contact_fields (space_id, field_id, key)
SELECT DISTINCT c.space_id, k, substr(k, 5) FROM contacts AS c, jsonb_object_keys(c.fields || c.fields_at) AS k
WHERE length(k) <= 68
"""


def upgrade() -> None:
    op.create_table(
        "contact_fields",
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("field_id", sa.String(80), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("key_at", TS, nullable=True),
        sa.Column("deleted_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("space_id", "field_id", name="pk_contact_fields"),
    )
    op.create_index("ix_contact_fields_space_key", "contact_fields", ["space_id", "key"])
    op.create_index("ix_contacts_space", "contacts", ["space_id"])
    op.execute(_REKEY.format(new="'key:' || e.k", join=""))
    # Keys longer than 64 characters cannot be template variables: such copies stay unreachable, as before.
    op.execute(_LEGACY_FIELDS)


def downgrade() -> None:
    # Back to keys: a field's current key (a legacy copy's is its own); a deleted field's (none left) go.
    join = " JOIN contact_fields AS f ON f.space_id = c.space_id AND f.field_id = e.k AND f.deleted_at IS NULL"
    op.execute(_REKEY.format(new="f.key", join=join))
    op.drop_index("ix_contacts_space", table_name="contacts")
    op.drop_index("ix_contact_fields_space_key", table_name="contact_fields")
    op.drop_table("contact_fields")
