"""Tag ids on the contact row, and an assignee index that answers "my contacts" counts alone.

`contacts.tag_ids` holds the contact's tag ids, written with its `contact_tags` rows in the same
transaction: tag criteria become row predicates (`&&`, `@>`), so a page or a count that also filters on
contact columns (assignee, times) needs no join or anti-join over `contact_tags`. This migration
backfills it from `contact_tags`.

`ix_contacts_space_assignee_user` becomes (space_id, assignee_user_id, last_interaction_at) INCLUDE
(tag_ids): counts of an assignee's contacts with a recent-interaction window and/or tag conditions are
index-only scans of that assignee's entries.

Revision ID: 20261125_0003
Revises: 20261125_0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261125_0003"
down_revision: str | None = "20261125_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE contacts ADD COLUMN tag_ids uuid[] NOT NULL DEFAULT '{}'")
    op.execute(
        "UPDATE contacts c SET tag_ids = t.ids"
        " FROM (SELECT contact_id, array_agg(tag_id ORDER BY tag_id) AS ids FROM contact_tags GROUP BY contact_id) t"
        " WHERE c.id = t.contact_id"
    )
    op.execute("DROP INDEX ix_contacts_space_assignee_user")
    op.execute(
        "CREATE INDEX ix_contacts_space_assignee_user ON contacts"
        " (space_id, assignee_user_id, last_interaction_at) INCLUDE (tag_ids)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_contacts_space_assignee_user")
    op.execute("CREATE INDEX ix_contacts_space_assignee_user ON contacts (space_id, assignee_user_id)")
    op.execute("ALTER TABLE contacts DROP COLUMN tag_ids")
