"""Tables of the workspace database (SQLAlchemy 2.0 typed models)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from parley_kit.db import new_metadata
from parley_kit.outbox import outbox_table
from sqlalchemy import (
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = new_metadata()
# Events waiting to be published, written in the transaction of their change (see events.py).
outbox = outbox_table(metadata)

Timestamp = DateTime(timezone=True)


def _now() -> Any:
    return text("now()")


class Base(DeclarativeBase):
    metadata = metadata


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # lower(name): organization names are unique case-insensitively across the installation.
    name_key: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    # The normalised, lower-cased email: unique.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    # argon2id; NULL for an invited user who has not set a password yet.
    password_hash: Mapped[str | None] = mapped_column(Text)
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    # sha256 of the one-time invitation setup token, and when it expires.
    setup_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    setup_expires_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())


class OrganizationMember(Base):
    __tablename__ = "organization_members"
    __table_args__ = (CheckConstraint("role IN ('admin', 'billing_admin', 'member')", name="role"),)

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())


class Space(Base):
    __tablename__ = "spaces"
    __table_args__ = (Index("uq_spaces_organization_id_name_key", "organization_id", "name_key", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    name_key: Mapped[str] = mapped_column(String(100))
    time_zone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    archived_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())


class SpaceMember(Base):
    __tablename__ = "space_members"
    __table_args__ = (
        CheckConstraint("role IN ('owner', 'manager', 'agent')", name="role"),
        CheckConstraint("availability IN ('online', 'away', 'offline')", name="availability"),
    )

    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(20))
    availability: Mapped[str] = mapped_column(String(20), server_default="offline")
    availability_changed_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())


class Team(Base):
    __tablename__ = "teams"
    __table_args__ = (Index("uq_teams_space_id_name_key", "space_id", "name_key", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    name_key: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())


class TeamMember(Base):
    __tablename__ = "team_members"

    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN ('owner', 'manager', 'agent')", name="role"),
        # Names are unique among a space's active keys; a revoked key's name can be reused.
        Index(
            "uq_api_keys_space_id_name_key",
            "space_id",
            "name_key",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    name_key: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    # sha256 of the secret part of "pk_<id>_<secret>" (the secret has 256 bits of entropy).
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    last_used_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class RefreshToken(Base):
    """One refresh token; rotation chains tokens of one login session by `family_id`."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(32), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    space_id: Mapped[str] = mapped_column(String(32))  # "" when the user had no space
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    expires_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    used_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)


class LoginThrottle(Base):
    """Failed logins per normalised email (known or not, so both behave alike), shared by replicas."""

    __tablename__ = "login_throttle"

    email_key: Mapped[str] = mapped_column(String(320), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    locked_until: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    last_failure_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())


class BusinessHoursRange(Base):
    __tablename__ = "business_hours"
    __table_args__ = (
        CheckConstraint("weekday BETWEEN 1 AND 7", name="weekday"),
        CheckConstraint("opens >= 0 AND closes <= 1440 AND opens < closes", name="range"),
    )

    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True)
    weekday: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # ISO: 1 = Monday
    opens: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # minutes after local midnight
    closes: Mapped[int] = mapped_column(SmallInteger)


class BusinessHoursException(Base):
    __tablename__ = "business_hours_exceptions"

    space_id: Mapped[str] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # [[opens, closes], ...] in minutes; [] = closed all day.
    ranges: Mapped[list[list[int]]] = mapped_column(JSONB)
