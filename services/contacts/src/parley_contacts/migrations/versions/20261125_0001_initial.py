"""Initial schema: contacts, channel identities, custom fields and values, tags, views, merge aliases.

Revision ID: 20261125_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261125_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Expression indexes for prefix, case-insensitive search (LIKE 'q%' on lower(...)) and text criteria.
# Each carries (INCLUDE) the columns its expression reads and what callers need, for index-only scans.
EXPRESSION_INDEXES = {
    "ix_contacts_search_name": (
        "contacts (space_id, lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) text_pattern_ops)"
        " INCLUDE (id, created_at, first_name, last_name)"
    ),
    "ix_contacts_search_last_name": (
        "contacts (space_id, lower(last_name) text_pattern_ops) INCLUDE (id, created_at, last_name)"
    ),
    "ix_contacts_search_email": "contacts (space_id, lower(email) text_pattern_ops) INCLUDE (id, created_at, email)",
    "ix_contacts_search_phone": "contacts (space_id, phone text_pattern_ops) INCLUDE (id, created_at)",
    "ix_contact_identities_search": (
        "contact_identities (space_id, lower(external_id) text_pattern_ops) INCLUDE (contact_id, external_id)"
    ),
    "ix_field_values_text": (
        "field_values (field_id, lower(value_text) text_pattern_ops) INCLUDE (contact_id, value_text)"
        " WHERE value_text IS NOT NULL"
    ),
}


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("first_name", sa.Text(), nullable=True),
        sa.Column("last_name", sa.Text(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("language", sa.String(length=35), nullable=True),
        sa.Column("avatar_url", sa.Text(), nullable=True),
        sa.Column("assignee_user_id", sa.String(length=64), nullable=True),
        sa.Column("assignee_team_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_interaction_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_interaction_channel_id", sa.String(length=64), nullable=True),
        sa.Column("last_interaction_channel_type", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
    )
    op.create_index(
        "ix_contacts_space_created",
        "contacts",
        ["space_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
    )
    op.create_index("ix_contacts_space_id", "contacts", ["space_id", "id"])
    op.create_index("ix_contacts_space_assignee_team", "contacts", ["space_id", "assignee_team_id"])
    op.create_index("ix_contacts_space_assignee_user", "contacts", ["space_id", "assignee_user_id"])
    op.create_index("ix_contacts_space_last_interaction", "contacts", ["space_id", "last_interaction_at"])
    op.create_table(
        "field_definitions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("options", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_field_definitions")),
        sa.UniqueConstraint("space_id", "key", name="uq_field_definitions_space_key"),
    )
    op.create_table(
        "tags",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("color", sa.String(length=16), server_default="", nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tags")),
    )
    op.execute("CREATE UNIQUE INDEX uq_tags_space_name ON tags (space_id, lower(name))")
    op.create_table(
        "views",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("shared", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("criteria", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_views")),
    )
    op.create_index("ix_views_space_owner", "views", ["space_id", "owner"])
    op.create_table(
        "contact_aliases",
        sa.Column("merged_id", sa.Uuid(), nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("survivor_id", sa.Uuid(), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["survivor_id"], ["contacts.id"], name=op.f("fk_contact_aliases_survivor_id_contacts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("merged_id", name=op.f("pk_contact_aliases")),
    )
    op.create_index("ix_contact_aliases_survivor", "contact_aliases", ["survivor_id"])
    op.create_table(
        "contact_identities",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("channel_type", sa.Integer(), server_default="0", nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_contact_identities_contact_id_contacts"),
            ondelete="CASCADE",
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_identities")),
        sa.UniqueConstraint("space_id", "channel_id", "external_id", name="uq_contact_identities_channel_external"),
    )
    op.create_index("ix_contact_identities_contact", "contact_identities", ["contact_id"])
    op.create_index("ix_contact_identities_space_channel", "contact_identities", ["space_id", "channel_id"])
    op.create_table(
        "field_values",
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("field_id", sa.Uuid(), nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("value_number", sa.Numeric(), nullable=True),
        sa.Column("value_date", sa.Date(), nullable=True),
        sa.Column("value_datetime", sa.DateTime(timezone=True), nullable=True),
        sa.Column("value_bool", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_field_values_contact_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["field_id"],
            ["field_definitions.id"],
            name=op.f("fk_field_values_field_id_field_definitions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("contact_id", "field_id", name=op.f("pk_field_values")),
    )
    for kind in ("number", "date", "datetime", "bool"):
        op.create_index(
            f"ix_field_values_{kind}",
            "field_values",
            ["field_id", f"value_{kind}"],
            postgresql_include=["contact_id"],
            postgresql_where=sa.text(f"value_{kind} IS NOT NULL"),
        )
    op.create_table(
        "contact_tags",
        sa.Column("contact_id", sa.Uuid(), nullable=False),
        sa.Column("tag_id", sa.Uuid(), nullable=False),
        sa.Column("space_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_contact_tags_contact_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["tag_id"], ["tags.id"], name=op.f("fk_contact_tags_tag_id_tags"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("contact_id", "tag_id", name=op.f("pk_contact_tags")),
    )
    op.create_index("ix_contact_tags_tag", "contact_tags", ["tag_id", "contact_id"])
    for name, target in EXPRESSION_INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON {target}")


def downgrade() -> None:
    for name in EXPRESSION_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_table("contact_tags")
    op.drop_table("field_values")
    op.drop_table("contact_identities")
    op.drop_table("contact_aliases")
    op.drop_table("views")
    op.execute("DROP INDEX IF EXISTS uq_tags_space_name")
    op.drop_table("tags")
    op.drop_table("field_definitions")
    op.drop_table("contacts")
