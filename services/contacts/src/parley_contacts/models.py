"""Tables of the contacts database (SQLAlchemy 2.0 typed models).

Every row carries its `space_id`; every query filters on it. Text fields store NULL for
"not set" (the domain turns empty strings into None), so "is set" is `IS NOT NULL`.
Tags on contacts and custom values are narrow rows with covering indexes, so criteria and
counts over them are index-only scans rather than visits to the wide contact rows.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from parley_kit.db import new_metadata
from parley_kit.outbox import outbox_table
from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    literal,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = new_metadata()
# Events waiting to be relayed to stream CONTACTS (written in the changing transaction).
outbox = outbox_table(metadata)


class Base(DeclarativeBase):
    metadata = metadata


def _full_name(first: Any, last: Any) -> Any:
    """lower(coalesce(first,'') || ' ' || coalesce(last,'')): the expression the name-search index covers."""
    return func.lower(func.coalesce(first, "") + literal(" ") + func.coalesce(last, ""))


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(Text)
    last_name: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(String(2))
    language: Mapped[str | None] = mapped_column(String(35))
    avatar_url: Mapped[str | None] = mapped_column(Text)
    assignee_user_id: Mapped[str | None] = mapped_column(String(64))
    assignee_team_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_interaction_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_interaction_channel_id: Mapped[str | None] = mapped_column(String(64))
    last_interaction_channel_type: Mapped[int] = mapped_column(Integer, server_default="0")
    # The contact's tags (sorted), written with its `contact_tags` rows in the same transaction: tag
    # criteria are row predicates (`&&`, `@>`) instead of joins and anti-joins over `contact_tags`.
    tag_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), server_default="{}")

    __table_args__ = (
        # The stable sort of every list: newest first, id as tie-breaker.
        Index("ix_contacts_space_created", "space_id", created_at.desc(), id.desc()),
        # "My contacts" counts (with an interaction window and/or tag conditions) from the index alone.
        Index(
            "ix_contacts_space_assignee_user",
            "space_id",
            "assignee_user_id",
            "last_interaction_at",
            postgresql_include=["tag_ids"],
        ),
        Index("ix_contacts_space_assignee_team", "space_id", "assignee_team_id"),
        Index("ix_contacts_space_last_interaction", "space_id", "last_interaction_at"),
        # Prefix, case-insensitive search (LIKE 'q%' on lower(...)).
        # Membership of a space from the index alone (counts join on it instead of the wide rows).
        Index("ix_contacts_space_id", "space_id", "id"),
        # Prefix search: each index also carries what ranking candidates needs (id, created_at) and the
        # columns of its expression, so candidates come from index-only scans.
        Index(
            "ix_contacts_search_name",
            "space_id",
            _full_name(first_name, last_name).label("full_name"),
            postgresql_ops={"full_name": "text_pattern_ops"},
            postgresql_include=["id", "created_at", "first_name", "last_name"],
        ),
        Index(
            "ix_contacts_search_last_name",
            "space_id",
            func.lower(last_name).label("lower_last_name"),
            postgresql_ops={"lower_last_name": "text_pattern_ops"},
            postgresql_include=["id", "created_at", "last_name"],
        ),
        Index(
            "ix_contacts_search_email",
            "space_id",
            func.lower(email).label("lower_email"),
            postgresql_ops={"lower_email": "text_pattern_ops"},
            postgresql_include=["id", "created_at", "email"],
        ),
        Index(
            "ix_contacts_search_phone",
            "space_id",
            "phone",
            postgresql_ops={"phone": "text_pattern_ops"},
            postgresql_include=["id", "created_at"],
        ),
    )


class ContactIdentity(Base):
    """A contact's identity on one channel: the provider's id for the person (PSID, wa_id, ...)."""

    __tablename__ = "contact_identities"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[uuid.UUID] = mapped_column(
        Uuid,
        # Deferred: UpsertByIdentity claims the identity first (ON CONFLICT) and inserts the contact after.
        ForeignKey("contacts.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"),
    )
    channel_id: Mapped[str] = mapped_column(String(64))
    channel_type: Mapped[int] = mapped_column(Integer, server_default="0")
    external_id: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("space_id", "channel_id", "external_id", name="uq_contact_identities_channel_external"),
        Index("ix_contact_identities_contact", "contact_id"),
        Index(
            "ix_contact_identities_search",
            "space_id",
            func.lower(external_id).label("lower_external_id"),
            postgresql_ops={"lower_external_id": "text_pattern_ops"},
        ),
        Index("ix_contact_identities_space_channel", "space_id", "channel_id"),
    )


class ContactTag(Base):
    """A tag on a contact."""

    __tablename__ = "contact_tags"

    contact_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    tag_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))

    # The primary key (contact_id, tag_id) answers "tags of these contacts" and "has this contact tag X";
    # this one answers "contacts with tag X" (and counts them) from the index alone.
    __table_args__ = (Index("ix_contact_tags_tag", "tag_id", "contact_id"),)


class FieldDefinition(Base):
    __tablename__ = "field_definitions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, server_default="")
    type: Mapped[str] = mapped_column(String(16))
    options: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("space_id", "key", name="uq_field_definitions_space_key"),)


class FieldValue(Base):
    """One custom field value of one contact, in the column of its type."""

    __tablename__ = "field_values"

    contact_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    field_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("field_definitions.id", ondelete="CASCADE"), primary_key=True
    )
    space_id: Mapped[str] = mapped_column(String(64))
    value_text: Mapped[str | None] = mapped_column(Text)
    value_number: Mapped[Decimal | None] = mapped_column(Numeric)
    value_date: Mapped[date | None] = mapped_column(Date)
    value_datetime: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    value_bool: Mapped[bool | None] = mapped_column(Boolean)
    # A copy of the contact's `tag_ids`, kept by two triggers (migration 0004): a count of "tag conditions
    # and a value condition" is one index-only scan of the value's entries, filtering on the tags they
    # carry, instead of a join of the tag's and the value's contact ids.
    tag_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid), server_default="{}")

    # Covering (contact_id, the tags, and the raw text for the lower() index): value criteria, alone or
    # with tag criteria, are index-only scans. Partial: each typed index holds only the rows of its type.
    __table_args__ = (
        *(
            Index(
                f"ix_field_values_{kind}",
                "field_id",
                f"value_{kind}",
                postgresql_include=["contact_id", "tag_ids"],
                postgresql_where=text(f"value_{kind} IS NOT NULL"),
            )
            for kind in ("number", "date", "datetime", "bool")
        ),
        Index(
            "ix_field_values_text",
            "field_id",
            func.lower(value_text).label("lower_value_text"),
            postgresql_ops={"lower_value_text": "text_pattern_ops"},
            postgresql_include=["contact_id", "value_text", "tag_ids"],
            postgresql_where=text("value_text IS NOT NULL"),
        ),
    )


class Tag(Base):
    """A tag of the catalog. A deleted one (`deleted_at` set) is gone for every reader and writer at once; its
    row stays until its contacts are untagged, chunk by chunk (migration 0006)."""

    __tablename__ = "tags"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    color: Mapped[str] = mapped_column(String(16), server_default="")
    description: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Who deleted it: the actor of the tag.removed events of its contacts.
    deleted_by: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index(
            "uq_tags_space_name",
            "space_id",
            func.lower(name).label("lower_name"),
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # Unfinished deletions (all of them, or a space's): normally none, so this index is nearly empty.
        Index("ix_tags_deleted", "space_id", postgresql_where=text("deleted_at IS NOT NULL")),
    )


class View(Base):
    __tablename__ = "views"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(128))
    shared: Mapped[bool] = mapped_column(Boolean, server_default="false")
    criteria: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_views_space_owner", "space_id", "owner"),)


class ContactAlias(Base):
    """A merged-away contact id, resolving to the contact it was merged into."""

    __tablename__ = "contact_aliases"

    merged_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    space_id: Mapped[str] = mapped_column(String(64))
    survivor_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("contacts.id", ondelete="CASCADE"))
    merged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_contact_aliases_survivor", "survivor_id"),)
