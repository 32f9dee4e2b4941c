"""Domain logic of the contacts service. Knows nothing of protobuf, gRPC or NATS.

Every method acts in one space for one actor; every change and its events happen in one
unit of work (one transaction). Events, one per change:

- contact.created — created by CreateContact, ImportContacts or UpsertByIdentity (first sight)
- contact.updated — standard profile fields changed (old and new values); profile hints
  filled by UpsertByIdentity count too. Last-interaction moves do not emit (they happen
  on every inbound message; the conversations service announces those).
- field.updated — one per custom field value changed (old and new values), including each value
  removed by deleting its field or list option (new empty) and each respelled by an option's case change
- field.renamed — one per change of a custom field's key (field id, old and new key)
- field.deleted — one per custom field deleted, after its values' field.updated in the same transaction
- tag.added / tag.removed — one per (contact, tag) that changed (deleting a tag: removed per contact, as
  the background untags it)
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
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from parley_kit.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    database_conflict,
    database_unavailable,
)

from parley_contacts import metrics
from parley_contacts.domain import (
    KEY_RE,
    MAX_NAME,
    MAX_TAGS_PER_CONTACT,
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
    check_text,
    clean_standard,
    format_value,
    name_fields_by_id,
    new_id,
    parse_value,
    referenced_tags,
    resolve_criteria,
    without_tags,
)
from parley_contacts.repository import PROFILE_COLUMNS, DomainEvent, Page, Repository, Unit, UntagStep

if TYPE_CHECKING:
    from parley_kit.directory import AssigneeCheck

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_BULK = 1000
MAX_LIST_OPTIONS = 200
MAX_UPSERT_BATCH = 500
# Contacts a tag deletion untags per transaction, each waiting behind the whole chunk (what a chunk costs: the
# bench's ChangeTags and DeleteTag lines). The default of PARLEY_CONTACTS_TAG_DELETION_CHUNK.
TAG_DELETION_CHUNK = 1000
# Seconds between the tag-deletion loop's looks for deletions a restart or a failure interrupted.
TAG_DELETION_INTERVAL = 60.0
# New identities of one UpsertByIdentities call created at once (each its own transaction and connection).
NEW_IDENTITY_CONCURRENCY = 4
# Standard fields an import can match existing contacts on (ImportContacts' dedupe_by).
DEDUPE_KEYS = ("email", "phone")


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
    """The contact a row created (or, deduplicated, updated), or why the row changed nothing."""

    contact_id: uuid.UUID | None = None
    updated: bool = False
    error: DomainError | None = None


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
        if not isinstance(key, list) or len(key) != 2 or not all(isinstance(k, str) and "\x00" not in k for k in key):
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
        # Set by DeleteTag: wakes run_tag_deletions.
        self.tags_deleted = asyncio.Event()

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
        """The space's definitions by key."""
        return {f.key: f for f in await self.repo.list_fields(unit.session, space_id)}

    async def _written_fields(self, unit: Unit, space_id: str, keys: Iterable[str]) -> dict[str, FieldDef]:
        """The definitions of the custom fields whose values `unit` writes, by key, locked until it ends and taken
        from the locking statement (Repository.lock_fields): the values are checked against, and stored for,
        definitions that cannot change meanwhile. Only keys that could name a custom field are asked for: any
        other (a standard field's, one holding a NUL that PostgreSQL would refuse) is absent, an unknown field
        that `_typed_values` refuses."""
        wanted = {key for key in keys if KEY_RE.match(key) and key not in RESERVED_KEYS}
        return {f.key: f for f in await self.repo.lock_fields(unit.session, space_id, wanted)}

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
        A refused item (invalid identity) carries its error, a failed one its `_failure` (Aborted and
        Unavailable are worth retrying); neither fails the others.
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
            except Exception as exc:
                # One identity's failure must not fail the batch: its item says so, the others are answered.
                what = f"UpsertByIdentities: identity {key[2]} on channel {key[1]}"
                results[key] = UpsertOutcome(error=_failure(exc, what, "internal error for this identity"))

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
        _check_tag_count(len(set(tag_ids)))
        async with self.repo.unit() as unit:
            cleaned = _clean_profile(profile)
            defs = await self._written_fields(unit, space_id, field_values or {})
            typed = _typed_values(field_values or {}, defs, cleaned.get("country"))
            tags = [t.id for t in await self._require_tags(unit, space_id, tag_ids)]
            return await self._insert_contact(unit, space_id, actor, cleaned, defs, typed, tags, identities)

    async def _insert_contact(
        self,
        unit: Unit,
        space_id: str,
        actor: Actor,
        cleaned: dict[str, str | None],
        defs: dict[str, FieldDef],
        typed: dict[str, Any],
        tags: Sequence[uuid.UUID],
        identities: Sequence[IdentityInput] = (),
    ) -> Contact:
        """Insert a contact from validated input, in `unit`; one contact.created."""
        s = unit.session
        now = self.clock()
        contact_id = new_id(now)
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

    async def import_contacts(
        self, space_id: str, actor: Actor, rows: Sequence[ImportRow], dedupe_by: str = ""
    ) -> list[ImportOutcome]:
        """Import rows, each in its own transaction, and answer every row on its own.

        A row is committed whole or changes nothing (the tags it names are created with it). A refused
        row carries its domain error; an unexpected failure its `_failure` (Aborted, Unavailable or
        Internal); either way the following rows go on. With `dedupe_by` ("email" or "phone"), a row whose
        value is already a contact's updates that contact instead of creating a second one.
        """
        if len(rows) > MAX_BULK:
            raise InvalidArgument(f"at most {MAX_BULK} rows per import call; split the file")
        if dedupe_by and dedupe_by not in DEDUPE_KEYS:
            raise InvalidArgument(f"cannot deduplicate by '{dedupe_by}'; use one of {', '.join(DEDUPE_KEYS)}")
        outcomes: list[ImportOutcome] = []
        for index, row in enumerate(rows):
            try:
                outcome = await self._import_row(space_id, actor, row, dedupe_by)
            except DomainError as exc:
                outcome = ImportOutcome(error=exc)
            except Exception as exc:
                outcome = ImportOutcome(
                    error=_failure(exc, f"import row {index} in space {space_id}", "internal error on this row")
                )
            kind = "failed" if outcome.error else "updated" if outcome.updated else "created"
            metrics.IMPORT_ROWS.labels(kind).inc()
            outcomes.append(outcome)
        return outcomes

    async def _import_row(self, space_id: str, actor: Actor, row: ImportRow, dedupe_by: str) -> ImportOutcome:
        """One import row in one transaction: the contact created (or, matched by `dedupe_by`, updated) with
        the tags it names, missing ones created; any failure rolls all of it back, those tags included."""
        names: dict[str, str] = {}
        for raw in row.tag_names:
            name = _tag_name(raw)
            names.setdefault(name.lower(), name)
        _check_tag_count(len(names))
        cleaned = _clean_profile(row.profile)
        key = cleaned.get(dedupe_by) if dedupe_by else None
        async with self.repo.unit() as unit:
            tags = await self._tags_named(unit, space_id, names)
            found = await self._dedupe_match(unit, space_id, dedupe_by, key) if key else None
            if found is None:
                defs = await self._written_fields(unit, space_id, row.field_values)
                typed = _typed_values(row.field_values, defs, cleaned.get("country"))
                contact = await self._insert_contact(unit, space_id, actor, cleaned, defs, typed, [t.id for t in tags])
                return ImportOutcome(contact.id)
            # An import fills and overwrites; an empty cell never clears what the contact has. Values are
            # read with the contact's country when the row has none, as UpdateContact does.
            profile = {k: v for k, v in row.profile.items() if v and v.strip()}
            values = {k: v for k, v in row.field_values.items() if v.strip()}
            have = (await self.repo.tags_of(unit.session, [found.id]))[found.id]
            _check_tag_cap(found.id, have, have | {t.id for t in tags})
            await self._update_in(unit, space_id, actor, found, profile, values)
            now = self.clock()
            for tag in tags:
                if await self.repo.add_tag(unit.session, space_id, [found.id], tag.id, now):
                    self._event(unit, "tag.added", space_id, actor, contact_id=found.id, tag=tag)
            return ImportOutcome(found.id, updated=True)

    async def _dedupe_match(self, unit: Unit, space_id: str, by: str, value: str) -> Contact | None:
        """The contact of the space whose `by` (email, case-insensitively, or phone) is `value`, locked.

        A transaction-scoped advisory lock on (space, by, value) first: concurrent imports of one value
        wait for each other, so the second finds the contact the first created instead of adding one.
        """
        s = unit.session
        await self.repo.lock_key(s, f"contacts.import:{space_id}:{by}:{value.lower()}")
        ids = await self.repo.contact_ids_with(s, space_id, by, value, limit=2)
        if len(ids) > 1:
            raise FailedPrecondition(
                f"several contacts of this space have {by} {value}: merge them (parley contacts merge), "
                "then import the row again"
            )
        if not ids:
            return None
        contact = await self.repo.get_contact(s, space_id, ids[0], lock=True)
        if contact is None or (getattr(contact, by) or "").lower() != value.lower():
            raise Aborted(f"the contact with {by} {value} changed concurrently; import the row again")
        return contact

    async def _tags_named(self, unit: Unit, space_id: str, names: dict[str, str]) -> list[Tag]:
        """The tags of `names` (lowercase name -> as given), in order of name; the missing ones created in `unit`
        (so they go if it rolls back). Called before any contact is locked, as every tag writer locks.

        The existing ones are key-share locked in one statement (a concurrent DeleteTag of one waits for `unit`).
        The missing ones are inserted one by one in order of name whatever the row's: an insert waits for another
        unit inserting the same name, so units creating names in different orders would otherwise wait for each
        other (a deadlock). Of concurrent units creating one name, one inserts it and the others, once it
        commits, find it.
        """
        s = unit.session
        found = await self.repo.lock_tags_by_name(s, space_id, names)
        tags: list[Tag] = []
        for lower in sorted(names):
            tag = found.get(lower)
            if tag is None:
                tag = Tag(uuid.uuid4(), names[lower], "", "", self.clock())
                if not await self.repo.insert_tag(s, space_id, tag):
                    tag = (await self.repo.lock_tags_by_name(s, space_id, [lower])).get(lower)
                    if tag is None:
                        raise Aborted(f"tag '{names[lower]}' changed concurrently; import the row again")
            tags.append(tag)
        return tags

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
        async with self.repo.unit() as unit:
            contact = await self._require_contact(unit, space_id, contact_id, lock=True)
            await self._update_in(unit, space_id, actor, contact, profile, field_values or {})
            result = await self.repo.get_contact(unit.session, space_id, contact.id)
            assert result is not None
        return result

    async def _update_in(
        self,
        unit: Unit,
        space_id: str,
        actor: Actor,
        contact: Contact,
        profile: dict[str, str | None],
        field_values: dict[str, str],
    ) -> None:
        """Apply UpdateContact's changes to the locked `contact` in `unit`, with their events."""
        unknown = set(profile) - set(PROFILE_COLUMNS)
        if unknown:
            raise InvalidArgument(f"unknown contact field(s) {sorted(unknown)}; use custom field values for those")
        country = profile.get("country") if profile.get("country") is not None else contact.country
        cleaned = {k: clean_standard(k, v, country) for k, v in profile.items() if v is not None}
        defs = await self._written_fields(unit, space_id, field_values)
        typed = _typed_values(field_values, defs, country)
        now = self.clock()
        changes = [Change(k, _s(getattr(contact, k)), _s(v)) for k, v in cleaned.items() if getattr(contact, k) != v]
        if changes:
            await self.repo.update_contact(
                unit.session, contact.id, {c.field: cleaned[c.field] for c in changes} | {"updated_at": now}
            )
            self._event(unit, "contact.updated", space_id, actor, contact_id=contact.id, changes=changes)
        await self._apply_values(unit, space_id, actor, contact, defs, typed, now)

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
            if owner is None and await self.repo.add_identity(
                unit.session,
                space_id,
                contact.id,
                ident.channel_id,
                ident.channel_type,
                ident.external_id,
                self.clock(),
            ):
                self._event(
                    unit,
                    "contact.updated",
                    space_id,
                    actor,
                    contact_id=contact.id,
                    changes=[Change("identities", "", f"{ident.channel_id}:{ident.external_id}")],
                )
            else:
                # Taken before, or claimed since the read by a concurrent caller (the insert waited for it
                # to commit): whose is it now?
                owner = owner or await self.repo.identity_owner(
                    unit.session, space_id, ident.channel_id, ident.external_id
                )
                if owner is None:
                    raise Aborted("the identity changed concurrently; retry")
                if owner != contact.id:
                    raise AlreadyExists(
                        f"identity {ident.external_id} on channel {ident.channel_id} belongs to contact {owner}; "
                        "merge the contacts instead"
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
                tags = set(await self.repo.existing_tags(s, space_id, wanted)) if wanted else set()
                resolved = resolve_criteria(
                    group, fields=fields, tag_ids=tags, me=actor.user_id, now=self.clock(), check_tags=not view_id
                )
                # Stored views may name tags deleted since: those match no contact, even while the deletion
                # is still untagging their contacts.
                resolved = without_tags(resolved, wanted - tags)
            fingerprint = _fingerprint(space_id, view_id, repr(group), search)
            after = None
            if page_token:
                key = _decode_token(page_token, fingerprint)
                try:
                    after = (datetime.fromisoformat(key[0]), uuid.UUID(key[1]))
                    if after[0].tzinfo is None:
                        raise ValueError("no UTC offset")
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

    async def _require_tags(
        self, unit: Unit, space_id: str, raw_ids: Sequence[str], *, write: bool = False
    ) -> list[Tag]:
        """The tags named (once each, in the order given), locked until the transaction ends (FOR KEY SHARE;
        FOR NO KEY UPDATE to `write` them): a deletion of one waits for this transaction, so it also untags
        the contacts this one tags, and one deleted meanwhile is NOT_FOUND. Callers take these locks before
        any contact's, so a call naming a deleted tag fails before it waits for contacts."""
        ids = list(dict.fromkeys(parse_id(t, "tag") for t in raw_ids))
        found = await self.repo.lock_tags(unit.session, space_id, ids, write=write)
        for tag_id in ids:
            if tag_id not in found:
                raise NotFound(f"tag {tag_id} not found in this space")
        return [found[t] for t in ids]

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
            (tag,) = await self._require_tags(unit, space_id, [tag_id], write=True)
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
            if not await self.repo.update_tag(unit.session, tag):
                raise AlreadyExists(f"a tag named '{tag.name}' already exists in this space")
        return tag

    async def delete_tag(self, space_id: str, actor: Actor, tag_id: str) -> int:
        """Delete a tag; returns how many contacts carry it.

        It leaves the catalog at once, and every read with it: contacts no longer show it, a view naming it
        matches no contact, writers naming it get NOT_FOUND, its name is free. Its contacts are untagged
        afterwards by `finish_tag_deletions` (woken now), TAG_DELETION_CHUNK per transaction with their
        tag.removed events, so no transaction holds a popular tag's contacts for long.
        """
        tid = parse_id(tag_id, "tag")
        async with self.repo.unit() as unit:
            carried = await self.repo.mark_tag_deleted(unit.session, space_id, tid, actor.subject, self.clock())
        if carried is None:
            raise NotFound(f"tag {tag_id} not found in this space")
        self.tags_deleted.set()
        return carried

    async def finish_tag_deletions(self, chunk: int = TAG_DELETION_CHUNK) -> int:
        """Untag the contacts of every deleted tag, `chunk` per transaction with their tag.removed events
        (actor: who deleted it), then drop the tag's row; returns how many contacts were untagged.

        Crash-safe and safe to run anywhere: the deletion is recorded on the tag row, each chunk commits with
        its events, and a tag another worker is untagging (a replica) is skipped. A tag whose step fails is
        logged and left to the next pass; the others go on (they are taken oldest first, across spaces, so
        one failing tag would otherwise hold back every deletion). The backlog metrics are refreshed before
        and after.
        """
        async with self.repo.unit() as unit:
            await self._report_tag_deletions(unit)
            pending = await self.repo.deleted_tags(unit.session)
        untagged = 0
        for tag_id in pending:
            try:
                while (step := await self._untag_step(tag_id, chunk)) is not None:
                    untagged += len(step.untagged)
                    if step.finished:
                        break
            except Exception:
                log.exception("untagging the contacts of deleted tag %s failed; the next pass retries it", tag_id)
        if pending:
            async with self.repo.unit() as unit:
                await self._report_tag_deletions(unit)
        return untagged

    async def _untag_step(self, tag_id: uuid.UUID, chunk: int) -> UntagStep | None:
        """One transaction of a deleted tag's removal (`Repository.untag_deleted`) with its tag.removed events."""
        async with self.repo.unit() as unit:
            step = await self.repo.untag_deleted(unit.session, tag_id, chunk)
            if step is None:
                return None
            actor = Actor(step.deleted_by)
            for contact_id in step.untagged:
                self._event(unit, "tag.removed", step.space_id, actor, contact_id=contact_id, tag=step.tag)
        metrics.TAG_DELETION_UNTAGGED.inc(len(step.untagged))
        return step

    async def _report_tag_deletions(self, unit: Unit) -> None:
        count, oldest = await self.repo.tag_deletion_backlog(unit.session)
        metrics.TAGS_PENDING_DELETION.set(count)
        metrics.TAG_DELETION_OLDEST.set(oldest.timestamp() if oldest else 0)

    async def run_tag_deletions(self, interval: float = TAG_DELETION_INTERVAL, chunk: int = TAG_DELETION_CHUNK) -> None:
        """Finish tag deletions (`chunk` contacts per transaction) whenever DeleteTag wakes this loop, and every
        `interval` seconds (the deletions a restart or a failure interrupted). Runs until cancelled."""
        while True:
            self.tags_deleted.clear()
            try:
                await self.finish_tag_deletions(chunk)
            except Exception:
                log.exception("finishing tag deletions failed; retrying in %.0f s", interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tags_deleted.wait(), interval)

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
            adding = await self._require_tags(unit, space_id, add)  # tags locked first, then contacts
            removing = await self._require_tags(unit, space_id, remove)
            await self.repo.lock_contacts(s, space_id, ids)
            now = self.clock()
            if adding:
                gone = {t.id for t in removing}
                for contact_id, have in (await self.repo.tags_of(s, ids)).items():
                    _check_tag_cap(contact_id, have, (have | {t.id for t in adding}) - gone)
            for tag in adding:
                for contact_id in await self.repo.add_tag(s, space_id, ids, tag.id, now):
                    self._event(unit, "tag.added", space_id, actor, contact_id=contact_id, tag=tag)
                    changed += 1
            for tag in removing:
                for contact_id in await self.repo.remove_tag(s, space_id, ids, tag.id, now):
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
        The user must be a member of the space and the team one of its teams (the kit's check: INVALID_ARGUMENT
        for an overlong id, NOT_FOUND otherwise, UNAVAILABLE when the workspace cannot say), checked before
        anything changes."""
        if not contact_ids:
            raise InvalidArgument("give at least one contact id")
        if len(contact_ids) > MAX_BULK:
            raise InvalidArgument(f"at most {MAX_BULK} contacts per call; split the request")
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
        event finds nothing to do; one contact.assigned per contact, marked `released` (its followers remove
        the member only where they still hold them). Returns how many changed."""
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
                        released_user_id=user_id,
                        released_team_id=team_id,
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
        actor: Actor,
        field_id: str,
        *,
        key: str | None = None,
        label: str | None = None,
        description: str | None = None,
        options: Sequence[str] | None = None,
    ) -> FieldDef:
        """Rename (key, with field.renamed; or label), re-describe, or change a list's options: a value whose
        option only changed case takes the new spelling, one no longer allowed goes (each with its field.updated)."""
        async with self.repo.unit() as unit:
            definition = await self.repo.get_field(unit.session, space_id, parse_id(field_id, "field"), lock=True)
            if definition is None:
                raise NotFound(f"custom field {field_id} not found in this space")
            if key is not None and key != definition.key:
                if not KEY_RE.match(key):
                    raise InvalidArgument(f"field key '{key}' must start with a lowercase letter and use a-z, 0-9, _")
                if key in RESERVED_KEYS:
                    raise InvalidArgument(f"field key '{key}' would shadow the standard contact field '{key}'")
                if await self.repo.field_by_key(unit.session, space_id, key) is not None:
                    raise AlreadyExists(f"a custom field with key '{key}' already exists in this space")
                old_key, definition = definition.key, replace(definition, key=key)
                self._event(unit, "field.renamed", space_id, actor, field=definition, old_key=old_key)
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
                await self._respell_values(unit, space_id, actor, definition)
                removed = await self.repo.delete_values(unit.session, definition, keep=opts)
                self._values_removed(unit, space_id, actor, definition, removed)
            definition = replace(definition, updated_at=self.clock())
            if not await self.repo.update_field(unit.session, definition):
                raise AlreadyExists(f"a custom field with key '{definition.key}' already exists in this space")
        return definition

    async def delete_field(self, space_id: str, actor: Actor, field_id: str) -> None:
        """Delete a definition and every contact's value of it (one field.updated to empty per value), then
        field.deleted."""
        async with self.repo.unit() as unit:
            definition = await self.repo.get_field(unit.session, space_id, parse_id(field_id, "field"), lock=True)
            if definition is None:
                raise NotFound(f"custom field {field_id} not found in this space")
            removed = await self.repo.delete_values(unit.session, definition)
            self._values_removed(unit, space_id, actor, definition, removed)
            await self.repo.delete_field(unit.session, space_id, definition.id)
            self._event(unit, "field.deleted", space_id, actor, field=definition)

    async def _respell_values(self, unit: Unit, space_id: str, actor: Actor, definition: FieldDef) -> None:
        """Rewrite the list's values whose option only changed case (`Gold` -> `gold`) to the new spelling,
        one field.updated (old, new) each; values matching no option are left for removal."""
        for spelling in await self.repo.value_spellings(unit.session, definition.id):
            if spelling in definition.options:
                continue
            try:
                new = parse_value(definition.key, FieldType.LIST, spelling, definition.options)
            except InvalidArgument:
                continue
            for contact_id in await self.repo.respell_values(unit.session, definition.id, spelling, new):
                self._event(
                    unit,
                    "field.updated",
                    space_id,
                    actor,
                    contact_id=contact_id,
                    field=definition,
                    old=spelling,
                    new=new,
                )

    def _values_removed(
        self, unit: Unit, space_id: str, actor: Actor, definition: FieldDef, removed: Sequence[tuple[uuid.UUID, Any]]
    ) -> None:
        for contact_id, old in removed:
            self._event(
                unit,
                "field.updated",
                space_id,
                actor,
                contact_id=contact_id,
                field=definition,
                old=format_value(definition.type, old),
                new="",
            )

    # -- views ----------------------------------------------------------------------------------

    async def _visible_view(self, unit: Unit, space_id: str, actor: Actor, raw_id: str) -> View:
        view = await self.repo.get_view(unit.session, space_id, parse_id(raw_id, "view"))
        if view is None or (not view.shared and view.owner != actor.subject):
            raise NotFound(f"view {raw_id} not found in this space")
        return view

    async def _validate_criteria(self, unit: Unit, space_id: str, actor: Actor, criteria: Group) -> Group:
        """Check criteria; answer the form to store (custom fields named by id and current key)."""
        fields = await self._fields(unit, space_id)
        tags = set(await self.repo.existing_tags(unit.session, space_id, referenced_tags(criteria)))
        resolve_criteria(criteria, fields=fields, tag_ids=tags, me=actor.user_id, now=self.clock())
        return name_fields_by_id(criteria, fields)

    async def _current_keys(self, unit: Unit, space_id: str, views: list[View]) -> list[View]:
        """Views whose criteria show each custom field's current key (they are stored by id)."""
        fields = await self._fields(unit, space_id)
        return [replace(v, criteria=name_fields_by_id(v.criteria, fields)) for v in views]

    def _check_share(self, actor: Actor, shared: bool) -> None:
        if shared and not actor.manage_shared_views:
            raise PermissionDenied("only managers can create or change shared views (permission 'views.manage')")

    async def create_view(self, space_id: str, actor: Actor, name: str, criteria: Group, shared: bool) -> View:
        name = _view_name(name)
        self._check_share(actor, shared)
        now = self.clock()
        async with self.repo.unit() as unit:
            stored = await self._validate_criteria(unit, space_id, actor, criteria)
            view = View(uuid.uuid4(), space_id, name, actor.subject, shared, stored, now, now)
            await self.repo.insert_view(unit.session, view)
        return view

    async def get_view(self, space_id: str, actor: Actor, view_id: str) -> View:
        async with self.repo.unit() as unit:
            view = await self._visible_view(unit, space_id, actor, view_id)
            (view,) = await self._current_keys(unit, space_id, [view])
            return view

    async def list_views(self, space_id: str, actor: Actor, page_size: int, page_token: str) -> tuple[list[View], str]:
        limit = _page_size(page_size)
        fingerprint = _fingerprint("views", space_id, actor.subject)
        after = None
        if page_token:
            key = _decode_token(page_token, fingerprint)
            after = (key[0], parse_id(key[1], "view"))
        async with self.repo.unit() as unit:
            views = await self.repo.list_views(unit.session, space_id, actor.subject, after, limit)
            views = await self._current_keys(unit, space_id, views)
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
                view = replace(view, criteria=await self._validate_criteria(unit, space_id, actor, criteria))
            else:
                (view,) = await self._current_keys(unit, space_id, [view])
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

    async def validate_criteria(self, space_id: str, actor: Actor, criteria: Group) -> Group:
        """Check criteria without saving; answer the form to store (custom fields by id and current key)."""
        async with self.repo.unit() as unit:
            return await self._validate_criteria(unit, space_id, actor, criteria)

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
            survivor, merged = await self._lock_pair(unit, space_id, survivor_id, merged_id)
            # The survivor's stored tags, and the merged one's it is given (its live ones: see merge_into).
            have = (await self.repo.tags_of(s, [survivor.id]))[survivor.id]
            _check_tag_cap(survivor.id, have, have | set(merged.tag_ids))
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

    async def _lock_pair(self, unit: Unit, space_id: str, survivor_id: str, merged_id: str) -> tuple[Contact, Contact]:
        """The two contacts of a merge, locked in one statement in id order (as every writer of several
        contacts locks), so opposite merges, or a merge beside a bulk ChangeTags, wait for each other
        instead of deadlocking. One merged away or deleted while the lock was awaited is resolved again."""
        raw = (survivor_id, merged_id)
        asked = [parse_id(r) for r in raw]
        for _ in range(3):
            live = await self.repo.resolve_ids(unit.session, space_id, asked)
            for r, contact_id in zip(raw, asked, strict=True):
                if contact_id not in live:
                    raise NotFound(f"contact {r} not found in this space")
            pair = (live[asked[0]], live[asked[1]])
            if pair[0] == pair[1]:
                if asked[0] == asked[1]:
                    raise InvalidArgument("cannot merge a contact into itself")
                raise FailedPrecondition(
                    f"contacts {survivor_id} and {merged_id} are already one contact ({pair[0]}): merged before"
                )
            if len(await self.repo.lock_contacts(unit.session, space_id, pair, delete=True)) == 2:
                contacts = [await self.repo.get_contact(unit.session, space_id, c) for c in pair]
                assert contacts[0] is not None and contacts[1] is not None
                return contacts[0], contacts[1]
        raise Aborted("the contacts changed concurrently; retry the merge")


def _failure(exc: Exception, what: str, internal: str) -> DomainError:
    """The error a part of a batch (an import row, an identity) answers for an unexpected exception, called
    in its handler: `Aborted` for a deadlock or serialization failure, `Unavailable` for a database connection
    lost or not obtained (both worth retrying; logged as a warning), else `Internal` (logged with its traceback).
    `what` names the part in the log; `internal` is Internal's message."""
    transient = database_conflict(exc) or database_unavailable(exc)
    if transient is None:
        log.exception("%s failed unexpectedly", what)
        return Internal(f"{internal}; the failure was logged")
    log.warning("%s failed: %s (%s: %s)", what, transient.message, type(exc).__name__, exc)
    return transient


# -- input cleaning -------------------------------------------------------------------------------


def _check_identity(ident: IdentityInput) -> None:
    if not ident.channel_id or len(ident.channel_id) > 64 or "\x00" in ident.channel_id:
        raise InvalidArgument("channel_id is required (at most 64 characters, no NUL)")
    if not ident.external_id or len(ident.external_id) > 256 or "\x00" in ident.external_id:
        raise InvalidArgument("external_id is required (at most 256 characters, no NUL)")


def _clean_profile(profile: dict[str, str | None]) -> dict[str, str | None]:
    unknown = set(profile) - set(PROFILE_COLUMNS)
    if unknown:
        raise InvalidArgument(f"unknown contact field(s) {sorted(unknown)}; use custom field values for those")
    country = clean_standard("country", profile.get("country"))
    return {k: clean_standard(k, v, country) for k, v in profile.items()}


def _clean_hints(hints: dict[str, str]) -> dict[str, str]:
    """Profile hints from a channel: kept when valid, silently dropped otherwise (never fail a message).

    Each hint passes the check of the field it fills (`clean_standard`), so a hint is never a value that
    an explicit update would refuse; names longer than allowed are cut first.
    """
    first, last = hints.get("first_name", "").strip(), hints.get("last_name", "").strip()
    display = hints.get("display_name", "").strip()
    if not first and not last and display:
        first, _, last = display.partition(" ")
    phone = hints.get("phone", "").strip()
    raw = {
        "first_name": first[:MAX_NAME],
        "last_name": last.strip()[:MAX_NAME],
        "phone": phone if not phone or phone.startswith("+") else "+" + phone,
        "language": hints.get("language", "").strip().replace("_", "-"),
        "avatar_url": hints.get("avatar_url", "").strip(),
    }
    out: dict[str, str] = {}
    for name, value in raw.items():
        with contextlib.suppress(InvalidArgument):
            if (clean := clean_standard(name, value)) is not None:
                out[name] = clean
    return out


def _check_tag_count(count: int) -> None:
    """A new contact's tags fit the cap (InvalidArgument: the request itself is too big)."""
    if count > MAX_TAGS_PER_CONTACT:
        raise InvalidArgument(f"{count} tags given; a contact has at most {MAX_TAGS_PER_CONTACT} tags")


def _check_tag_cap(contact_id: uuid.UUID, have: set[uuid.UUID], after: set[uuid.UUID]) -> None:
    """FailedPrecondition when a change would give a contact new tags beyond the cap (its tags live in
    index entries of bounded size, see MAX_TAGS_PER_CONTACT); removing tags is always allowed.

    `have` and `after` are the tag ids stored on the contact's row (`Repository.tags_of`), which is what the
    indexes hold: they include tags deleted from the catalog that the deletion has not removed yet."""
    if len(after) > MAX_TAGS_PER_CONTACT and after - have:
        raise FailedPrecondition(
            f"contact {contact_id} would have {len(after)} tags; a contact has at most {MAX_TAGS_PER_CONTACT}, "
            "counting deleted tags not yet removed from it (remove some of its tags first, or retry once "
            "pending tag deletions are done)"
        )


def _typed_values(raw: dict[str, str], defs: dict[str, FieldDef], country: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        definition = defs.get(key)
        if definition is None:
            if key in STANDARD_FIELDS:
                raise InvalidArgument(f"'{key}' is a standard field; set it on the contact, not as a custom value")
            check_text("a custom field key", key)  # an import's keys are checked here (grpc_api skips its rows)
            raise InvalidArgument(f"unknown custom field '{key}'; define it first (parley fields create)")
        value = value.strip()
        out[key] = None if not value else parse_value(key, definition.type, value, definition.options, region=country)
    return out


def _options(kind: FieldType, options: Sequence[str]) -> tuple[str, ...]:
    # An option is the value stored when chosen: the same bounds as a text value.
    opts = tuple(parse_value("options", FieldType.TEXT, o) for o in options if o.strip())
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
    check_text("tag name", name)
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidArgument("a tag name is required (at most 100 characters)")
    return name


def _view_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidArgument("a view name is required (at most 200 characters)")
    return name
