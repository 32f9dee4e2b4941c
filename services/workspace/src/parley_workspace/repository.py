"""The only place that speaks SQL. `Store.tx()` opens one transaction and yields a `Tx` whose
methods read and write inside it; events recorded with `Tx.emit` go to the outbox in that same
transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from parley_kit.errors import AlreadyExists
from sqlalchemy import Select, and_, delete, exists, func, null, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parley_workspace import models as m
from parley_workspace.paging import Page, Paged, encode_token

EventWriter = Callable[[AsyncSession, Any], Awaitable[None]]


@dataclass(frozen=True)
class MemberRow:
    """A space member joined with their user."""

    member: m.SpaceMember
    user: m.User


@dataclass(frozen=True)
class OrgMemberRow:
    member: m.OrganizationMember
    user: m.User


@dataclass(frozen=True)
class SpaceAccessRow:
    space: m.Space
    organization: m.Organization
    role: str


@dataclass(frozen=True)
class TeamRow:
    team: m.Team
    member_count: int


@dataclass(frozen=True)
class TeamMemberRow:
    member: m.TeamMember
    user: m.User


def _page(stmt: Select[Any], keys: Sequence[Any], page: Page) -> Select[Any]:
    """Order by `keys` (ascending) and continue after the page token's key."""
    if page.after is not None:
        if len(page.after) != len(keys):
            from parley_kit.errors import InvalidArgument

            raise InvalidArgument("page_token does not belong to this list; start again without it")
        stmt = stmt.where(tuple_(*keys) > tuple_(*page.after))
    return stmt.order_by(*keys).limit(page.size + 1)


def _paged(rows: list[Any], page: Page, key: Callable[[Any], tuple[Any, ...]]) -> Paged[Any]:
    if len(rows) > page.size:
        rows = rows[: page.size]
        return Paged(rows, encode_token(key(rows[-1])))
    return Paged(rows)


class Store:
    """Opens transactions on the workspace database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], event_writer: EventWriter | None = None) -> None:
        self._sessions = sessions
        self._event_writer = event_writer

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        """One transaction; a unique violation that a concurrent request won is ALREADY_EXISTS."""
        try:
            async with self._sessions() as session, session.begin():
                yield Tx(session, self._event_writer)
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) == "23505" or "unique" in str(exc.orig).lower():
                raise AlreadyExists(
                    "that name, email or membership was just taken by a concurrent request; nothing was changed"
                ) from exc
            raise


class Tx:
    """Queries and changes inside one transaction."""

    def __init__(self, session: AsyncSession, event_writer: EventWriter | None) -> None:
        self.session = session
        self._event_writer = event_writer

    async def emit(self, event: Any) -> None:
        if self._event_writer is not None:
            await self._event_writer(self.session, event)

    async def now(self) -> dt.datetime:
        return (await self.session.execute(select(func.now()))).scalar_one()

    async def lock(self, name: str) -> None:
        """A transaction-scoped advisory lock (e.g. to serialise bootstraps across replicas)."""
        await self.session.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))

    async def add(self, row: Any) -> Any:
        self.session.add(row)
        await self.session.flush()
        return row

    # -- organizations --------------------------------------------------------------------------

    async def get_org(self, org_id: str) -> m.Organization | None:
        return await self.session.get(m.Organization, org_id)

    async def org_by_name(self, name_key: str) -> m.Organization | None:
        return (await self.session.scalars(select(m.Organization).where(m.Organization.name_key == name_key))).first()

    async def org_member(self, org_id: str, user_id: str) -> m.OrganizationMember | None:
        return await self.session.get(m.OrganizationMember, (org_id, user_id))

    async def count_org_admins(self, org_id: str) -> int:
        stmt = select(func.count()).where(
            m.OrganizationMember.organization_id == org_id, m.OrganizationMember.role == "admin"
        )
        return (await self.session.execute(stmt)).scalar_one()

    async def list_orgs(self, page: Page, *, user_id: str | None = None, org_id: str | None = None) -> Paged[Any]:
        """(organization, caller's role or None) pairs, by name."""
        if user_id is not None:
            stmt = select(m.Organization, m.OrganizationMember.role).join(
                m.OrganizationMember,
                and_(
                    m.OrganizationMember.organization_id == m.Organization.id,
                    m.OrganizationMember.user_id == user_id,
                ),
            )
        else:
            stmt = select(m.Organization, null().label("role"))
        if org_id is not None:
            stmt = stmt.where(m.Organization.id == org_id)
        stmt = _page(stmt, [m.Organization.name_key, m.Organization.id], page)
        rows = [tuple(r) for r in (await self.session.execute(stmt)).all()]
        return _paged(rows, page, lambda r: (r[0].name_key, r[0].id))

    async def list_org_members(self, org_id: str, page: Page) -> Paged[OrgMemberRow]:
        stmt = (
            select(m.OrganizationMember, m.User)
            .join(m.User, m.User.id == m.OrganizationMember.user_id)
            .where(m.OrganizationMember.organization_id == org_id)
        )
        stmt = _page(stmt, [m.User.email_key, m.User.id], page)
        rows = [OrgMemberRow(om, u) for om, u in (await self.session.execute(stmt)).all()]
        return _paged(rows, page, lambda r: (r.user.email_key, r.user.id))

    async def user_space_count_in_org(self, org_id: str, user_id: str) -> int:
        stmt = (
            select(func.count())
            .select_from(m.SpaceMember)
            .join(m.Space, m.Space.id == m.SpaceMember.space_id)
            .where(m.Space.organization_id == org_id, m.SpaceMember.user_id == user_id)
        )
        return (await self.session.execute(stmt)).scalar_one()

    async def delete_org_member(self, org_id: str, user_id: str) -> None:
        await self.session.execute(
            delete(m.OrganizationMember).where(
                m.OrganizationMember.organization_id == org_id, m.OrganizationMember.user_id == user_id
            )
        )

    # -- spaces -----------------------------------------------------------------------------------

    async def get_space(self, space_id: str, *, for_update: bool = False) -> m.Space | None:
        if not space_id:
            return None
        return await self.session.get(m.Space, space_id, with_for_update=for_update)

    async def space_by_name(self, org_id: str, name_key: str) -> m.Space | None:
        stmt = select(m.Space).where(m.Space.organization_id == org_id, m.Space.name_key == name_key)
        return (await self.session.scalars(stmt)).first()

    async def list_spaces(
        self,
        page: Page,
        *,
        org_ids: Sequence[str] | None = None,
        member_user_id: str | None = None,
        admin_org_ids: Sequence[str] = (),
        space_id: str | None = None,
        include_archived: bool = False,
    ) -> Paged[m.Space]:
        """Spaces by organization then name. With `member_user_id`, only spaces the user is a member of,
        plus every space of `admin_org_ids`."""
        stmt = select(m.Space)
        if org_ids is not None:
            stmt = stmt.where(m.Space.organization_id.in_(list(org_ids)))
        if space_id is not None:
            stmt = stmt.where(m.Space.id == space_id)
        if member_user_id is not None:
            is_member = exists().where(m.SpaceMember.space_id == m.Space.id, m.SpaceMember.user_id == member_user_id)
            stmt = stmt.where(or_(is_member, m.Space.organization_id.in_(list(admin_org_ids))))
        if not include_archived:
            stmt = stmt.where(m.Space.archived_at.is_(None))
        stmt = _page(stmt, [m.Space.organization_id, m.Space.name_key, m.Space.id], page)
        rows = list((await self.session.scalars(stmt)).all())
        return _paged(rows, page, lambda s: (s.organization_id, s.name_key, s.id))

    async def admin_org_ids(self, user_id: str) -> list[str]:
        stmt = select(m.OrganizationMember.organization_id).where(
            m.OrganizationMember.user_id == user_id, m.OrganizationMember.role == "admin"
        )
        return list((await self.session.scalars(stmt)).all())

    async def space_member(self, space_id: str, user_id: str, *, for_update: bool = False) -> m.SpaceMember | None:
        if not space_id or not user_id:
            return None
        return await self.session.get(m.SpaceMember, (space_id, user_id), with_for_update=for_update)

    async def member_row(self, space_id: str, user_id: str) -> MemberRow | None:
        stmt = (
            select(m.SpaceMember, m.User)
            .join(m.User, m.User.id == m.SpaceMember.user_id)
            .where(m.SpaceMember.space_id == space_id, m.SpaceMember.user_id == user_id)
        )
        row = (await self.session.execute(stmt)).first()
        return MemberRow(row[0], row[1]) if row else None

    async def count_owners(self, space_id: str) -> int:
        stmt = select(func.count()).where(m.SpaceMember.space_id == space_id, m.SpaceMember.role == "owner")
        return (await self.session.execute(stmt)).scalar_one()

    async def any_owner_exists(self) -> bool:
        return bool((await self.session.execute(select(exists().where(m.SpaceMember.role == "owner")))).scalar())

    async def list_members(
        self, space_id: str, page: Page, *, role: str | None = None, availability: str | None = None
    ) -> Paged[MemberRow]:
        stmt = (
            select(m.SpaceMember, m.User)
            .join(m.User, m.User.id == m.SpaceMember.user_id)
            .where(m.SpaceMember.space_id == space_id)
        )
        if role:
            stmt = stmt.where(m.SpaceMember.role == role)
        if availability:
            stmt = stmt.where(m.SpaceMember.availability == availability)
        stmt = _page(stmt, [m.User.email_key, m.User.id], page)
        rows = [MemberRow(sm, u) for sm, u in (await self.session.execute(stmt)).all()]
        return _paged(rows, page, lambda r: (r.user.email_key, r.user.id))

    async def delete_space_member(self, space_id: str, user_id: str) -> None:
        await self.session.execute(
            delete(m.SpaceMember).where(m.SpaceMember.space_id == space_id, m.SpaceMember.user_id == user_id)
        )

    async def user_spaces(self, user_id: str) -> list[SpaceAccessRow]:
        """The user's non-archived spaces, oldest membership first."""
        stmt = (
            select(m.Space, m.Organization, m.SpaceMember.role)
            .join(m.SpaceMember, m.SpaceMember.space_id == m.Space.id)
            .join(m.Organization, m.Organization.id == m.Space.organization_id)
            .where(m.SpaceMember.user_id == user_id, m.Space.archived_at.is_(None))
            .order_by(m.SpaceMember.created_at, m.Space.id)
        )
        return [SpaceAccessRow(s, o, r) for s, o, r in (await self.session.execute(stmt)).all()]

    async def online_agent_count(self, space_id: str) -> int:
        stmt = select(func.count()).where(
            m.SpaceMember.space_id == space_id,
            m.SpaceMember.availability == "online",
            m.SpaceMember.role.in_(["agent", "manager", "owner"]),
        )
        return (await self.session.execute(stmt)).scalar_one()

    # -- users ------------------------------------------------------------------------------------

    async def get_user(self, user_id: str) -> m.User | None:
        if not user_id:
            return None
        return await self.session.get(m.User, user_id)

    async def user_by_email(self, email_key: str) -> m.User | None:
        return (await self.session.scalars(select(m.User).where(m.User.email_key == email_key))).first()

    async def user_by_setup_hash(self, token_hash: bytes) -> m.User | None:
        stmt = select(m.User).where(m.User.setup_token_hash == token_hash).with_for_update()
        return (await self.session.scalars(stmt)).first()

    # -- teams ------------------------------------------------------------------------------------

    async def get_team(self, team_id: str) -> m.Team | None:
        if not team_id:
            return None
        return await self.session.get(m.Team, team_id)

    async def team_by_name(self, space_id: str, name_key: str) -> m.Team | None:
        stmt = select(m.Team).where(m.Team.space_id == space_id, m.Team.name_key == name_key)
        return (await self.session.scalars(stmt)).first()

    async def team_member_count(self, team_id: str) -> int:
        stmt = select(func.count()).where(m.TeamMember.team_id == team_id)
        return (await self.session.execute(stmt)).scalar_one()

    async def list_teams(self, space_id: str, page: Page, *, user_id: str | None = None) -> Paged[TeamRow]:
        count = select(func.count()).where(m.TeamMember.team_id == m.Team.id).correlate(m.Team).scalar_subquery()
        stmt = select(m.Team, count).where(m.Team.space_id == space_id)
        if user_id:
            stmt = stmt.where(exists().where(m.TeamMember.team_id == m.Team.id, m.TeamMember.user_id == user_id))
        stmt = _page(stmt, [m.Team.name_key, m.Team.id], page)
        rows = [TeamRow(t, n) for t, n in (await self.session.execute(stmt)).all()]
        return _paged(rows, page, lambda r: (r.team.name_key, r.team.id))

    async def team_member(self, team_id: str, user_id: str) -> m.TeamMember | None:
        return await self.session.get(m.TeamMember, (team_id, user_id))

    async def team_member_row(self, team_id: str, user_id: str) -> TeamMemberRow | None:
        stmt = (
            select(m.TeamMember, m.User)
            .join(m.User, m.User.id == m.TeamMember.user_id)
            .where(m.TeamMember.team_id == team_id, m.TeamMember.user_id == user_id)
        )
        row = (await self.session.execute(stmt)).first()
        return TeamMemberRow(row[0], row[1]) if row else None

    async def list_team_members(self, team_id: str, page: Page) -> Paged[TeamMemberRow]:
        stmt = (
            select(m.TeamMember, m.User)
            .join(m.User, m.User.id == m.TeamMember.user_id)
            .where(m.TeamMember.team_id == team_id)
        )
        stmt = _page(stmt, [m.User.email_key, m.User.id], page)
        rows = [TeamMemberRow(tm, u) for tm, u in (await self.session.execute(stmt)).all()]
        return _paged(rows, page, lambda r: (r.user.email_key, r.user.id))

    async def delete_team_member(self, team_id: str, user_id: str) -> None:
        await self.session.execute(
            delete(m.TeamMember).where(m.TeamMember.team_id == team_id, m.TeamMember.user_id == user_id)
        )

    async def delete_team(self, team_id: str) -> None:
        await self.session.execute(delete(m.Team).where(m.Team.id == team_id))

    async def remove_user_from_space_teams(self, space_id: str, user_id: str) -> list[str]:
        """Remove the user from every team of the space; the ids of the teams they left."""
        team_ids = select(m.Team.id).where(m.Team.space_id == space_id)
        stmt = (
            delete(m.TeamMember)
            .where(m.TeamMember.user_id == user_id, m.TeamMember.team_id.in_(team_ids))
            .returning(m.TeamMember.team_id)
        )
        return sorted((await self.session.scalars(stmt)).all())

    # -- API keys ---------------------------------------------------------------------------------

    async def get_api_key(self, key_id: str) -> m.ApiKey | None:
        if not key_id:
            return None
        return await self.session.get(m.ApiKey, key_id)

    async def active_api_key_by_name(self, space_id: str, name_key: str) -> m.ApiKey | None:
        stmt = select(m.ApiKey).where(
            m.ApiKey.space_id == space_id, m.ApiKey.name_key == name_key, m.ApiKey.revoked_at.is_(None)
        )
        return (await self.session.scalars(stmt)).first()

    async def list_api_keys(self, space_id: str, page: Page, *, include_revoked: bool) -> Paged[m.ApiKey]:
        stmt = select(m.ApiKey).where(m.ApiKey.space_id == space_id)
        if not include_revoked:
            stmt = stmt.where(m.ApiKey.revoked_at.is_(None))
        stmt = _page(stmt, [m.ApiKey.name_key, m.ApiKey.id], page)
        rows = list((await self.session.scalars(stmt)).all())
        return _paged(rows, page, lambda k: (k.name_key, k.id))

    async def touch_api_key(self, key_id: str, min_interval: dt.timedelta) -> None:
        """Record use, at most once per `min_interval` (skipping rows another request is touching)."""
        await self.session.execute(
            update(m.ApiKey)
            .where(
                m.ApiKey.id == key_id,
                or_(m.ApiKey.last_used_at.is_(None), m.ApiKey.last_used_at < func.now() - min_interval),
            )
            .values(last_used_at=func.now())
        )

    # -- refresh tokens ---------------------------------------------------------------------------

    async def refresh_by_hash(self, token_hash: bytes) -> m.RefreshToken | None:
        stmt = select(m.RefreshToken).where(m.RefreshToken.token_hash == token_hash).with_for_update()
        return (await self.session.scalars(stmt)).first()

    async def revoke_refresh_tokens(
        self, *, user_id: str | None = None, family_id: str | None = None, except_family: str | None = None
    ) -> int:
        """Revoke live refresh tokens of a user or of one session; the number of sessions revoked."""
        stmt = update(m.RefreshToken).where(m.RefreshToken.revoked_at.is_(None), m.RefreshToken.used_at.is_(None))
        if user_id is not None:
            stmt = stmt.where(m.RefreshToken.user_id == user_id)
        if family_id is not None:
            stmt = stmt.where(m.RefreshToken.family_id == family_id)
        if except_family is not None:
            stmt = stmt.where(m.RefreshToken.family_id != except_family)
        result = await self.session.execute(stmt.values(revoked_at=func.now()).returning(m.RefreshToken.family_id))
        return len(set(result.scalars().all()))

    async def revoke_family(self, family_id: str) -> None:
        await self.session.execute(
            update(m.RefreshToken)
            .where(m.RefreshToken.family_id == family_id, m.RefreshToken.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )

    # -- login throttle ---------------------------------------------------------------------------

    async def throttle(self, email_key: str) -> m.LoginThrottle | None:
        return await self.session.get(m.LoginThrottle, email_key)

    async def record_login_failure(self, email_key: str, threshold: int, base: float, cap: float) -> dt.datetime | None:
        """Count a failure atomically; from the `threshold`-th on, lock for base·2^(n-threshold) s (≤ cap)."""
        failures = (
            await self.session.execute(
                pg_insert(m.LoginThrottle)
                .values(email_key=email_key, failures=1, last_failure_at=func.now())
                .on_conflict_do_update(
                    index_elements=[m.LoginThrottle.email_key],
                    set_={"failures": m.LoginThrottle.failures + 1, "last_failure_at": func.now()},
                )
                .returning(m.LoginThrottle.failures)
            )
        ).scalar_one()
        if failures < threshold:
            return None
        seconds = min(cap, base * 2 ** min(failures - threshold, 30))
        locked_until = (
            await self.session.execute(
                update(m.LoginThrottle)
                .where(m.LoginThrottle.email_key == email_key)
                .values(locked_until=func.now() + dt.timedelta(seconds=seconds))
                .returning(m.LoginThrottle.locked_until)
            )
        ).scalar_one()
        return locked_until

    async def reset_login_failures(self, email_key: str) -> None:
        await self.session.execute(delete(m.LoginThrottle).where(m.LoginThrottle.email_key == email_key))

    # -- business hours ---------------------------------------------------------------------------

    async def weekly_hours(self, space_id: str) -> list[m.BusinessHoursRange]:
        stmt = (
            select(m.BusinessHoursRange)
            .where(m.BusinessHoursRange.space_id == space_id)
            .order_by(m.BusinessHoursRange.weekday, m.BusinessHoursRange.opens)
        )
        return list((await self.session.scalars(stmt)).all())

    async def replace_weekly_hours(self, space_id: str, ranges: Sequence[tuple[int, int, int]]) -> None:
        await self.session.execute(delete(m.BusinessHoursRange).where(m.BusinessHoursRange.space_id == space_id))
        for weekday, opens, closes in ranges:
            self.session.add(m.BusinessHoursRange(space_id=space_id, weekday=weekday, opens=opens, closes=closes))
        await self.session.flush()

    async def hours_exceptions(self, space_id: str) -> list[m.BusinessHoursException]:
        stmt = (
            select(m.BusinessHoursException)
            .where(m.BusinessHoursException.space_id == space_id)
            .order_by(m.BusinessHoursException.day)
        )
        return list((await self.session.scalars(stmt)).all())

    async def hours_exception(self, space_id: str, day: dt.date) -> m.BusinessHoursException | None:
        return await self.session.get(m.BusinessHoursException, (space_id, day))

    async def upsert_hours_exception(self, space_id: str, day: dt.date, name: str, ranges: list[list[int]]) -> None:
        await self.session.execute(
            pg_insert(m.BusinessHoursException)
            .values(space_id=space_id, day=day, name=name, ranges=ranges)
            .on_conflict_do_update(
                index_elements=[m.BusinessHoursException.space_id, m.BusinessHoursException.day],
                set_={"name": name, "ranges": ranges},
            )
        )

    async def delete_hours_exception(self, space_id: str, day: dt.date) -> bool:
        result = await self.session.execute(
            delete(m.BusinessHoursException)
            .where(m.BusinessHoursException.space_id == space_id, m.BusinessHoursException.day == day)
            .returning(m.BusinessHoursException.day)
        )
        return result.first() is not None
