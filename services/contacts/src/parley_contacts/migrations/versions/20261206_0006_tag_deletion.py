"""A deleted tag leaves the catalog at once and its contacts in chunks: `tags.deleted_at` / `deleted_by`.

DeleteTag marks the tag (`deleted_at`, and who deleted it for the `tag.removed` events); from then on no
read or writer sees it, and its name is free again (the unique name index skips deleted tags). Its
contacts are untagged afterwards, 1000 per transaction, each chunk with its events; the row goes once no
contact carries the tag. `ix_tags_deleted` finds the unfinished deletions (after a restart too) and a
space's deleted tags, which reads hide from contacts' tags until the untagging reaches them.

Downgrade finishes unfinished deletions in place (without events) and drops the columns.

Revision ID: 20261206_0006
Revises: 20261206_0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261206_0006"
down_revision: str | None = "20261206_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DELETED = "SELECT id FROM tags WHERE deleted_at IS NOT NULL"


def upgrade() -> None:
    op.execute("ALTER TABLE tags ADD COLUMN deleted_at timestamptz, ADD COLUMN deleted_by varchar(128)")
    op.execute("DROP INDEX uq_tags_space_name")
    op.execute("CREATE UNIQUE INDEX uq_tags_space_name ON tags (space_id, lower(name)) WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX ix_tags_deleted ON tags (space_id) WHERE deleted_at IS NOT NULL")


def downgrade() -> None:
    op.execute(
        f"UPDATE contacts SET tag_ids = ARRAY(SELECT t FROM unnest(tag_ids) t WHERE t NOT IN ({DELETED}))"
        f" WHERE tag_ids && ARRAY({DELETED})"
    )
    op.execute("DELETE FROM tags WHERE deleted_at IS NOT NULL")  # their contact_tags rows go by cascade
    op.execute("DROP INDEX ix_tags_deleted")
    op.execute("DROP INDEX uq_tags_space_name")
    op.execute("CREATE UNIQUE INDEX uq_tags_space_name ON tags (space_id, lower(name))")
    op.execute("ALTER TABLE tags DROP COLUMN deleted_at, DROP COLUMN deleted_by")
