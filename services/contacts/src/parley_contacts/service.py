"""Domain logic of the contacts service. Knows nothing of protobuf, gRPC or NATS.

Every method acts in one space for one actor; every change and its events happen in one
unit of work (one transaction). Events, one per change:

- contact.created — created by CreateContact, ImportContacts or UpsertByIdentity (first sight)
- contact.updated — standard profile fields changed (old and new values); profile hints
  filled by UpsertByIdentity count too. Last-interaction moves do not emit (they happen
  on every inbound message; the conversations service announces those).
- field.updated — one per custom field value changed (old and new values)
- tag.added / tag.removed — one per (contact, tag) that changed
- contact.assigned — one per contact whose assignee changed (with the previous one), also when a member
  leaves the space or a team is deleted (their contacts are released)
- contact.merged — one per merge; contact.deleted — one per erasure
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from parley_kit.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

from parley_contacts import metrics
from parley_contacts.domain import (
    KEY_RE,
    LANGUAGE_RE,
    RESERVED_KEYS,
    STANDARD_FIELDS,
    Change,
    Contact,
    FieldDef,
    FieldType,
    Group,
    Identity,
    ResolvedGroup,
    Tag,
    View,
    clean_standard,
    format_value,
    new_id,
    normalize_phone,
    parse_value,
    referenced_tags,
    resolve_criteria,
)
from parley_contacts.repository import PROFILE_COLUMNS, DomainEvent, Page, Repository, Unit

if TYPE_CHECKING:
    from parley_kit.directory import AssigneeCheck

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_BULK = 1000
MAX_LIST_OPTIONS = 200
MAX_UPSERT_BATCH = 500
MAX_ASSIGNEE_ID = 64
# New identities of one UpsertByIdentities call created at once (each its own transaction and connection).
NEW_IDENTITY_CONCURRENCY = 4


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Actor:
    """Who acts: their subject ("user:u1", "service:conversations"), and what they may do with views."""

    subject: str
    user_id: str | None = None
    manage_shared_views: bool = False


@dataclass(frozen=True)
class IdentityInput:
    channel_id: str
    channel_type: int
    external_id: str


@dataclass(frozen=True)
class UpsertItem:
    """One identity of an UpsertByIdentities call, in its (already authorized) space."""

    space_id: str
    identity: IdentityInput
    hints: dict[str, str]
    interaction_at: datetime | None


@dataclass(frozen=True)
class UpsertOutcome:
    """The contact of one item (and whether this item created it), or why it was refused."""

    contact_id: uuid.UUID | None = None
    created: bool = False
    error: DomainError | None = None


@dataclass(frozen=True)
class ImportRow:
    profile: dict[str, str | None]
    field_values: dict[str, str]
    tag_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportOutcome:
    contact_id: uuid.UUID | None
    error: str = ""


@dataclass(frozen=True)
class ContactPage:
    contacts: list[Contact]
    next_token: str
    total: int | None
    field_defs: dict[uuid.UUID, FieldDef]
    total_capped: bool = False


def parse_id(raw: str, what: str = "contact") -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except (ValueError, AttributeError):
        raise InvalidArgument(f"{what} id '{raw}' is not a valid id (a UUID)") from None


def _page_size(size: int) -> int:
    if size < 0:
        raise InvalidArgument("page_size must not be negative")
    if size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size {size} is above the maximum of {MAX_PAGE_SIZE}; ask for fewer")
    return size or DEFAULT_PAGE_SIZE


def _encode_token(key: list[str], fingerprint: str) -> str:
    raw = json.dumps({"k": key, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, fingerprint: str) -> list[str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        key, fp = data["k"], data["f"]
        if not isinstance(key, list) or len(key) != 2:
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token is malformed; pass back next_page_token unchanged") from None
    if fp != fingerprint:
        raise InvalidArgument("page_token belongs to a different query; start again without a token")
    return key


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:16]


def _s(value: Any) -> str:
    return "" if value is None else str(value)


class ContactsService:
    def __init__(
        self,
        repo: Repository,
        *,
        clock: Callable[[], datetime] = utcnow,
        count_limit: int | None = None,
        assignees: AssigneeCheck | None = None,
        release_batch: int = 500,
    ) -> None:
        """`assignees` says whether a user and team may be assigned in a space (the workspace directory);
        without it nothing can be assigned. `release_batch`: contacts released per transaction when a
        member or team goes away."""
        self.repo = repo
        self.clock = clock
        self.count_limit = count_limit
        self.assignees = assignees
        self.release_batch = release_batch

    # -- helpers --------------------------------------------------------------------------------

    def _event(self, unit: Unit, kind: str, space_id: str, actor: Actor, **data: Any) -> None:
        unit.emit(DomainEvent(kind, space_id, actor.subject, data))
        metrics.EVENTS.labels(kind).inc()

    async def _require_contact(self, unit: Unit, space_id: str, raw_id: str, *, lock: bool = False) -> Contact:
        contact_id = parse_id(raw_id)
        live = await self.repo.resolve_id(unit.session, space_id, contact_id)
        contact = await self.repo.get_contact(unit.session, space_id, live, lock=lock) if live else None
        if contact is None:
            raise NotFound(f"contact {raw_id} not found in this space")
        return contact

    async def _fields(self, unit: Unit, space_id: str) -> dict[str, FieldDef]:
        return {f.key: f for f in await self.repo.list_fields(unit.session, space_id)}

    # -- UpsertByIdentity -----------------------------------------------------------------------

    async def upsert_by_identity(
        self,
        space_id: str,
        actor: Actor,
        identity: IdentityInput,
        hints: dict[str, str],
        interaction_at: datetime | None,
    ) -> tuple[uuid.UUID, bool]:
        """Find or create the contact of a channel identity; (contact id, created).

        Existing identity: one indexed lookup, then an UPDATE only when the interaction time
        moves forward or a hinted profile field is still empty. New identity: the identity
        row is claimed with INSERT ... ON CONFLICT DO NOTHING; the one caller that claims it
        creates the contact, every racing caller then finds that contact.
        """
        _check_identity(identity)
        clean = _clean_hints(hints)
        started = time.perf_counter()
        row = await self.repo.touch_by_identity(
            space_id, identity.channel_id, identity.channel_type, identity.external_id, interaction_at
        )
        created = False
        if row is None:
            async with self.repo.unit() as unit:
                s = unit.session
                now = self.clock()
                contact_id, identity_id = new_id(now), uuid.uuid4()
                if await self.repo.claim_identity(
                    s,
                    space_id,
                    identity.channel_id,
                    identity.channel_type,
                    identity.external_id,
                    contact_id,
                    now,
                    identity_id,
                ):
                    values: dict[str, Any] = {c: clean.get(c) for c in PROFILE_COLUMNS}
                    record = {
                        **values,
                        "id": contact_id,
                        "space_id": space_id,
                        "assignee_user_id": None,
                        "assignee_team_id": None,
                        "created_at": now,
                        "updated_at": now,
                        "last_interaction_at": interaction_at,
                        "last_interaction_channel_id": identity.channel_id if interaction_at else None,
                        "last_interaction_channel_type": identity.channel_type if interaction_at else 0,
                    }
                    await self.repo.insert_contact(s, record)
                    ident = Identity(identity_id, identity.channel_id, identity.channel_type, identity.external_id, now)
                    contact = Contact(**record, tag_ids=(), identities=(ident,))
                    self._event(unit, "contact.created", space_id, actor, contact=contact, field_defs={})
                    created = True
            if not created:
                # Another caller claimed the identity first (its transaction has committed): use its contact.
                row = await self.repo.touch_by_identity(
                    space_id, identity.channel_id, identity.channel_type, identity.external_id, interaction_at
                )
                if row is None:
                    raise Aborted("the identity changed concurrently; retry")
        if not created:
            contact_id = row["id"]
            await self._fill_hints(space_id, actor, row, clean)
        metrics.UPSERTS.labels("created" if created else "existing").inc()
        metrics.UPSERT_SECONDS.observe(time.perf_counter() - started)
        return contact_id, created

    async def _fill_hints(self, space_id: str, actor: Actor, row: dict[str, Any], clean: dict[str, str]) -> None:
        """Fill the hinted profile fields the found contact `row` still lacks (one contact.updated)."""
        missing = {k: v for k, v in clean.items() if row[k] is None}
        if missing:
            async with self.repo.unit() as unit:
                filled = await self.repo.fill_empty(unit.session, row["id"], missing, self.clock())
                if filled:
                    changes = [Change(k, "", v) for k, v in filled.items()]
                    self._event(unit, "contact.updated", space_id, actor, contact_id=row["id"], changes=changes)

    async def upsert_by_identities(self, actor: Actor, items: Sequence[UpsertItem]) -> list[UpsertOutcome]:
        """UpsertByIdentity for many identities (≤ MAX_UPSERT_BATCH), one outcome per item, in order.

        Known identities take one statement for the whole batch (each contact's last interaction moves
        forward to its latest time in the batch). Unknown ones then go through UpsertByIdentity (race-safe),
        NEW_IDENTITY_CONCURRENCY at a time. An identity repeated in the batch counts once, with its latest
        interaction time and the first non-empty value of each hint; only its first item reports created.
        A refused item (invalid identity) carries its error and does not fail the others.
        """
        if len(items) > MAX_UPSERT_BATCH:
            raise InvalidArgument(f"at most {MAX_UPSERT_BATCH} identities per call; split the batch")
        started = time.perf_counter()
        errors: dict[int, DomainError] = {}
        merged: dict[tuple[str, str, str], UpsertItem] = {}
        for i, item in enumerate(items):
            try:
                _check_identity(item.identity)
            except DomainError as exc:
                errors[i] = exc
                continue
            key = (item.space_id, item.identity.channel_id, item.identity.external_id)
            seen = merged.get(key)
            if seen is None:
                merged[key] = item
                continue
            at = max((t for t in (seen.interaction_at, item.interaction_at) if t is not None), default=None)
            hints = {**{k: v for k, v in item.hints.items() if v}, **{k: v for k, v in seen.hints.items() if v}}
            merged[key] = replace(seen, hints=hints, interaction_at=at)
        keys = list(merged)
        found = await self.repo.touch_by_identities(
            keys, [(merged[k].interaction_at, merged[k].identity.channel_type) for k in keys]
        )
        results: dict[tuple[str, str, str], UpsertOutcome] = {}
        slots = asyncio.Semaphore(NEW_IDENTITY_CONCURRENCY)

        async def one(key: tuple[str, str, str]) -> None:
            item = merged[key]
            try:
                row = found.get(key)
                if row is None:
                    async with slots:
                        contact_id, created = await self.upsert_by_identity(
                            item.space_id, actor, item.identity, item.hints, item.interaction_at
                        )
                    results[key] = UpsertOutcome(contact_id, created)
                    return
                await self._fill_hints(item.space_id, actor, row, _clean_hints(item.hints))
                results[key] = UpsertOutcome(row["id"])
                metrics.UPSERTS.labels("existing").inc()
            except DomainError as exc:
                results[key] = UpsertOutcome(error=exc)

        await asyncio.gather(*(one(k) for k in keys))
        out: list[UpsertOutcome] = []
        reported: set[tuple[str, str, str]] = set()
        for i, item in enumerate(items):
            if i in errors:
                out.append(UpsertOutcome(error=errors[i]))
                continue
            key = (item.space_id, item.identity.channel_id, item.identity.external_id)
            result = results[key]
            out.append(result if key not in reported else replace(result, created=False))
            reported.add(key)
        metrics.UPSERT_BATCH_SECONDS.observe(time.perf_counter() - started)
        return out

    # -- contacts CRUD --------------------------------------------------------------------------

    async def create_contact(
        self,
        space_id: str,
        actor: Actor,
        profile: dict[str, str | None],
        field_values: dict[str, str] | None = None,
        tag_ids: Sequence[str] = (),
        identities: Sequence[IdentityInput] = (),
    ) -> Contact:
        now = self.clock()
        contact_id = new_id(now)
        async with self.repo.unit() as unit:
            s = unit.session
            cleaned = _clean_profile(profile)
            defs = await self._fields(unit, space_id)
            typed = _typed_values(field_values or {}, defs, cleaned.get("country"))
            tags = await self._require_tags(unit, space_id, tag_ids)
            await self.repo.insert_contact(
                s,
                {
                    **{c: cleaned.get(c) for c in PROFILE_COLUMNS},
                    "id": contact_id,
                    "space_id": space_id,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            await self.repo.add_tag_rows(s, space_id, contact_id, tags)
            for ident in identities:
                _check_identity(ident)
                claimed = await self.repo.add_identity(
                    s, space_id, contact_id, ident.channel_id, ident.channel_type, ident.external_id, now
                )
                if not claimed:
                    raise AlreadyExists(
                        f"identity {ident.external_id} on channel {ident.channel_id} already belongs to a contact"
                    )
            for key, value in typed.items():
                if value is not None:
                    await self.repo.set_value(s, space_id, contact_id, defs[key], value)
            contact = await self.repo.get_contact(s, space_id, contact_id)
            assert contact is not None
            self._event(
                unit, "contact.created", space_id, actor, contact=contact, field_defs={d.id: d for d in defs.values()}
            )
        return contact

    async def import_contacts(self, space_id: str, actor: Actor, rows: Sequence[ImportRow]) -> list[ImportOutcome]:
        """Create one contact per row, each in its own transaction: a bad row is reported, the rest kept.

        Tags are named; missing ones are created in the catalog.
        """
        if len(rows) > MAX_BULK:
            raise InvalidArgument(f"at most {MAX_BULK} rows per import call; split the file")
        tag_ids: dict[str, uuid.UUID] = {}
        outcomes: list[ImportOutcome] = []
        for row in rows:
            try:
                ids = []
                for name in row.tag_names:
                    key = _tag_name(name).lower()
                    if key not in tag_ids:
                        tag_ids[key] = (await self._tag_named(space_id, name)).id
                    ids.append(str(tag_ids[key]))
                contact = await self.create_contact(space_id, actor, row.profile, row.field_values, ids)
                outcomes.append(ImportOutcome(contact.id))
                metrics.IMPORT_ROWS.labels("created").inc()
            except (InvalidArgument, AlreadyExists, NotFound) as exc:
                outcomes.append(ImportOutcome(None, exc.message))
                metrics.IMPORT_ROWS.labels("failed").inc()
        return outcomes

    async def _tag_named(self, space_id: str, name: str) -> Tag:
        """The tag with this name, created when missing (race-safe)."""
        async with self.repo.unit() as unit:
            found = await self.repo.tag_by_name(unit.session, space_id, name.strip())
            if found is not None:
                return found
            tag = Tag(uuid.uuid4(), _tag_name(name), "", "", self.clock())
            if await self.repo.insert_tag(unit.session, space_id, tag):
                return tag
        async with self.repo.unit() as unit:
            found = await self.repo.tag_by_name(unit.session, space_id, name.strip())
        if found is None:
            raise FailedPrecondition(f"tag '{name}' changed concurrently; retry")
        return found

    async def get_contact(self, space_id: str, contact_id: str) -> tuple[Contact, dict[uuid.UUID, FieldDef]]:
        async with self.repo.unit() as unit:
            contact = await self._require_contact(unit, space_id, contact_id)
            defs = await self.repo.list_fields(unit.session, space_id)
        return contact, {d.id: d for d in defs}

    async def update_contact(
        self,
        space_id: str,
        actor: Actor,
        contact_id: str,
        profile: dict[str, str | None],
        field_values: dict[str, str] | None = None,
    ) -> Contact:
        """Change the given profile fields ('' clears) and custom values ('' clears); others stay."""
        unknown = set(profile) - set(PROFILE_COLUMNS)
        if unknown:
            raise InvalidArgument(f"unknown contact field(s) {sorted(unknown)}; use custom field values for those")
        async with self.repo.unit() as unit:
            s = unit.session
            contact = await self._require_contact(unit, space_id, contact_id, lock=True)
            country = profile.get("country") if profile.get("country") is not None else contact.country
            cleaned = {k: clean_standard(k, v, country) for k, v in profile.items() if v is not None}
            defs = await self._fields(unit, space_id)
            typed = _typed_values(field_values or {}, defs, country)
            now = self.clock()
            changes = [
                Change(k, _s(getattr(contact, k)), _s(v)) for k, v in cleaned.items() if getattr(contact, k) != v
            ]
            if changes:
                await self.repo.update_contact(
                    s, contact.id, {c.field: cleaned[c.field] for c in changes} | {"updated_at": now}
                )
                self._event(unit, "contact.updated", space_id, actor, contact_id=contact.id, changes=changes)
            await self._apply_values(unit, space_id, actor, contact, defs, typed, now)
            result = await self.repo.get_contact(s, space_id, contact.id)
            assert result is not None
        return result

    async def _apply_values(
        self,
        unit: Unit,
        space_id: str,
        actor: Actor,
        contact: Contact,
        defs: dict[str, FieldDef],
        typed: dict[str, Any],
        now: datetime,
    ) -> None:
        touched = False
        for key, value in typed.items():
            definition = defs[key]
            old = contact.values.get(definition.id)
            if old == value:
                continue
            if value is None:
                await self.repo.delete_value(unit.session, contact.id, definition.id)
            else:
                await self.repo.set_value(unit.session, space_id, contact.id, definition, value)
            touched = True
            self._event(
                unit,
                "field.updated",
                space_id,
                actor,
                contact_id=contact.id,
                field=definition,
                old=format_value(definition.type, old),
                new=format_value(definition.type, value),
            )
        if touched:
            await self.repo.update_contact(unit.session, contact.id, {"updated_at": now})

    async def delete_contact(self, space_id: str, actor: Actor, contact_id: str) -> uuid.UUID:
        """Erase a contact: its identities, field values and tags go with it; contact.deleted tells others."""
        async with self.repo.unit() as unit:
            contact = await self._require_contact(unit, space_id, contact_id, lock=True)
            merged_ids = await self.repo.aliases_of(unit.session, contact.id)
            await self.repo.delete_contact(unit.session, space_id, contact.id)
            self._event(unit, "contact.deleted", space_id, actor, contact=contact, merged_ids=merged_ids)
        return contact.id

    async def add_identity(self, space_id: str, actor: Actor, contact_id: str, ident: IdentityInput) -> Contact:
        _check_identity(ident)
        async with self.repo.unit() as unit:
            contact = await self._require_contact(unit, space_id, contact_id, lock=True)
            owner = await self.repo.identity_owner(unit.session, space_id, ident.channel_id, ident.external_id)
            if owner is not None and owner != contact.id:
                raise AlreadyExists(
                    f"identity {ident.external_id} on channel {ident.channel_id} belongs to contact {owner}; "
                    "merge the contacts instead"
                )
            if owner is None:
                await self.repo.add_identity(
                    unit.session,
                    space_id,
                    contact.id,
                    ident.channel_id,
                    ident.channel_type,
                    ident.external_id,
                    self.clock(),
                )
                self._event(
                    unit,
                    "contact.updated",
                    space_id,
                    actor,
                    contact_id=contact.id,
                    changes=[Change("identities", "", f"{ident.channel_id}:{ident.external_id}")],
                )
            result = await self.repo.get_contact(unit.session, space_id, contact.id)
            assert result is not None
        return result

    # -- listing and search ---------------------------------------------------------------------

    async def list_contacts(
        self,
        space_id: str,
        actor: Actor,
        *,
        view_id: str = "",
        criteria: Group | None = None,
        search: str = "",
        page_size: int = 0,
        page_token: str = "",
        with_total: bool = True,
    ) -> ContactPage:
        limit = _page_size(page_size)
        search = search.strip()
        if len(search) > 200:
            raise InvalidArgument("search is longer than 200 characters")
        async with self.repo.unit() as unit:
            s = unit.session
            group = criteria
            if view_id:
                if criteria is not None:
                    raise InvalidArgument("give either view_id or criteria, not both")
                view = await self._visible_view(unit, space_id, actor, view_id)
                group = view.criteria
            resolved: ResolvedGroup | None = None
            fields = await self._fields(unit, space_id)
            if group is not None:
                wanted = referenced_tags(group)
                tags = set(await self.repo.existing_tags(s, space_id, wanted)) if wanted and not view_id else set()
                # Stored views may name tags deleted since: those simply match nothing.
                resolved = resolve_criteria(
                    group, fields=fields, tag_ids=tags, me=actor.user_id, now=self.clock(), check_tags=not view_id
                )
            fingerprint = _fingerprint(space_id, view_id, repr(group), search)
            after = None
            if page_token:
                key = _decode_token(page_token, fingerprint)
                try:
                    after = (datetime.fromisoformat(key[0]), uuid.UUID(key[1]))
                except ValueError:
                    raise InvalidArgument("page_token is malformed; pass back next_page_token unchanged") from None
            page: Page = await self.repo.list_contacts(
                s,
                space_id,
                criteria=resolved,
                search=search or None,
                after=after,
                limit=limit,
                count=with_total,
                count_limit=self.count_limit,
            )
        token = ""
        if page.has_more and page.contacts:
            last = page.contacts[-1]
            token = _encode_token([last.created_at.isoformat(), str(last.id)], fingerprint)
        capped = bool(self.count_limit and page.total is not None and page.total >= self.count_limit)
        return ContactPage(page.contacts, token, page.total, {d.id: d for d in fields.values()}, capped)

    async def field_defs(self, space_id: str) -> dict[uuid.UUID, FieldDef]:
        async with self.repo.unit() as unit:
            return {d.id: d for d in await self.repo.list_fields(unit.session, space_id)}

    # -- tags -----------------------------------------------------------------------------------

    async def _require_tags(self, unit: Unit, space_id: str, raw_ids: Sequence[str]) -> list[uuid.UUID]:
        ids = list(dict.fromkeys(parse_id(t, "tag") for t in raw_ids))
        for tag_id in ids:
            if await self.repo.get_tag(unit.session, space_id, tag_id) is None:
                raise NotFound(f"tag {tag_id} not found in this space")
        return ids

    async def create_tag(self, space_id: str, name: str, color: str = "", description: str = "") -> Tag:
        name = _tag_name(name)
        tag = Tag(uuid.uuid4(), name, color.strip()[:16], description.strip(), self.clock())
        async with self.repo.unit() as unit:
            if not await self.repo.insert_tag(unit.session, space_id, tag):
                raise AlreadyExists(f"a tag named '{name}' already exists in this space")
        return tag

    async def list_tags(self, space_id: str) -> list[Tag]:
        async with self.repo.unit() as unit:
            return await self.repo.list_tags(unit.session, space_id)

    async def update_tag(
        self, space_id: str, tag_id: str, name: str | None, color: str | None, description: str | None
    ) -> Tag:
        async with self.repo.unit() as unit:
            (tid,) = await self._require_tags(unit, space_id, [tag_id])
            tag = await self.repo.get_tag(unit.session, space_id, tid)
            assert tag is not None
            if name is not None:
                name = _tag_name(name)
                other = await self.repo.tag_by_name(unit.session, space_id, name)
                if other is not None and other.id != tag.id:
                    raise AlreadyExists(f"a tag named '{name}' already exists in this space")
                tag = replace(tag, name=name)
            if color is not None:
                tag = replace(tag, color=color.strip()[:16])
            if description is not None:
                tag = replace(tag, description=description.strip())
            await self.repo.update_tag(unit.session, tag)
        return tag

    async def delete_tag(self, space_id: str, actor: Actor, tag_id: str) -> int:
        """Remove a tag from the catalog and from every contact; one tag.removed event per contact."""
        async with self.repo.unit() as unit:
            (tid,) = await self._require_tags(unit, space_id, [tag_id])
            tag = await self.repo.get_tag(unit.session, space_id, tid)
            changed = await self.repo.remove_tag(unit.session, space_id, None, tid, self.clock())
            await self.repo.delete_tag(unit.session, space_id, tid)
            for contact_id in changed:
                self._event(unit, "tag.removed", space_id, actor, contact_id=contact_id, tag=tag)
        return len(changed)

    async def change_tags(
        self, space_id: str, actor: Actor, contact_ids: Sequence[str], add: Sequence[str], remove: Sequence[str]
    ) -> int:
        """Add and remove tags on one or many contacts; returns how many (contact, tag) pairs changed."""
        if not contact_ids:
            raise InvalidArgument("give at least one contact id")
        if len(contact_ids) > MAX_BULK:
            raise InvalidArgument(f"at most {MAX_BULK} contacts per call; split the request")
        if not add and not remove:
            raise InvalidArgument("give tag ids to add or to remove")
        if set(add) & set(remove):
            raise InvalidArgument("a tag cannot be both added and removed in one call")
        changed = 0
        async with self.repo.unit() as unit:
            s = unit.session
            ids = await self._live_ids(unit, space_id, contact_ids)
            await self.repo.lock_contacts(s, space_id, ids)
            now = self.clock()
            for tag_id in await self._require_tags(unit, space_id, add):
                tag = await self.repo.get_tag(s, space_id, tag_id)
                for contact_id in await self.repo.add_tag(s, space_id, ids, tag_id, now):
                    self._event(unit, "tag.added", space_id, actor, contact_id=contact_id, tag=tag)
                    changed += 1
            for tag_id in await self._require_tags(unit, space_id, remove):
                tag = await self.repo.get_tag(s, space_id, tag_id)
                for contact_id in await self.repo.remove_tag(s, space_id, ids, tag_id, now):
                    self._event(unit, "tag.removed", space_id, actor, contact_id=contact_id, tag=tag)
                    changed += 1
        return changed

    async def _live_ids(self, unit: Unit, space_id: str, raw_ids: Sequence[str]) -> list[uuid.UUID]:
        """Resolve ids (following merges) in one statement; NotFound naming the first that is not in the space."""
        asked = [parse_id(raw) for raw in raw_ids]
        live = await self.repo.resolve_ids(unit.session, space_id, asked)
        for raw, contact_id in zip(raw_ids, asked, strict=True):
            if contact_id not in live:
                raise NotFound(f"contact {raw} not found in this space")
        return list(dict.fromkeys(live[contact_id] for contact_id in asked))

    # -- assignee -------------------------------------------------------------------------------

    async def assign(self, space_id: str, actor: Actor, contact_ids: Sequence[str], user_id: str, team_id: str) -> int:
        """Assign (or with both empty, unassign) contacts; one contact.assigned per contact that changed.
        The user must be a member of the space and the team one of its teams (NOT_FOUND otherwise,
        UNAVAILABLE when the workspace cannot say), checked before anything changes."""
        if not contact_ids:
            raise InvalidArgument("give at least one contact id")
        if len(contact_ids) > MAX_BULK:
            raise InvalidArgument(f"at most {MAX_BULK} contacts per call; split the request")
        for what, value in (("user_id", user_id), ("team_id", team_id)):
            if len(value) > MAX_ASSIGNEE_ID:
                raise InvalidArgument(f"{what} is longer than {MAX_ASSIGNEE_ID} characters")
        if user_id or team_id:
            if self.assignees is None:
                raise FailedPrecondition("this process has no workspace directory to check assignees; nothing changed")
            await self.assignees(space_id, user_id, team_id)
        async with self.repo.unit() as unit:
            ids = await self._live_ids(unit, space_id, contact_ids)
            changed = await self.repo.set_assignee(
                unit.session, space_id, ids, user_id or None, team_id or None, self.clock()
            )
            for contact_id, prev_user, prev_team in changed:
                self._event(
                    unit,
                    "contact.assigned",
                    space_id,
                    actor,
                    contact_id=contact_id,
                    user_id=user_id,
                    team_id=team_id,
                    previous_user_id=prev_user or "",
                    previous_team_id=prev_team or "",
                )
        return len(changed)

    async def release_member(self, space_id: str, user_id: str, actor: str) -> int:
        """A member left the space: unassign them from every contact of the space (a team assigned with
        them stays). Bounded transactions of `release_batch` contacts until none is left, so a redelivered
        event finds nothing to do; one contact.assigned per contact. Returns how many changed."""
        return await self._release(space_id, Actor(actor), user_id=user_id)

    async def release_team(self, space_id: str, team_id: str, actor: str) -> int:
        """A team was deleted: unassign it from every contact of the space (a user assigned with it stays)."""
        return await self._release(space_id, Actor(actor), team_id=team_id)

    async def _release(self, space_id: str, actor: Actor, *, user_id: str = "", team_id: str = "") -> int:
        released = 0
        while True:
            async with self.repo.unit() as unit:
                changed = await self.repo.release_assignee(
                    unit.session, space_id, user_id or None, team_id or None, self.release_batch, self.clock()
                )
                for contact_id, prev_user, prev_team in changed:
                    self._event(
                        unit,
                        "contact.assigned",
                        space_id,
                        actor,
                        contact_id=contact_id,
                        user_id="" if user_id else prev_user or "",
                        team_id="" if team_id else prev_team or "",
                        previous_user_id=prev_user or "",
                        previous_team_id=prev_team or "",
                    )
            if not changed:  # not "fewer than a batch": a row changed concurrently is skipped, not counted
                return released
            released += len(changed)

    # -- custom fields --------------------------------------------------------------------------

    async def create_field(
        self, space_id: str, key: str, label: str, ftype: str, description: str = "", options: Sequence[str] = ()
    ) -> FieldDef:
        key = key.strip()
        if not KEY_RE.match(key):
            raise InvalidArgument(
                f"field key '{key}' must start with a lowercase letter and use only a-z, 0-9 and _ (max 63)"
            )
        if key in RESERVED_KEYS:
            raise InvalidArgument(f"field key '{key}' would shadow the standard contact field '{key}'; pick another")
        try:
            kind = FieldType(ftype)
        except ValueError:
            allowed = ", ".join(t.value for t in FieldType)
            raise InvalidArgument(f"field type '{ftype}' is unknown; use one of {allowed}") from None
        label = label.strip() or key
        opts = _options(kind, options)
        now = self.clock()
        definition = FieldDef(uuid.uuid4(), key, label, description.strip(), kind, opts, now, now)
        async with self.repo.unit() as unit:
            if not await self.repo.insert_field(unit.session, space_id, definition):
                raise AlreadyExists(f"a custom field with key '{key}' already exists in this space")
        return definition

    async def list_fields(self, space_id: str) -> list[FieldDef]:
        async with self.repo.unit() as unit:
            return await self.repo.list_fields(unit.session, space_id)

    async def update_field(
        self,
        space_id: str,
        field_id: str,
        *,
        key: str | None = None,
        label: str | None = None,
        description: str | None = None,
        options: Sequence[str] | None = None,
    ) -> FieldDef:
        """Rename (key or label), re-describe, or change a list's options (values no longer allowed go)."""
        async with self.repo.unit() as unit:
            definition = await self.repo.get_field(unit.session, space_id, parse_id(field_id, "field"))
            if definition is None:
                raise NotFound(f"custom field {field_id} not found in this space")
            if key is not None and key != definition.key:
                if not KEY_RE.match(key):
                    raise InvalidArgument(f"field key '{key}' must start with a lowercase letter and use a-z, 0-9, _")
                if key in RESERVED_KEYS:
                    raise InvalidArgument(f"field key '{key}' would shadow the standard contact field '{key}'")
                if await self.repo.field_by_key(unit.session, space_id, key) is not None:
                    raise AlreadyExists(f"a custom field with key '{key}' already exists in this space")
                definition = replace(definition, key=key)
            if label is not None:
                definition = replace(definition, label=label.strip() or definition.key)
            if description is not None:
                definition = replace(definition, description=description.strip())
            if options is not None:
                if definition.type is not FieldType.LIST:
                    raise InvalidArgument(
                        f"field '{definition.key}' is a {definition.type} field; only lists have options"
                    )
                opts = _options(FieldType.LIST, options)
                definition = replace(definition, options=opts)
                await self.repo.delete_values_not_in(unit.session, definition.id, opts)
            definition = replace(definition, updated_at=self.clock())
            await self.repo.update_field(unit.session, definition)
        return definition

    async def delete_field(self, space_id: str, field_id: str) -> None:
        """Delete a definition and every contact's value of it."""
        async with self.repo.unit() as unit:
            if not await self.repo.delete_field(unit.session, space_id, parse_id(field_id, "field")):
                raise NotFound(f"custom field {field_id} not found in this space")

    # -- views ----------------------------------------------------------------------------------

    async def _visible_view(self, unit: Unit, space_id: str, actor: Actor, raw_id: str) -> View:
        view = await self.repo.get_view(unit.session, space_id, parse_id(raw_id, "view"))
        if view is None or (not view.shared and view.owner != actor.subject):
            raise NotFound(f"view {raw_id} not found in this space")
        return view

    async def _validate_criteria(self, unit: Unit, space_id: str, actor: Actor, criteria: Group) -> None:
        fields = await self._fields(unit, space_id)
        tags = set(await self.repo.existing_tags(unit.session, space_id, referenced_tags(criteria)))
        resolve_criteria(criteria, fields=fields, tag_ids=tags, me=actor.user_id, now=self.clock())

    def _check_share(self, actor: Actor, shared: bool) -> None:
        if shared and not actor.manage_shared_views:
            raise PermissionDenied("only managers can create or change shared views (permission 'views.manage')")

    async def create_view(self, space_id: str, actor: Actor, name: str, criteria: Group, shared: bool) -> View:
        name = _view_name(name)
        self._check_share(actor, shared)
        now = self.clock()
        view = View(uuid.uuid4(), space_id, name, actor.subject, shared, criteria, now, now)
        async with self.repo.unit() as unit:
            await self._validate_criteria(unit, space_id, actor, criteria)
            await self.repo.insert_view(unit.session, view)
        return view

    async def get_view(self, space_id: str, actor: Actor, view_id: str) -> View:
        async with self.repo.unit() as unit:
            return await self._visible_view(unit, space_id, actor, view_id)

    async def list_views(self, space_id: str, actor: Actor, page_size: int, page_token: str) -> tuple[list[View], str]:
        limit = _page_size(page_size)
        fingerprint = _fingerprint("views", space_id, actor.subject)
        after = None
        if page_token:
            key = _decode_token(page_token, fingerprint)
            after = (key[0], parse_id(key[1], "view"))
        async with self.repo.unit() as unit:
            views = await self.repo.list_views(unit.session, space_id, actor.subject, after, limit)
        token = ""
        if len(views) > limit:
            views = views[:limit]
            token = _encode_token([views[-1].name, str(views[-1].id)], fingerprint)
        return views, token

    async def update_view(
        self,
        space_id: str,
        actor: Actor,
        view_id: str,
        *,
        name: str | None,
        criteria: Group | None,
        shared: bool | None,
    ) -> View:
        async with self.repo.unit() as unit:
            view = await self._visible_view(unit, space_id, actor, view_id)
            self._check_editable(actor, view)
            if shared is not None and shared != view.shared:
                self._check_share(actor, True)
                view = replace(view, shared=shared)
            if name is not None:
                view = replace(view, name=_view_name(name))
            if criteria is not None:
                await self._validate_criteria(unit, space_id, actor, criteria)
                view = replace(view, criteria=criteria)
            view = replace(view, updated_at=self.clock())
            await self.repo.update_view(unit.session, view)
        return view

    def _check_editable(self, actor: Actor, view: View) -> None:
        if view.shared and not actor.manage_shared_views:
            raise PermissionDenied("only managers can change shared views (permission 'views.manage')")
        if not view.shared and view.owner != actor.subject:
            raise NotFound(f"view {view.id} not found in this space")

    async def delete_view(self, space_id: str, actor: Actor, view_id: str) -> None:
        async with self.repo.unit() as unit:
            view = await self._visible_view(unit, space_id, actor, view_id)
            self._check_editable(actor, view)
            await self.repo.delete_view(unit.session, space_id, view.id)

    async def validate_criteria(self, space_id: str, actor: Actor, criteria: Group) -> None:
        async with self.repo.unit() as unit:
            await self._validate_criteria(unit, space_id, actor, criteria)

    # -- merge ----------------------------------------------------------------------------------

    async def merge(self, space_id: str, actor: Actor, survivor_id: str, merged_id: str) -> Contact:
        """Merge `merged_id` into `survivor_id`.

        Conflict rule: the survivor's values win; the merged contact only fills what the
        survivor lacks (profile fields, custom values, assignee). Identities and tags are
        united; created_at becomes the earlier one and last interaction the later one.
        The merged id keeps resolving to the survivor.
        """
        async with self.repo.unit() as unit:
            s = unit.session
            survivor = await self._require_contact(unit, space_id, survivor_id, lock=True)
            merged = await self._require_contact(unit, space_id, merged_id, lock=True)
            if survivor.id == merged.id:
                raise InvalidArgument("cannot merge a contact into itself")
            profile: dict[str, Any] = {c: getattr(survivor, c) or getattr(merged, c) for c in PROFILE_COLUMNS}
            if survivor.assignee_user_id is None and survivor.assignee_team_id is None:
                profile["assignee_user_id"] = merged.assignee_user_id
                profile["assignee_team_id"] = merged.assignee_team_id
            profile["created_at"] = min(survivor.created_at, merged.created_at)
            if merged.last_interaction_at and (
                survivor.last_interaction_at is None or merged.last_interaction_at > survivor.last_interaction_at
            ):
                profile["last_interaction_at"] = merged.last_interaction_at
                profile["last_interaction_channel_id"] = merged.last_interaction_channel_id
                profile["last_interaction_channel_type"] = merged.last_interaction_channel_type
            await self.repo.merge_into(s, space_id, survivor, merged, profile, self.clock())
            result = await self.repo.get_contact(s, space_id, survivor.id)
            assert result is not None
            defs = {d.id: d for d in await self.repo.list_fields(s, space_id)}
            self._event(unit, "contact.merged", space_id, actor, survivor=result, merged=merged, field_defs=defs)
        return result


# -- input cleaning -------------------------------------------------------------------------------


def _check_identity(ident: IdentityInput) -> None:
    if not ident.channel_id or len(ident.channel_id) > 64:
        raise InvalidArgument("channel_id is required (at most 64 characters)")
    if not ident.external_id or len(ident.external_id) > 256:
        raise InvalidArgument("external_id is required (at most 256 characters)")


def _clean_profile(profile: dict[str, str | None]) -> dict[str, str | None]:
    unknown = set(profile) - set(PROFILE_COLUMNS)
    if unknown:
        raise InvalidArgument(f"unknown contact field(s) {sorted(unknown)}; use custom field values for those")
    country = clean_standard("country", profile.get("country"))
    return {k: clean_standard(k, v, country) for k, v in profile.items()}


def _clean_hints(hints: dict[str, str]) -> dict[str, str]:
    """Profile hints from a channel: kept when valid, silently dropped otherwise (never fail a message)."""
    out: dict[str, str] = {}
    first, last = hints.get("first_name", "").strip(), hints.get("last_name", "").strip()
    display = hints.get("display_name", "").strip()
    if not first and not last and display:
        first, _, last = display.partition(" ")
    if first:
        out["first_name"] = first[:200]
    if last:
        out["last_name"] = last.strip()[:200]
    phone = hints.get("phone", "").strip()
    if phone:
        with contextlib.suppress(ValueError):
            out["phone"] = normalize_phone(phone if phone.startswith("+") else "+" + phone)
    language = hints.get("language", "").strip().replace("_", "-")
    if language and LANGUAGE_RE.match(language):
        out["language"] = language
    avatar = hints.get("avatar_url", "").strip()
    if avatar.startswith(("http://", "https://")) and len(avatar) <= 2000:
        out["avatar_url"] = avatar
    return out


def _typed_values(raw: dict[str, str], defs: dict[str, FieldDef], country: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        definition = defs.get(key)
        if definition is None:
            if key in STANDARD_FIELDS:
                raise InvalidArgument(f"'{key}' is a standard field; set it on the contact, not as a custom value")
            raise InvalidArgument(f"unknown custom field '{key}'; define it first (parley fields create)")
        value = value.strip()
        out[key] = None if not value else parse_value(key, definition.type, value, definition.options, region=country)
    return out


def _options(kind: FieldType, options: Sequence[str]) -> tuple[str, ...]:
    opts = tuple(o.strip() for o in options if o.strip())
    if kind is FieldType.LIST:
        if not opts:
            raise InvalidArgument("a list field needs at least one option")
        if len(opts) > MAX_LIST_OPTIONS:
            raise InvalidArgument(f"a list field has at most {MAX_LIST_OPTIONS} options")
        if len({o.lower() for o in opts}) != len(opts):
            raise InvalidArgument("list options must be unique (case-insensitive)")
    elif opts:
        raise InvalidArgument(f"only list fields have options, not {kind} fields")
    return opts


def _tag_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidArgument("a tag name is required (at most 100 characters)")
    return name


def _view_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidArgument("a view name is required (at most 200 characters)")
    return name
