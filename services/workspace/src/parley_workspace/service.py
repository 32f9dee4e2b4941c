"""Domain logic of the workspace: who may do what, and the rules of each change.

Knows nothing of protobuf, gRPC or NATS: it takes the verified `Caller`, plain values, and
returns model rows or small dataclasses; changes and their events happen in one transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from email_validator import EmailNotValidError, validate_email
from parley_kit.auth import ANY_SPACE, Caller, SigningKey, TokenIssuer
from parley_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from parley_kit.permissions import Permission, Role, allows, check

from parley_workspace import hours as bh
from parley_workspace import metrics
from parley_workspace import models as m
from parley_workspace.paging import Page, Paged
from parley_workspace.repository import (
    MemberRow,
    OrgMemberRow,
    SpaceAccessRow,
    Store,
    TeamMemberRow,
    TeamRow,
    Tx,
)
from parley_workspace.security import (
    PasswordHasher,
    digest,
    new_secret,
    require_strong_password,
    same_digest,
    same_secret,
)

log = logging.getLogger(__name__)

SPACE_ROLES = ("owner", "manager", "agent")
ORG_ROLES = ("admin", "billing_admin", "member")
AVAILABILITY = ("online", "away", "offline")
LOGIN_FAILED = "email or password is incorrect"
REFRESH_FAILED = "refresh token is invalid, expired or revoked; log in again"
API_KEY_FAILED = "API key is invalid or revoked"
API_KEY_PREFIX = "pk_"
REFRESH_PREFIX = "rt_"
SETUP_PREFIX = "st_"
API_KEY_TOUCH_INTERVAL = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Config:
    access_ttl: int = 900
    refresh_ttl: int = 30 * 86_400
    invite_ttl: int = 7 * 86_400
    lockout_threshold: int = 5
    lockout_base_seconds: float = 2.0
    lockout_max_seconds: float = 900.0
    operator_secret: str = ""


@dataclass(frozen=True)
class Event:
    """A change others may react to; events.py turns it into a protobuf message on `workspace.<kind>`."""

    kind: str
    space_id: str
    actor: str
    data: dict[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    occurred_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    access_expires_at: dt.datetime
    space_id: str
    role: str
    org_id: str
    refresh_token: str = ""
    refresh_expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class LoginResult:
    tokens: IssuedTokens
    user: m.User
    spaces: list[SpaceAccessRow]


@dataclass(frozen=True)
class Identity:
    caller: Caller
    user: m.User | None
    spaces: list[SpaceAccessRow]


@dataclass(frozen=True)
class Invitation:
    user: m.User
    member: MemberRow
    created: bool
    setup_token: str


@dataclass(frozen=True)
class BootstrapResult:
    org: m.Organization
    space: m.Space
    user: m.User
    user_created: bool
    tokens: IssuedTokens


@dataclass(frozen=True)
class VerifiedKey:
    key: m.ApiKey
    org_id: str


@dataclass(frozen=True)
class Hours:
    space: m.Space
    weekly: dict[int, list[bh.Range]]
    exceptions: list[m.BusinessHoursException]

    @property
    def configured(self) -> bool:
        return any(self.weekly.values())


@dataclass(frozen=True)
class AvailabilityCheck:
    decision: bh.Decision
    time_zone: str
    online_agents: int


# -- input validation ---------------------------------------------------------------------------


def clean_name(value: str, what: str) -> tuple[str, str]:
    """A display name: whitespace collapsed, 1..100 printable characters; and its case-insensitive key."""
    name = " ".join(value.split())
    if not name:
        raise InvalidArgument(f"{what} name is empty; give a name")
    if len(name) > 100:
        raise InvalidArgument(f"{what} name is too long ({len(name)} characters); use at most 100")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidArgument(f"{what} name contains control characters")
    return name, name.casefold()


def clean_email(value: str) -> tuple[str, str]:
    """The normalised email and its unique key (lower-cased)."""
    try:
        info = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidArgument(f"email '{value}' is not valid: {exc}") from exc
    return info.normalized, info.normalized.lower()


def space_role(value: str) -> str:
    if not value:
        raise InvalidArgument("role is required: owner, manager or agent")
    if value not in SPACE_ROLES:
        raise InvalidArgument(f"role '{value}' is not a space role; use owner, manager or agent")
    return value


def org_role(value: str) -> str:
    if not value:
        raise InvalidArgument("role is required: admin, billing_admin or member")
    if value not in ORG_ROLES:
        raise InvalidArgument(f"role '{value}' is not an organization role; use admin, billing_admin or member")
    return value


def _parse_secret_token(token: str, prefix: str) -> tuple[str, str] | None:
    """ "<prefix><id>_<secret>" to (id, secret), or None when malformed."""
    if not token.startswith(prefix):
        return None
    key_id, sep, secret = token[len(prefix) :].partition("_")
    if not sep or not key_id or not secret or len(key_id) > 32:
        return None
    return key_id, secret


def _id() -> str:
    return uuid.uuid4().hex


class WorkspaceService:
    """Every operation of the workspace service."""

    def __init__(
        self,
        store: Store,
        *,
        signing_key: SigningKey,
        hasher: PasswordHasher,
        config: Config | None = None,
        verification_jwks: dict[str, Any] | None = None,
    ) -> None:
        self._store = store
        self._key = signing_key
        self._issuer = TokenIssuer(signing_key)
        self._hasher = hasher
        self._cfg = config or Config()
        self._jwks = verification_jwks or {"keys": []}

    # -- tokens -------------------------------------------------------------------------------------

    def jwks(self) -> tuple[dict[str, Any], str]:
        """The accepted public keys (the configured JWKS plus the signing key's own) and the signing key id."""
        keys = [k for k in self._jwks.get("keys", []) if k.get("kid") != self._key.kid]
        return {"keys": [*keys, self._key.public_jwk()]}, self._key.kid

    def _access(self, user_id: str, space_id: str, role: str, org_id: str) -> tuple[str, dt.datetime]:
        token = self._issuer.issue(
            space_id=space_id, role=role, subject=f"user:{user_id}", org_id=org_id, ttl=self._cfg.access_ttl
        )
        return token, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._cfg.access_ttl)

    async def _issue(
        self, tx: Tx, user: m.User, access: SpaceAccessRow | None, *, family_id: str | None = None
    ) -> IssuedTokens:
        """An access token for `access` (or no space) and a new refresh token in `family_id` (new session if None)."""
        space_id, role, org_id = (
            (access.space.id, access.role, access.space.organization_id) if access else ("", "", "")
        )
        token, expires = self._access(user.id, space_id, role, org_id)
        secret, token_id = new_secret(), _id()
        refresh = f"{REFRESH_PREFIX}{token_id}_{secret}"
        refresh_expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._cfg.refresh_ttl)
        await tx.add(
            m.RefreshToken(
                id=token_id,
                family_id=family_id or _id(),
                user_id=user.id,
                space_id=space_id,
                token_hash=digest(refresh),
                expires_at=refresh_expires,
            )
        )
        return IssuedTokens(token, expires, space_id, role, org_id, refresh, refresh_expires)

    @staticmethod
    def _pick_space(spaces: Sequence[SpaceAccessRow], space_id: str) -> SpaceAccessRow | None:
        if not space_id:
            return spaces[0] if spaces else None
        for access in spaces:
            if access.space.id == space_id:
                return access
        raise PermissionDenied(f"you are not a member of space '{space_id}' (or it is archived)")

    async def _check_throttle(self, tx: Tx, key: str) -> None:
        row = await tx.throttle(key)
        if row is not None and row.locked_until is not None:
            wait = (row.locked_until - await tx.now()).total_seconds()
            if wait > 0:
                metrics.LOGINS.labels("locked").inc()
                raise ResourceExhausted(
                    f"too many failed attempts for this account; try again in {int(wait) + 1} seconds"
                )

    async def _fail(self, key: str) -> None:
        async with self._store.tx() as tx:
            await tx.record_login_failure(
                key, self._cfg.lockout_threshold, self._cfg.lockout_base_seconds, self._cfg.lockout_max_seconds
            )

    async def login(self, email: str, password: str, space_id: str = "") -> LoginResult:
        key = " ".join(email.split()).lower()[:320]
        with contextlib.suppress(InvalidArgument):  # an invalid email is answered like any unknown one
            key = clean_email(email)[1]
        async with self._store.tx() as tx:
            await self._check_throttle(tx, key)
            user = await tx.user_by_email(key)
        ok = await self._hasher.verify(user.password_hash if user else None, password)
        if not ok or user is None:
            await self._fail(key)
            metrics.LOGINS.labels("failed").inc()
            raise Unauthenticated(LOGIN_FAILED)
        async with self._store.tx() as tx:
            await tx.reset_login_failures(key)
            user = await tx.get_user(user.id)
            assert user is not None
            if user.password_hash and self._hasher.needs_rehash(user.password_hash):
                user.password_hash = await self._hasher.hash(password)
            user.last_login_at = await tx.now()
            spaces = await tx.user_spaces(user.id)
            tokens = await self._issue(tx, user, self._pick_space(spaces, space_id))
        metrics.LOGINS.labels("ok").inc()
        return LoginResult(tokens, user, spaces)

    async def refresh(self, refresh_token: str, space_id: str = "") -> IssuedTokens:
        async with self._store.tx() as tx:
            row = await tx.refresh_by_hash(digest(refresh_token))
            now = await tx.now()
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                raise Unauthenticated(REFRESH_FAILED)
            if row.used_at is not None:
                # A used-up token presented again: someone holds a copy. End the whole session.
                await tx.revoke_family(row.family_id)
                log.warning("refresh token reuse; session revoked", extra={"user_id": row.user_id})
                reused = True
            else:
                reused = False
                row.used_at = now
                user = await tx.get_user(row.user_id)
                if user is None:
                    raise Unauthenticated(REFRESH_FAILED)
                spaces = await tx.user_spaces(user.id)
                wanted = space_id or row.space_id
                if not space_id and not any(a.space.id == wanted for a in spaces):
                    wanted = ""  # no longer a member of the session's space: fall back to the first one
                tokens = await self._issue(tx, user, self._pick_space(spaces, wanted), family_id=row.family_id)
        if reused:
            raise Unauthenticated(REFRESH_FAILED)
        return tokens

    async def logout(self, refresh_token: str, *, all_sessions: bool = False) -> int:
        async with self._store.tx() as tx:
            row = await tx.refresh_by_hash(digest(refresh_token))
            if row is None or row.revoked_at is not None or row.used_at is not None:
                raise Unauthenticated(REFRESH_FAILED)
            if all_sessions:
                return await tx.revoke_refresh_tokens(user_id=row.user_id)
            return await tx.revoke_refresh_tokens(family_id=row.family_id)

    async def switch_space(self, caller: Caller, space_id: str) -> IssuedTokens:
        user_id = self._require_user(caller)
        if not space_id:
            raise InvalidArgument("space_id is required")
        async with self._store.tx() as tx:
            access = self._pick_space(await tx.user_spaces(user_id), space_id)
        assert access is not None
        token, expires = self._access(user_id, access.space.id, access.role, access.space.organization_id)
        return IssuedTokens(token, expires, access.space.id, access.role, access.space.organization_id)

    async def whoami(self, caller: Caller) -> Identity:
        async with self._store.tx() as tx:
            user = await tx.get_user(caller.user_id or "")
            spaces = await tx.user_spaces(user.id) if user else []
        return Identity(caller, user, spaces)

    async def verify_api_key(self, token: str) -> VerifiedKey:
        """The key a "pk_<id>_<secret>" token names; Unauthenticated for malformed, unknown or revoked keys."""
        parsed = _parse_secret_token(token, API_KEY_PREFIX)
        if parsed is None:
            raise Unauthenticated(API_KEY_FAILED)
        key_id, secret = parsed
        async with self._store.tx() as tx:
            key = await tx.get_api_key(key_id)
            if key is None or not same_digest(key.secret_hash, digest(secret)) or key.revoked_at is not None:
                raise Unauthenticated(API_KEY_FAILED)
            space = await tx.get_space(key.space_id)
            if space is None or space.archived_at is not None:
                raise Unauthenticated("API key belongs to an archived space")
            await tx.touch_api_key(key.id, API_KEY_TOUCH_INTERVAL)
        return VerifiedKey(key, space.organization_id)

    async def verify_api_key_for(self, caller: Caller, token: str) -> VerifiedKey:
        check(caller.role, Permission.INTERNAL)
        return await self.verify_api_key(token)

    # -- authorization helpers --------------------------------------------------------------------------

    @staticmethod
    def _require_user(caller: Caller) -> str:
        if caller.user_id is None:
            raise PermissionDenied("only a logged-in user can do this (not an API key or a service token)")
        return caller.user_id

    @staticmethod
    def _space_id(caller: Caller, requested: str) -> str:
        if caller.space_id == ANY_SPACE:
            if not requested:
                raise InvalidArgument("space_id is required for platform-wide service tokens")
            return requested
        space_id = requested or caller.space_id
        if not space_id:
            raise InvalidArgument("this token is for no space: pass space_id, or log into a space first")
        return space_id

    async def _org_role(self, tx: Tx, caller: Caller, org_id: str) -> str | None:
        """The caller's organization role: 'admin' for platform tokens, None for API keys and strangers."""
        if caller.space_id == ANY_SPACE and allows(caller.role, Permission.INTERNAL):
            return "admin"
        if caller.user_id is None:
            return None
        member = await tx.org_member(org_id, caller.user_id)
        return member.role if member else None

    async def _space_role(self, tx: Tx, caller: Caller, space_id: str) -> str:
        """The caller's effective role in the space: the token's, re-checked against current membership
        for users (so a removal or demotion takes effect here at once)."""
        if caller.user_id is None:
            return caller.role
        member = await tx.space_member(space_id, caller.user_id)
        if member is None:
            raise PermissionDenied(f"you are no longer a member of space '{space_id}'")
        order = {"agent": 0, "manager": 1, "owner": 2}
        return min(caller.role, member.role, key=lambda r: order.get(r, -1))

    async def _authorize(
        self,
        tx: Tx,
        caller: Caller,
        requested_space: str,
        permission: Permission,
        *,
        org_admin: bool = False,
        write: bool = False,
    ) -> m.Space:
        """The space a request acts on, once the caller may use `permission` there.

        A token acts on its own space; with `org_admin`, admins of the space's organization may act
        on any of its spaces. Another space is refused without saying whether it exists.
        """
        space_id = self._space_id(caller, requested_space)
        in_scope = caller.space_id in (ANY_SPACE, space_id)
        space = await tx.get_space(space_id)
        if in_scope:
            if space is None:
                raise NotFound(f"space '{space_id}' not found")
            if not (org_admin and await self._org_role(tx, caller, space.organization_id) == "admin"):
                check(await self._space_role(tx, caller, space_id), permission)
        elif space is None or not org_admin or await self._org_role(tx, caller, space.organization_id) != "admin":
            if not caller.space_id:
                raise PermissionDenied(f"this token is for no space; switch to space '{space_id}' first")
            raise PermissionDenied(f"this token is for space '{caller.space_id}', not '{space_id}'")
        if write and space.archived_at is not None:
            raise FailedPrecondition(f"space '{space.name}' is archived; it can no longer be changed")
        return space

    def _in_caller_space(self, caller: Caller, space_id: str) -> bool:
        return caller.space_id in (ANY_SPACE, space_id)

    # -- organizations ------------------------------------------------------------------------------------

    async def create_org(self, caller: Caller, name: str) -> tuple[m.Organization, str]:
        user_id = self._require_user(caller)
        name, key = clean_name(name, "organization")
        async with self._store.tx() as tx:
            if await tx.org_by_name(key):
                raise AlreadyExists(f"an organization named '{name}' already exists; choose another name")
            org = await tx.add(m.Organization(id=_id(), name=name, name_key=key))
            await self._add_org_member(tx, caller, org.id, user_id, "admin")
        return org, "admin"

    async def _add_org_member(
        self, tx: Tx, caller: Caller, org_id: str, user_id: str, role: str
    ) -> m.OrganizationMember:
        member = await tx.add(m.OrganizationMember(organization_id=org_id, user_id=user_id, role=role))
        await tx.emit(
            Event("org_member.added", "", caller.subject, {"organization_id": org_id, "user_id": user_id, "role": role})
        )
        return member

    async def _org_for(self, tx: Tx, caller: Caller, org_id: str, *, admin: bool) -> tuple[m.Organization, str | None]:
        org = await tx.get_org(org_id)
        role = await self._org_role(tx, caller, org_id) if org else None
        if role is None and org is not None and caller.kind == "apikey":
            space = await tx.get_space(caller.space_id)
            role = "member" if space and space.organization_id == org_id else None
        if org is None or role is None:
            raise NotFound(f"organization '{org_id}' not found")
        if admin and role != "admin":
            raise PermissionDenied("only an admin of the organization can do this (organization role 'admin')")
        return org, role

    async def get_org(self, caller: Caller, org_id: str) -> tuple[m.Organization, str | None]:
        async with self._store.tx() as tx:
            return await self._org_for(tx, caller, org_id, admin=False)

    async def rename_org(self, caller: Caller, org_id: str, name: str) -> tuple[m.Organization, str | None]:
        name, key = clean_name(name, "organization")
        async with self._store.tx() as tx:
            org, role = await self._org_for(tx, caller, org_id, admin=True)
            other = await tx.org_by_name(key)
            if other is not None and other.id != org.id:
                raise AlreadyExists(f"an organization named '{name}' already exists; choose another name")
            org.name, org.name_key = name, key
        return org, role

    async def list_orgs(self, caller: Caller, page: Page) -> Paged[Any]:
        async with self._store.tx() as tx:
            if caller.user_id is not None:
                return await tx.list_orgs(page, user_id=caller.user_id)
            if caller.space_id == ANY_SPACE:
                return await tx.list_orgs(page)
            space = await tx.get_space(caller.space_id)
            return await tx.list_orgs(page, org_id=space.organization_id if space else "")

    async def list_org_members(self, caller: Caller, org_id: str, page: Page) -> Paged[OrgMemberRow]:
        async with self._store.tx() as tx:
            await self._org_for(tx, caller, org_id, admin=False)
            return await tx.list_org_members(org_id, page)

    async def _org_target(self, tx: Tx, caller: Caller, org_id: str, user_id: str) -> m.User:
        await self._org_for(tx, caller, org_id, admin=True)
        user = await tx.get_user(user_id)
        if user is None:
            raise NotFound(f"user '{user_id}' not found")
        return user

    async def add_org_member(self, caller: Caller, org_id: str, user_id: str, role: str) -> OrgMemberRow:
        role = org_role(role)
        async with self._store.tx() as tx:
            user = await self._org_target(tx, caller, org_id, user_id)
            if await tx.org_member(org_id, user_id):
                raise AlreadyExists(f"user '{user_id}' is already a member of the organization; set their role instead")
            member = await self._add_org_member(tx, caller, org_id, user_id, role)
        return OrgMemberRow(member, user)

    async def set_org_member_role(self, caller: Caller, org_id: str, user_id: str, role: str) -> OrgMemberRow:
        role = org_role(role)
        async with self._store.tx() as tx:
            user = await self._org_target(tx, caller, org_id, user_id)
            member = await tx.org_member(org_id, user_id)
            if member is None:
                raise NotFound(f"user '{user_id}' is not a member of the organization")
            if member.role == role:
                return OrgMemberRow(member, user)
            if member.role == "admin" and await tx.count_org_admins(org_id) <= 1:
                raise FailedPrecondition("the organization must keep at least one admin; make someone else admin first")
            previous, member.role = member.role, role
            await tx.emit(
                Event(
                    "org_member.role_changed",
                    "",
                    caller.subject,
                    {"organization_id": org_id, "user_id": user_id, "previous_role": previous, "role": role},
                )
            )
        return OrgMemberRow(member, user)

    async def remove_org_member(self, caller: Caller, org_id: str, user_id: str) -> None:
        async with self._store.tx() as tx:
            await self._org_target(tx, caller, org_id, user_id)
            member = await tx.org_member(org_id, user_id)
            if member is None:
                raise NotFound(f"user '{user_id}' is not a member of the organization")
            if member.role == "admin" and await tx.count_org_admins(org_id) <= 1:
                raise FailedPrecondition("the organization must keep at least one admin; make someone else admin first")
            spaces = await tx.user_space_count_in_org(org_id, user_id)
            if spaces:
                raise FailedPrecondition(
                    f"the user is still a member of {spaces} space(s) of the organization; remove them there first"
                )
            await tx.delete_org_member(org_id, user_id)
            await tx.emit(
                Event(
                    "org_member.removed",
                    "",
                    caller.subject,
                    {"organization_id": org_id, "user_id": user_id, "previous_role": member.role},
                )
            )

    # -- spaces ---------------------------------------------------------------------------------------------

    async def create_space(self, caller: Caller, org_id: str, name: str, time_zone: str = "") -> m.Space:
        name, key = clean_name(name, "space")
        tz = time_zone.strip() or "UTC"
        bh.zone(tz)
        async with self._store.tx() as tx:
            await self._org_for(tx, caller, org_id, admin=True)
            space = await self._new_space(tx, caller, org_id, name, key, tz)
            if caller.user_id is not None:
                await self._add_space_member(tx, caller, space, caller.user_id, "owner")
        return space

    async def _new_space(self, tx: Tx, caller: Caller, org_id: str, name: str, key: str, tz: str) -> m.Space:
        if await tx.space_by_name(org_id, key):
            raise AlreadyExists(f"the organization already has a space named '{name}'; choose another name")
        space = await tx.add(m.Space(id=_id(), organization_id=org_id, name=name, name_key=key, time_zone=tz))
        await tx.emit(Event("space.created", space.id, caller.subject, {"space": space}))
        return space

    async def get_space(self, caller: Caller, space_id: str) -> m.Space:
        async with self._store.tx() as tx:
            return await self._authorize(tx, caller, space_id, Permission.MEMBERS_READ, org_admin=True)

    async def rename_space(self, caller: Caller, space_id: str, name: str) -> m.Space:
        name, key = clean_name(name, "space")
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.SPACE_SETTINGS, org_admin=True, write=True)
            other = await tx.space_by_name(space.organization_id, key)
            if other is not None and other.id != space.id:
                raise AlreadyExists(f"the organization already has a space named '{name}'; choose another name")
            if space.name != name:
                space.name, space.name_key = name, key
                await tx.emit(Event("space.updated", space.id, caller.subject, {"space": space}))
        return space

    async def archive_space(self, caller: Caller, space_id: str) -> m.Space:
        async with self._store.tx() as tx:
            space = await tx.get_space(self._space_id(caller, space_id), for_update=True)
            if space is None or await self._org_role(tx, caller, space.organization_id) is None:
                raise NotFound(f"space '{space_id}' not found")
            if await self._org_role(tx, caller, space.organization_id) != "admin":
                raise PermissionDenied(
                    "only an admin of the organization can archive a space (organization role 'admin')"
                )
            if space.archived_at is None:
                space.archived_at = await tx.now()
                await tx.emit(Event("space.updated", space.id, caller.subject, {"space": space}))
        return space

    async def list_spaces(
        self, caller: Caller, org_id: str, page: Page, *, include_archived: bool = False
    ) -> Paged[m.Space]:
        async with self._store.tx() as tx:
            org_ids = None
            if org_id:
                await self._org_for(tx, caller, org_id, admin=False)
                org_ids = [org_id]
            if caller.user_id is not None:
                admin_of = await tx.admin_org_ids(caller.user_id)
                return await tx.list_spaces(
                    page,
                    org_ids=org_ids,
                    member_user_id=caller.user_id,
                    admin_org_ids=admin_of,
                    include_archived=include_archived,
                )
            if caller.space_id == ANY_SPACE:
                return await tx.list_spaces(page, org_ids=org_ids, include_archived=include_archived)
            return await tx.list_spaces(
                page, org_ids=org_ids, space_id=caller.space_id, include_archived=include_archived
            )

    async def _add_space_member(self, tx: Tx, caller: Caller, space: m.Space, user_id: str, role: str) -> m.SpaceMember:
        if await tx.space_member(space.id, user_id):
            raise AlreadyExists(f"user '{user_id}' is already a member of the space; set their role instead")
        if await tx.org_member(space.organization_id, user_id) is None:
            await self._add_org_member(tx, caller, space.organization_id, user_id, "member")
        member = await tx.add(m.SpaceMember(space_id=space.id, user_id=user_id, role=role, availability="offline"))
        await tx.emit(
            Event(
                "member.added",
                space.id,
                caller.subject,
                {"user_id": user_id, "role": role, "organization_id": space.organization_id},
            )
        )
        return member

    async def add_space_member(self, caller: Caller, space_id: str, user_id: str, role: str) -> MemberRow:
        role = space_role(role)
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_MANAGE, org_admin=True, write=True)
            user = await tx.get_user(user_id)
            if user is None:
                raise NotFound(f"user '{user_id}' not found")
            member = await self._add_space_member(tx, caller, space, user_id, role)
        return MemberRow(member, user)

    async def _member_of(self, tx: Tx, space: m.Space, user_id: str) -> MemberRow:
        row = await tx.member_row(space.id, user_id)
        if row is None:
            raise NotFound(f"user '{user_id}' is not a member of space '{space.name}'")
        return row

    async def set_space_member_role(self, caller: Caller, space_id: str, user_id: str, role: str) -> MemberRow:
        role = space_role(role)
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_MANAGE, org_admin=True, write=True)
            await tx.get_space(space.id, for_update=True)  # serialises owner-count checks of this space
            row = await self._member_of(tx, space, user_id)
            previous = row.member.role
            if previous == role:
                return row
            if previous == "owner" and await tx.count_owners(space.id) <= 1:
                raise FailedPrecondition("the space must keep at least one owner; make someone else owner first")
            row.member.role = role
            await tx.emit(
                Event(
                    "member.role_changed",
                    space.id,
                    caller.subject,
                    {"user_id": user_id, "previous_role": previous, "role": role},
                )
            )
        return row

    async def remove_space_member(self, caller: Caller, space_id: str, user_id: str) -> None:
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_MANAGE, org_admin=True, write=True)
            await tx.get_space(space.id, for_update=True)
            row = await self._member_of(tx, space, user_id)
            if row.member.role == "owner" and await tx.count_owners(space.id) <= 1:
                raise FailedPrecondition("the space must keep at least one owner; make someone else owner first")
            team_ids = await tx.remove_user_from_space_teams(space.id, user_id)
            await tx.delete_space_member(space.id, user_id)
            await tx.emit(
                Event(
                    "member.removed",
                    space.id,
                    caller.subject,
                    {"user_id": user_id, "previous_role": row.member.role, "removed_from_team_ids": team_ids},
                )
            )

    async def get_space_member(self, caller: Caller, space_id: str, user_id: str) -> MemberRow:
        """One member of the space (how other services check that a user belongs to a space)."""
        if not user_id:
            raise InvalidArgument("user_id is required")
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_READ, org_admin=True)
            return await self._member_of(tx, space, user_id)

    async def list_space_members(
        self, caller: Caller, space_id: str, page: Page, *, role: str = "", availability: str = ""
    ) -> Paged[MemberRow]:
        if role:
            space_role(role)
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_READ, org_admin=True)
            return await tx.list_members(space.id, page, role=role or None, availability=availability or None)

    # -- users --------------------------------------------------------------------------------------------

    async def create_user(
        self, caller: Caller, space_id: str, email: str, display_name: str, password: str, role: str
    ) -> MemberRow:
        email, key = clean_email(email)
        display_name, _ = clean_name(display_name or email.split("@")[0], "display")
        role = space_role(role)
        require_strong_password(password, email=email, display_name=display_name)
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_MANAGE, org_admin=True, write=True)
            if await tx.user_by_email(key):
                raise AlreadyExists(
                    f"a user with email '{email}' already exists; invite them to add them to this space"
                )
            password_hash = await self._hasher.hash(password)
            user = await tx.add(
                m.User(
                    id=_id(),
                    email=email,
                    email_key=key,
                    display_name=display_name,
                    password_hash=password_hash,
                    password_changed_at=await tx.now(),
                )
            )
            member = await self._add_space_member(tx, caller, space, user.id, role)
        return MemberRow(member, user)

    async def invite_user(self, caller: Caller, space_id: str, email: str, display_name: str, role: str) -> Invitation:
        email, key = clean_email(email)
        display_name, _ = clean_name(display_name or email.split("@")[0], "display")
        role = space_role(role)
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_MANAGE, org_admin=True, write=True)
            user = await tx.user_by_email(key)
            setup_token, created = "", user is None
            if user is None:
                user_id = _id()
                setup_token = f"{SETUP_PREFIX}{user_id}_{new_secret()}"
                user = await tx.add(
                    m.User(
                        id=user_id,
                        email=email,
                        email_key=key,
                        display_name=display_name,
                        setup_token_hash=digest(setup_token),
                        setup_expires_at=await tx.now() + dt.timedelta(seconds=self._cfg.invite_ttl),
                    )
                )
            member = await self._add_space_member(tx, caller, space, user.id, role)
        return Invitation(user, MemberRow(member, user), created, setup_token)

    async def accept_invite(self, setup_token: str, password: str, display_name: str = "") -> m.User:
        failed = "setup token is invalid, used or expired; ask for a new invitation"
        if not setup_token.startswith(SETUP_PREFIX):
            raise Unauthenticated(failed)
        name = clean_name(display_name, "display")[0] if display_name.strip() else ""
        async with self._store.tx() as tx:
            user = await tx.user_by_setup_hash(digest(setup_token))
            if user is None or user.setup_expires_at is None or user.setup_expires_at <= await tx.now():
                raise Unauthenticated(failed)
            require_strong_password(password, email=user.email, display_name=name or user.display_name)
            user.password_hash = await self._hasher.hash(password)
            user.password_changed_at = await tx.now()
            user.setup_token_hash, user.setup_expires_at = None, None
            if name:
                user.display_name = name
        return user

    async def _visible_user(self, tx: Tx, caller: Caller, user_id: str, permission: Permission) -> m.User:
        """A user the caller may see: themself, anyone for platform tokens, or a member of the caller's space."""
        user_id = user_id or (caller.user_id or "")
        if not user_id:
            raise InvalidArgument("user_id is required for this token")
        user = await tx.get_user(user_id)
        if user is not None and user_id == caller.user_id:
            return user
        if user is not None and caller.space_id == ANY_SPACE and allows(caller.role, Permission.INTERNAL):
            return user
        if user is None or not caller.space_id or await tx.space_member(caller.space_id, user_id) is None:
            raise NotFound(f"user '{user_id}' not found")
        check(await self._space_role(tx, caller, caller.space_id), permission)
        return user

    async def get_user(self, caller: Caller, user_id: str) -> m.User:
        async with self._store.tx() as tx:
            return await self._visible_user(tx, caller, user_id, Permission.MEMBERS_READ)

    async def update_user(self, caller: Caller, user_id: str, display_name: str) -> m.User:
        name, _ = clean_name(display_name, "display")
        async with self._store.tx() as tx:
            user = await self._visible_user(tx, caller, user_id, Permission.MEMBERS_MANAGE)
            user.display_name = name
        return user

    async def change_password(self, caller: Caller, current: str, new: str) -> int:
        user_id = self._require_user(caller)
        async with self._store.tx() as tx:
            user = await tx.get_user(user_id)
            if user is None:
                raise NotFound("your user no longer exists")
            await self._check_throttle(tx, user.email_key)
        if not await self._hasher.verify(user.password_hash, current):
            await self._fail(user.email_key)
            raise Unauthenticated("the current password is incorrect; nothing was changed")
        require_strong_password(new, email=user.email, display_name=user.display_name)
        if await self._hasher.verify(user.password_hash, new):
            raise InvalidArgument("the new password is the same as the current one; nothing was changed")
        new_hash = await self._hasher.hash(new)
        async with self._store.tx() as tx:
            user = await tx.get_user(user_id)
            assert user is not None
            user.password_hash = new_hash
            user.password_changed_at = await tx.now()
            await tx.reset_login_failures(user.email_key)
            return await tx.revoke_refresh_tokens(user_id=user_id)

    # -- teams ----------------------------------------------------------------------------------------------

    async def _team(
        self, tx: Tx, caller: Caller, team_id: str, permission: Permission, *, write: bool = False
    ) -> m.Team:
        team = await tx.get_team(team_id)
        if team is None or not self._in_caller_space(caller, team.space_id):
            raise NotFound(f"team '{team_id}' not found")
        await self._authorize(tx, caller, team.space_id, permission, write=write)
        return team

    async def create_team(self, caller: Caller, space_id: str, name: str) -> TeamRow:
        name, key = clean_name(name, "team")
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.TEAMS_MANAGE, write=True)
            if await tx.team_by_name(space.id, key):
                raise AlreadyExists(f"the space already has a team named '{name}'; choose another name")
            team = await tx.add(m.Team(id=_id(), space_id=space.id, name=name, name_key=key))
            await tx.emit(Event("team.created", space.id, caller.subject, {"team": team, "member_count": 0}))
        return TeamRow(team, 0)

    async def get_team(self, caller: Caller, team_id: str) -> TeamRow:
        async with self._store.tx() as tx:
            team = await self._team(tx, caller, team_id, Permission.TEAMS_READ)
            return TeamRow(team, await tx.team_member_count(team.id))

    async def rename_team(self, caller: Caller, team_id: str, name: str) -> TeamRow:
        name, key = clean_name(name, "team")
        async with self._store.tx() as tx:
            team = await self._team(tx, caller, team_id, Permission.TEAMS_MANAGE, write=True)
            other = await tx.team_by_name(team.space_id, key)
            if other is not None and other.id != team.id:
                raise AlreadyExists(f"the space already has a team named '{name}'; choose another name")
            count = await tx.team_member_count(team.id)
            if team.name != name:
                previous, team.name, team.name_key = team.name, name, key
                await tx.emit(
                    Event(
                        "team.renamed",
                        team.space_id,
                        caller.subject,
                        {"team": team, "member_count": count, "previous_name": previous},
                    )
                )
        return TeamRow(team, count)

    async def delete_team(self, caller: Caller, team_id: str) -> None:
        async with self._store.tx() as tx:
            team = await self._team(tx, caller, team_id, Permission.TEAMS_MANAGE, write=True)
            await tx.delete_team(team.id)
            await tx.emit(Event("team.deleted", team.space_id, caller.subject, {"team_id": team.id, "name": team.name}))

    async def list_teams(self, caller: Caller, space_id: str, page: Page, *, user_id: str = "") -> Paged[TeamRow]:
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.TEAMS_READ)
            return await tx.list_teams(space.id, page, user_id=user_id or None)

    async def add_team_member(self, caller: Caller, team_id: str, user_id: str) -> TeamMemberRow:
        async with self._store.tx() as tx:
            team = await self._team(tx, caller, team_id, Permission.TEAMS_MANAGE, write=True)
            if await tx.space_member(team.space_id, user_id) is None:
                raise NotFound(f"user '{user_id}' is not a member of the team's space; add them to the space first")
            if await tx.team_member(team.id, user_id):
                raise AlreadyExists(f"user '{user_id}' is already in team '{team.name}'")
            await tx.add(m.TeamMember(team_id=team.id, user_id=user_id))
            await tx.emit(
                Event("team.member_added", team.space_id, caller.subject, {"team_id": team.id, "user_id": user_id})
            )
            row = await tx.team_member_row(team.id, user_id)
        assert row is not None
        return row

    async def remove_team_member(self, caller: Caller, team_id: str, user_id: str) -> None:
        async with self._store.tx() as tx:
            team = await self._team(tx, caller, team_id, Permission.TEAMS_MANAGE, write=True)
            if await tx.team_member(team.id, user_id) is None:
                raise NotFound(f"user '{user_id}' is not in team '{team.name}'")
            await tx.delete_team_member(team.id, user_id)
            await tx.emit(
                Event("team.member_removed", team.space_id, caller.subject, {"team_id": team.id, "user_id": user_id})
            )

    async def list_team_members(self, caller: Caller, team_id: str, page: Page) -> Paged[TeamMemberRow]:
        async with self._store.tx() as tx:
            team = await self._team(tx, caller, team_id, Permission.TEAMS_READ)
            return await tx.list_team_members(team.id, page)

    # -- API keys -------------------------------------------------------------------------------------------

    async def create_api_key(self, caller: Caller, space_id: str, name: str, role: str) -> tuple[m.ApiKey, str]:
        name, key = clean_name(name, "API key")
        role = space_role(role)
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.API_KEYS_MANAGE, write=True)
            if await tx.active_api_key_by_name(space.id, key):
                raise AlreadyExists(f"the space already has an active API key named '{name}'; choose another name")
            key_id, secret = _id(), new_secret()
            api_key = await tx.add(
                m.ApiKey(
                    id=key_id,
                    space_id=space.id,
                    name=name,
                    name_key=key,
                    role=role,
                    secret_hash=digest(secret),
                    created_by=caller.subject,
                )
            )
        return api_key, f"{API_KEY_PREFIX}{key_id}_{secret}"

    async def _api_key(self, tx: Tx, caller: Caller, key_id: str, *, write: bool = False) -> m.ApiKey:
        key = await tx.get_api_key(key_id)
        if key is None or not self._in_caller_space(caller, key.space_id):
            raise NotFound(f"API key '{key_id}' not found")
        await self._authorize(tx, caller, key.space_id, Permission.API_KEYS_MANAGE, write=write)
        return key

    async def get_api_key(self, caller: Caller, key_id: str) -> m.ApiKey:
        async with self._store.tx() as tx:
            return await self._api_key(tx, caller, key_id)

    async def list_api_keys(
        self, caller: Caller, space_id: str, page: Page, *, include_revoked: bool = False
    ) -> Paged[m.ApiKey]:
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.API_KEYS_MANAGE)
            return await tx.list_api_keys(space.id, page, include_revoked=include_revoked)

    async def revoke_api_key(self, caller: Caller, key_id: str) -> m.ApiKey:
        async with self._store.tx() as tx:
            key = await self._api_key(tx, caller, key_id)
            if key.revoked_at is None:
                key.revoked_at = await tx.now()
                await tx.emit(Event("api_key.revoked", key.space_id, caller.subject, {"api_key_id": key.id}))
        return key

    # -- availability and business hours ------------------------------------------------------------------

    async def set_availability(
        self, caller: Caller, space_id: str, user_id: str, status: str
    ) -> tuple[MemberRow, bool]:
        if status not in AVAILABILITY:
            raise InvalidArgument(f"status '{status}' is not valid; use online, away or offline")
        target = user_id or caller.user_id
        if not target:
            raise InvalidArgument("user_id is required for this token")
        permission = Permission.AVAILABILITY_SET_OWN if target == caller.user_id else Permission.AVAILABILITY_SET_ANY
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, permission, write=True)
            member = await tx.space_member(space.id, target, for_update=True)
            if member is None:
                raise NotFound(f"user '{target}' is not a member of space '{space.name}'")
            changed = member.availability != status
            if changed:
                previous = member.availability
                member.availability, member.availability_changed_at = status, await tx.now()
                await tx.emit(
                    Event(
                        "availability.changed",
                        space.id,
                        caller.subject,
                        {"user_id": target, "previous_status": previous, "status": status},
                    )
                )
            row = await tx.member_row(space.id, target)
        assert row is not None
        return row, changed

    async def list_availability(self, caller: Caller, space_id: str, status: str, page: Page) -> Paged[MemberRow]:
        if status and status not in AVAILABILITY:
            raise InvalidArgument(f"status '{status}' is not valid; use online, away or offline")
        return await self.list_space_members(caller, space_id, page, availability=status)

    async def _hours(self, tx: Tx, space: m.Space) -> Hours:
        weekly: dict[int, list[bh.Range]] = {d: [] for d in range(1, 8)}
        for r in await tx.weekly_hours(space.id):
            weekly[r.weekday].append((r.opens, r.closes))
        return Hours(space, weekly, await tx.hours_exceptions(space.id))

    async def get_business_hours(self, caller: Caller, space_id: str) -> Hours:
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_READ)
            return await self._hours(tx, space)

    async def _changed_hours(self, tx: Tx, caller: Caller, space: m.Space) -> Hours:
        hours = await self._hours(tx, space)
        await tx.emit(Event("business_hours.changed", space.id, caller.subject, {"hours": hours}))
        return hours

    async def set_business_hours(
        self, caller: Caller, space_id: str, time_zone: str, weekly: Sequence[tuple[int, Sequence[tuple[str, str]]]]
    ) -> Hours:
        if time_zone.strip():
            bh.zone(time_zone.strip())
        rows: list[tuple[int, int, int]] = []
        seen: set[int] = set()
        for day, ranges in weekly:
            if day not in range(1, 8):
                raise InvalidArgument(f"weekday {day} is not valid; use MONDAY to SUNDAY")
            if day in seen:
                raise InvalidArgument(f"weekday {day} is given twice; give each day once with all its ranges")
            seen.add(day)
            rows += [(day, o, c) for o, c in bh.normalise_ranges(ranges, f"weekday {day}")]
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.SPACE_SETTINGS, write=True)
            await tx.get_space(space.id, for_update=True)
            if time_zone.strip():
                space.time_zone = time_zone.strip()
            await tx.replace_weekly_hours(space.id, rows)
            return await self._changed_hours(tx, caller, space)

    async def set_hours_exception(
        self, caller: Caller, space_id: str, date: str, name: str, ranges: Sequence[tuple[str, str]]
    ) -> Hours:
        day = bh.parse_date(date)
        name = clean_name(name, "exception")[0] if name.strip() else ("closed" if not ranges else "special hours")
        parsed = [list(r) for r in bh.normalise_ranges(ranges, f"exception {day}")]
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.SPACE_SETTINGS, write=True)
            await tx.upsert_hours_exception(space.id, day, name, parsed)
            return await self._changed_hours(tx, caller, space)

    async def delete_hours_exception(self, caller: Caller, space_id: str, date: str) -> Hours:
        day = bh.parse_date(date)
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.SPACE_SETTINGS, write=True)
            if not await tx.delete_hours_exception(space.id, day):
                raise NotFound(f"the space has no exception on {day}")
            return await self._changed_hours(tx, caller, space)

    async def check_availability(self, caller: Caller, space_id: str, at: dt.datetime | None) -> AvailabilityCheck:
        async with self._store.tx() as tx:
            space = await self._authorize(tx, caller, space_id, Permission.MEMBERS_READ)
            hours = await self._hours(tx, space)
            online = await tx.online_agent_count(space.id)
        exceptions = {e.day: (e.name, [(o, c) for o, c in e.ranges]) for e in hours.exceptions}
        decision = bh.is_open(at or dt.datetime.now(dt.UTC), bh.zone(space.time_zone), hours.weekly, exceptions)
        return AvailabilityCheck(decision, space.time_zone, online)

    # -- bootstrap ----------------------------------------------------------------------------------------

    async def bootstrap(
        self,
        operator_secret: str,
        *,
        org_name: str,
        space_name: str,
        email: str,
        password: str,
        display_name: str = "",
        time_zone: str = "",
        force: bool = False,
    ) -> BootstrapResult:
        if not self._cfg.operator_secret:
            raise FailedPrecondition(
                "bootstrap is disabled: set PARLEY_WORKSPACE_OPERATOR_SECRET on the workspace service"
            )
        throttle_key = "!operator-secret"
        async with self._store.tx() as tx:
            await self._check_throttle(tx, throttle_key)
        if not same_secret(operator_secret, self._cfg.operator_secret):
            await self._fail(throttle_key)
            raise PermissionDenied("the operator secret is incorrect")
        async with self._store.tx() as tx:
            await tx.reset_login_failures(throttle_key)
        org_name, org_key = clean_name(org_name, "organization")
        space_name, space_key = clean_name(space_name, "space")
        email, email_key = clean_email(email)
        display_name, _ = clean_name(display_name or email.split("@")[0], "display")
        tz = time_zone.strip() or "UTC"
        bh.zone(tz)
        operator = Caller(subject="system:operator", space_id=ANY_SPACE, role=Role.SYSTEM)
        async with self._store.tx() as tx:
            await tx.lock("parley-workspace-bootstrap")
            if await tx.any_owner_exists() and not force:
                raise FailedPrecondition(
                    "this installation already has an owner; bootstrap again only with force (--force)"
                )
            user = await tx.user_by_email(email_key)
            created = user is None
            if user is None:
                require_strong_password(password, email=email, display_name=display_name)
                user = await tx.add(
                    m.User(
                        id=_id(),
                        email=email,
                        email_key=email_key,
                        display_name=display_name,
                        password_hash=await self._hasher.hash(password),
                        password_changed_at=await tx.now(),
                    )
                )
            elif not await self._hasher.verify(user.password_hash, password):
                raise InvalidArgument(
                    f"a user with email '{email}' exists and the password given is not theirs; give their password"
                )
            if await tx.org_by_name(org_key):
                raise AlreadyExists(f"an organization named '{org_name}' already exists; choose another name")
            org = await tx.add(m.Organization(id=_id(), name=org_name, name_key=org_key))
            await self._add_org_member(tx, operator, org.id, user.id, "admin")
            space = await self._new_space(tx, operator, org.id, space_name, space_key, tz)
            await self._add_space_member(tx, operator, space, user.id, "owner")
            tokens = await self._issue(tx, user, SpaceAccessRow(space, org, "owner"))
        log.info("bootstrapped", extra={"organization_id": org.id, "space_id": space.id, "user_id": user.id})
        return BootstrapResult(org, space, user, created, tokens)
