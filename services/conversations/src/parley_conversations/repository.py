"""The only place that speaks SQL.

`Repository.transaction()` yields a `Tx`: one database transaction with the queries the domain
needs. `Repository.on_connection(conn)` does the same on a connection the caller holds (the ingest
runs each partition's batches on the connection that holds the partition's advisory lock, so a
batch can only commit while its replica still owns the partition).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any

from parley_kit import db
from parley_kit.errors import AlreadyExists, FailedPrecondition
from sqlalchemy import (
    Select,
    Text,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from parley_conversations.domain import LEGACY_FIELD, ConversationFilter, DomainEvent, KnownField
from parley_conversations.models import (
    Assignment,
    ClosingCategory,
    Contact,
    ContactChannel,
    ContactField,
    Conversation,
    ConversationStatus,
    Direction,
    IngestOffset,
    Message,
    PendingReceipt,
    Shortcut,
    SpaceSettings,
)

EventWriter = Callable[[AsyncSession, Sequence[tuple[DomainEvent, Any]]], Awaitable[None]]
"""Writes (event, trace context or None) pairs to the outbox inside the session's transaction."""

OPEN = ConversationStatus.OPEN.value
_MESSAGES = Message.__table__
_MESSAGE_INSERT_KEYS = [c.key for c in _MESSAGES.c if c.key != "seq"]
_INSERT_MESSAGES = insert(_MESSAGES).returning(_MESSAGES.c.seq, sort_by_parameter_order=True)


# A statement rewriting many contacts' copies: no contact of it is loaded in the session, nothing to refresh.
_BULK = {"synchronize_session": False}


def _jsonb_key(name: str) -> Any:
    """A JSONB object key as a text parameter (`jsonb - $1` would be ambiguous)."""
    return cast(literal(name), Text)


def _without(column: Any, name: Any) -> Any:
    return column.op("-", return_type=JSONB)(name)


def _upsert_contact_channels() -> Any:
    cc = ContactChannel.__table__.c
    stmt = pg_insert(ContactChannel.__table__)
    return stmt.on_conflict_do_update(
        index_elements=[cc.channel_id, cc.external_id],
        set_={
            "contact_id": stmt.excluded.contact_id,
            "last_inbound_at": func.greatest(cc.last_inbound_at, stmt.excluded.last_inbound_at),
            "interaction_reported_at": func.greatest(cc.interaction_reported_at, stmt.excluded.interaction_reported_at),
        },
    )


def _upsert_contact_hints() -> Any:
    """Fill a contact's empty names from a message's profile hints; a row with nothing to fill is left as is."""
    cols = Contact.__table__.c
    stmt = pg_insert(Contact.__table__)
    names = ("first_name", "last_name", "display_name")
    return stmt.on_conflict_do_update(
        index_elements=[cols.contact_id],
        set_={name: case((cols[name] == "", stmt.excluded[name]), else_=cols[name]) for name in names},
        where=or_(*(and_(cols[name] == "", stmt.excluded[name] != "") for name in names)),
    )


_IDENTITIES = (
    "SELECT cc.channel_id, cc.external_id, cc.contact_id, cc.interaction_reported_at"
    " FROM unnest($1::text[], $2::text[]) AS wanted(channel_id, external_id)"
    " JOIN contact_channels cc USING (channel_id, external_id)"
)

# Bulk statements executed for all rows of a batch at once (executemany: compiled once, one round trip), on the
# Core tables: the ORM's bulk-insert layer adds nothing here.
_UPSERT_CONTACT_CHANNELS = _upsert_contact_channels()
_UPSERT_CONTACT_HINTS = _upsert_contact_hints()
ContactKey = tuple[str, str, str]  # (space_id, contact_id, channel_id)


class Repository:
    """Opens transactions; `events` writes domain events to the outbox inside them."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], events: EventWriter) -> None:
        self.sessions = sessions
        self._events = events

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One transaction for an API call; a unique-constraint race becomes a domain error."""
        try:
            async with db.transaction(self.sessions) as session:
                tx = Tx(session)
                yield tx
                await tx.flush_events(self._events)
        except IntegrityError as exc:
            raise _domain_error(exc) from exc

    @asynccontextmanager
    async def on_connection(self, conn: AsyncConnection) -> AsyncIterator[Tx]:
        """A transaction on `conn` (which must not be in a transaction)."""
        async with AsyncSession(bind=conn, expire_on_commit=False) as session, session.begin():
            tx = Tx(session)
            yield tx
            await tx.flush_events(self._events)

    @staticmethod
    async def identities(
        conn: AsyncConnection, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, datetime | None]]:
        """(channel_id, external_id) -> (contact_id, interaction_reported_at) for identities already known.

        One statement outside any transaction on `conn` (which must not be in one): a read on its own needs no
        BEGIN and COMMIT round trips, and the ingest asks this before every batch."""
        pairs = list(set(pairs))
        if not pairs:
            return {}
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        rows = await driver.fetch(_IDENTITIES, [p[0] for p in pairs], [p[1] for p in pairs])
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}


class Tx:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._pending: list[tuple[DomainEvent, Any]] = []
        self._trace: Any = None

    # -- unit of work -------------------------------------------------------------------------------

    def add(self, *objs: Any) -> None:
        self.session.add_all(objs)

    def emit(self, *events: DomainEvent) -> None:
        """Queue events; they go to the outbox at the end of the transaction, in order."""
        self._pending.extend((e, self._trace) for e in events)

    @contextmanager
    def traced(self, trace: Any) -> Iterator[None]:
        """Events emitted inside carry `trace` (an opaque trace context) to the outbox."""
        previous, self._trace = self._trace, trace
        try:
            yield
        finally:
            self._trace = previous

    async def flush(self) -> None:
        await self.session.flush()

    async def flush_events(self, writer: EventWriter) -> None:
        await self.session.flush()
        if self._pending:
            events, self._pending = self._pending, []
            await writer(self.session, events)

    async def delete(self, obj: Any) -> None:
        await self.session.delete(obj)

    # -- conversations ------------------------------------------------------------------------------

    async def conversation(self, space_id: str, conversation_id: str, *, lock: bool = False) -> Conversation | None:
        if not _is_uuid(conversation_id):
            return None
        stmt = select(Conversation).where(Conversation.id == conversation_id, Conversation.space_id == space_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def open_conversation(
        self, space_id: str, contact_id: str, channel_id: str, *, lock: bool = False
    ) -> Conversation | None:
        stmt = select(Conversation).where(
            Conversation.space_id == space_id,
            Conversation.contact_id == contact_id,
            Conversation.channel_id == channel_id,
            Conversation.status == OPEN,
        )
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def open_conversations(self, keys: Iterable[ContactKey]) -> dict[ContactKey, Conversation]:
        """The open conversation of each (space, contact, channel), locked, in id order (no deadlocks)."""
        keys = list(set(keys))
        if not keys:
            return {}
        stmt = (
            select(Conversation)
            .where(
                tuple_(Conversation.space_id, Conversation.contact_id, Conversation.channel_id).in_(keys),
                Conversation.status == OPEN,
            )
            .order_by(Conversation.id)
            .with_for_update()
        )
        rows = (await self.session.execute(stmt)).scalars().all()
        return {(c.space_id, c.contact_id, c.channel_id): c for c in rows}

    async def latest_conversations(self, keys: Iterable[ContactKey]) -> dict[ContactKey, Conversation]:
        """The most recently opened conversation of each (space, contact, channel), not locked."""
        keys = list(set(keys))
        if not keys:
            return {}
        stmt = (
            select(Conversation)
            .where(tuple_(Conversation.space_id, Conversation.contact_id, Conversation.channel_id).in_(keys))
            .ext(distinct_on(Conversation.space_id, Conversation.contact_id, Conversation.channel_id))
            .order_by(
                Conversation.space_id, Conversation.contact_id, Conversation.channel_id, Conversation.opened_at.desc()
            )
        )
        rows = (await self.session.execute(stmt)).scalars().all()
        return {(c.space_id, c.contact_id, c.channel_id): c for c in rows}

    async def list_conversations(
        self, space_id: str, f: ConversationFilter, limit: int, after: list[Any] | None
    ) -> list[Conversation]:
        stmt = self._conversation_filter(select(Conversation), space_id, f)
        key = Conversation.last_activity_at if f.order == "last_activity" else Conversation.opened_at
        if after is not None:
            stmt = stmt.where(
                tuple_(key, Conversation.id)
                < tuple_(literal(after[0], key.type), literal(after[1], Conversation.id.type))
            )
        stmt = stmt.order_by(key.desc(), Conversation.id.desc()).limit(limit)
        return list((await self.session.execute(stmt)).scalars().all())

    async def count_conversations(self, space_id: str, f: ConversationFilter) -> int:
        stmt = self._conversation_filter(select(func.count()).select_from(Conversation), space_id, f)
        return int((await self.session.execute(stmt)).scalar_one())

    @staticmethod
    def _conversation_filter(stmt: Select[Any], space_id: str, f: ConversationFilter) -> Select[Any]:
        stmt = stmt.where(Conversation.space_id == space_id)
        if f.status:
            stmt = stmt.where(Conversation.status == f.status)
        if f.assignee_user_id:
            stmt = stmt.where(Conversation.assignee_user_id == f.assignee_user_id)
        if f.unassigned:
            stmt = stmt.where(Conversation.assignee_user_id.is_(None))
        if f.assignee_team_id:
            stmt = stmt.where(Conversation.assignee_team_id == f.assignee_team_id)
        if f.channel_id:
            stmt = stmt.where(Conversation.channel_id == f.channel_id)
        if f.contact_id:
            stmt = stmt.where(Conversation.contact_id == f.contact_id)
        return stmt

    async def assignments(self, conversation_id: str) -> list[Assignment]:
        stmt = select(Assignment).where(Assignment.conversation_id == conversation_id).order_by(Assignment.id)
        return list((await self.session.execute(stmt)).scalars().all())

    async def current_assignment(self, conversation_id: str) -> Assignment | None:
        return (await self.current_assignments([conversation_id])).get(conversation_id)

    async def current_assignments(self, conversation_ids: Sequence[str]) -> dict[str, Assignment]:
        """The open assignment row of each of these conversations that has one, in one query."""
        if not conversation_ids:
            return {}
        stmt = (
            select(Assignment)
            .where(Assignment.conversation_id.in_(list(conversation_ids)), Assignment.ended_at.is_(None))
            .order_by(Assignment.id)
        )
        return {a.conversation_id: a for a in (await self.session.execute(stmt)).scalars()}  # the latest wins

    async def inbox_counts(self, space_id: str, user_id: str | None) -> dict[str, Any]:
        c = Conversation
        totals = (
            await self.session.execute(
                select(
                    func.count().filter(c.status == OPEN),
                    func.count().filter(c.status != OPEN),
                    func.count().filter(and_(c.status == OPEN, c.assignee_user_id.is_(None))),
                    func.count().filter(and_(c.status == OPEN, c.assignee_user_id == (user_id or ""))),
                ).where(c.space_id == space_id)
            )
        ).one()
        by_user = (
            await self.session.execute(
                select(c.assignee_user_id, func.count())
                .where(c.space_id == space_id, c.status == OPEN, c.assignee_user_id.is_not(None))
                .group_by(c.assignee_user_id)
                .order_by(func.count().desc(), c.assignee_user_id)
            )
        ).all()
        by_team = (
            await self.session.execute(
                select(c.assignee_team_id, func.count())
                .where(c.space_id == space_id, c.status == OPEN, c.assignee_team_id.is_not(None))
                .group_by(c.assignee_team_id)
                .order_by(func.count().desc(), c.assignee_team_id)
            )
        ).all()
        return {
            "open": totals[0],
            "closed": totals[1],
            "unassigned": totals[2],
            "mine": totals[3],
            "by_user": [(u, n) for u, n in by_user],
            "by_team": [(t, n) for t, n in by_team],
        }

    async def due_for_auto_close(self, now: datetime, limit: int) -> list[tuple[Conversation, int]]:
        """Open conversations whose last human agent message is older than the space's auto-close
        period and that the contact has not answered since; locked, skipping rows other replicas hold."""
        c, s = Conversation, SpaceSettings
        stmt = (
            select(c, s.auto_close_after_seconds)
            .join(s, s.space_id == c.space_id)
            .where(
                c.status == OPEN,
                s.auto_close_after_seconds > 0,
                c.last_agent_message_at.is_not(None),
                c.last_agent_message_at
                <= literal(now) - func.make_interval(0, 0, 0, 0, 0, 0, s.auto_close_after_seconds),
                or_(c.last_inbound_at.is_(None), c.last_inbound_at <= c.last_agent_message_at),
            )
            .order_by(c.last_agent_message_at)
            .limit(limit)
            .with_for_update(of=c, skip_locked=True)
        )
        return [(row[0], row[1]) for row in (await self.session.execute(stmt)).all()]

    # -- messages -----------------------------------------------------------------------------------

    async def message(self, space_id: str, message_id: str, *, lock: bool = False) -> Message | None:
        if not _is_uuid(message_id):
            return None
        stmt = select(Message).where(Message.id == message_id, Message.space_id == space_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def message_by_client_request(self, conversation_id: str, key: str) -> Message | None:
        stmt = select(Message).where(Message.conversation_id == conversation_id, Message.client_request_id == key)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def messages_by_provider_ids(
        self, pairs: Iterable[tuple[str, str]], *, lock: bool = False
    ) -> dict[tuple[str, str], Message]:
        pairs = list(set(pairs))
        if not pairs:
            return {}
        stmt = select(Message).where(tuple_(Message.channel_id, Message.provider_message_id).in_(pairs))
        if lock:
            stmt = stmt.order_by(Message.id).with_for_update()
        rows = (await self.session.execute(stmt)).scalars().all()
        return {(m.channel_id, m.provider_message_id or ""): m for m in rows}

    async def insert_messages(self, messages: Sequence[Message], *, track: bool) -> None:
        """Insert new messages (every column but `seq` set) in order with one bulk statement, and set each
        one's `seq`. With `track` they join the session as persistent objects, so later changes to them in
        this transaction are flushed as updates; without it, later changes to them would be lost."""
        if not messages:
            return
        rows = [{key: getattr(m, key) for key in _MESSAGE_INSERT_KEYS} for m in messages]
        conn = await self.session.connection()
        result = await conn.execute(_INSERT_MESSAGES, rows)
        for m, seq in zip(messages, result.scalars().all(), strict=True):
            set_committed_value(m, "seq", seq)
        if track:
            for m in messages:
                make_transient_to_detached(m)
            self.session.add_all(messages)

    async def existing_provider_ids(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        pairs = list(set(pairs))
        if not pairs:
            return set()
        stmt = select(Message.channel_id, Message.provider_message_id).where(
            tuple_(Message.channel_id, Message.provider_message_id).in_(pairs)
        )
        return {(ch, pid or "") for ch, pid in (await self.session.execute(stmt)).all()}

    async def list_messages(self, conversation_id: str, limit: int, after_seq: int | None) -> list[Message]:
        stmt = select(Message).where(Message.conversation_id == conversation_id)
        if after_seq is not None:
            stmt = stmt.where(Message.seq > after_seq)
        stmt = stmt.order_by(Message.seq).limit(limit)
        return list((await self.session.execute(stmt)).scalars().all())

    async def count_messages(self, conversation_id: str) -> int:
        stmt = select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id)
        return int((await self.session.execute(stmt)).scalar_one())

    async def outbound_up_to(
        self, channel_id: str, contact_id: str, watermark: datetime, below: Sequence[str]
    ) -> list[Message]:
        """Outbound messages to a contact, sent at or before `watermark`, whose status is in `below`; locked."""
        stmt = (
            select(Message)
            .where(
                Message.channel_id == channel_id,
                Message.contact_id == contact_id,
                Message.direction == Direction.OUTBOUND.value,
                Message.status.in_(list(below)),
                Message.sent_at <= watermark,
            )
            .order_by(Message.id)
            .with_for_update()
        )
        return list((await self.session.execute(stmt)).scalars().all())

    # -- contacts as this service knows them ------------------------------------------------------

    async def upsert_contact_channels(self, rows: list[dict[str, Any]]) -> None:
        """Rows: channel_id, external_id, space_id, contact_id, channel_type, last_inbound_at and
        interaction_reported_at (either may be None)."""
        if not rows:
            return
        await (await self.session.connection()).execute(_UPSERT_CONTACT_CHANNELS, rows)

    async def upsert_contacts(self, rows: list[dict[str, Any]]) -> None:
        """Rows: contact_id, space_id, first_name, last_name, display_name, updated_at. Fill empty names only."""
        if not rows:
            return
        await (await self.session.connection()).execute(_UPSERT_CONTACT_HINTS, rows)

    async def raise_watermark(self, channel_id: str, external_id: str, *, read: bool, at: datetime) -> None:
        """Move a contact's delivery (and, for read receipts, read) watermark forward."""
        cc = ContactChannel
        values: dict[str, Any] = {"delivered_watermark": func.greatest(cc.delivered_watermark, at)}
        if read:
            values["read_watermark"] = func.greatest(cc.read_watermark, at)
        await self.session.execute(
            update(cc).where(cc.channel_id == channel_id, cc.external_id == external_id).values(**values)
        )

    async def contact(self, contact_id: str) -> Contact | None:
        return await self.session.get(Contact, contact_id)

    async def contacts(self, contact_ids: Iterable[str]) -> dict[str, Contact]:
        ids = list(set(contact_ids))
        if not ids:
            return {}
        rows = (await self.session.execute(select(Contact).where(Contact.contact_id.in_(ids)))).scalars().all()
        return {c.contact_id: c for c in rows}

    async def contact_for_update(self, space_id: str, contact_id: str, now: datetime) -> Contact | None:
        """The contact's row, created empty when missing, locked; None when it belongs to another space."""
        await self.session.execute(
            pg_insert(Contact)
            .values(
                contact_id=contact_id,
                space_id=space_id,
                first_name="",
                last_name="",
                display_name="",
                fields={},
                fields_at={},
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[Contact.contact_id])
        )
        stmt = select(Contact).where(Contact.contact_id == contact_id).with_for_update()
        contact = (await self.session.execute(stmt)).scalar_one()
        return contact if contact.space_id == space_id else None

    # -- custom fields: values copied by field id, keys in contact_fields -------------------------

    async def learn_fields(self, space_id: str, keys: dict[str, str]) -> set[str]:
        """Record the fields (id -> key, as value events name them) not known yet, each adopting the values
        copied by its key before ids were kept; the ids among `keys` whose field was deleted."""
        cf = ContactField
        rows = [{"space_id": space_id, "field_id": fid, "key": key} for fid, key in sorted(keys.items())]
        stmt = pg_insert(cf).values(rows).on_conflict_do_nothing().returning(cf.field_id, cf.key)
        for field_id, key in (await self.session.execute(stmt)).all():
            await self._adopt_legacy(space_id, key, field_id)
        deleted = select(cf.field_id).where(
            cf.space_id == space_id, cf.field_id.in_(list(keys)), cf.deleted_at.is_not(None)
        )
        return set((await self.session.execute(deleted)).scalars())

    async def rename_field(self, space_id: str, field_id: str, old_key: str, new_key: str, at: datetime) -> None:
        """A field's key as of a rename at `at`: kept only when later than the rename that set the current one
        (a key learned from a value yields to any rename); a deleted field stays deleted."""
        cf = ContactField
        insert_new = pg_insert(cf).values(space_id=space_id, field_id=field_id, key=new_key, key_at=at)
        if (await self.session.execute(insert_new.on_conflict_do_nothing().returning(cf.field_id))).first():
            await self._adopt_legacy(space_id, old_key, field_id)
            return
        await self.session.execute(
            update(cf)
            .where(cf.space_id == space_id, cf.field_id == field_id, cf.deleted_at.is_(None))
            .where(or_(cf.key_at.is_(None), cf.key_at < at))
            .values(key=new_key, key_at=at)
        )

    async def delete_field(self, space_id: str, field_id: str, key: str, at: datetime) -> None:
        """Mark the field deleted (events naming it later change nothing) and drop its copies in the space."""
        cf = ContactField
        insert_new = pg_insert(cf).values(space_id=space_id, field_id=field_id, key=key, deleted_at=at)
        if (await self.session.execute(insert_new.on_conflict_do_nothing().returning(cf.field_id))).first():
            await self._adopt_legacy(space_id, key, field_id, drop=True)
        else:
            await self.session.execute(
                update(cf)
                .where(cf.space_id == space_id, cf.field_id == field_id, cf.deleted_at.is_(None))
                .values(deleted_at=at)
            )
        name = _jsonb_key(field_id)
        await self.session.execute(
            update(Contact)
            .where(Contact.space_id == space_id, or_(Contact.fields.has_key(name), Contact.fields_at.has_key(name)))
            .values(fields=_without(Contact.fields, name), fields_at=_without(Contact.fields_at, name)),
            execution_options=_BULK,
        )

    async def _adopt_legacy(self, space_id: str, key: str, field_id: str, *, drop: bool = False) -> None:
        """The values copied by `key` before ids were kept are the field's (the first event naming it says it
        has that key): moved under its id, unless the contact has a later copy of it; dropped with `drop`."""
        legacy = LEGACY_FIELD + key
        found = delete(ContactField).where(ContactField.space_id == space_id, ContactField.field_id == legacy)
        if not (await self.session.execute(found.returning(ContactField.field_id))).first():
            return
        old, new = _jsonb_key(legacy), _jsonb_key(field_id)

        def moved(column: Any) -> Any:
            if drop:
                return _without(column, old)
            keep = or_(Contact.fields_at.has_key(new), ~column.has_key(old))
            adopted = _without(column, old).op("||", return_type=JSONB)(
                func.jsonb_build_object(new, column.op("->", return_type=JSONB)(old))
            )
            return case((keep, _without(column, old)), else_=adopted)

        await self.session.execute(
            update(Contact)
            .where(Contact.space_id == space_id, or_(Contact.fields.has_key(old), Contact.fields_at.has_key(old)))
            .values(fields=moved(Contact.fields), fields_at=moved(Contact.fields_at)),
            execution_options=_BULK,
        )

    async def known_fields(self, space_id: str, keys: Iterable[str]) -> list[KnownField]:
        """The fields of the space (not deleted) that have one of `keys`."""
        cf = ContactField
        stmt = select(cf.field_id, cf.key, cf.key_at).where(
            cf.space_id == space_id, cf.key.in_(list(keys)), cf.deleted_at.is_(None)
        )
        return [KnownField(*row) for row in (await self.session.execute(stmt)).all()]

    async def open_conversations_assigned(
        self, space_id: str, user_id: str | None, team_id: str | None, limit: int
    ) -> list[Conversation]:
        """Up to `limit` open conversations of the space assigned to the user (or the team), locked in id order."""
        column = Conversation.assignee_user_id if user_id is not None else Conversation.assignee_team_id
        stmt = (
            select(Conversation)
            .where(
                Conversation.space_id == space_id,
                column == (user_id if user_id is not None else team_id),
                Conversation.status == OPEN,
            )
            .order_by(Conversation.id)
            .limit(limit)
            .with_for_update()
        )
        return list((await self.session.execute(stmt)).scalars().all())

    async def open_conversations_of_contact(self, space_id: str, contact_id: str) -> list[Conversation]:
        stmt = (
            select(Conversation)
            .where(
                Conversation.space_id == space_id, Conversation.contact_id == contact_id, Conversation.status == OPEN
            )
            .order_by(Conversation.id)
            .with_for_update()
        )
        return list((await self.session.execute(stmt)).scalars().all())

    async def erase_contact(self, space_id: str, contact_id: str) -> int:
        """Delete the contact's conversations (with their messages and assignments) and what this service
        knows of the contact; the number of conversations deleted."""
        deleted = await self.session.execute(
            delete(Conversation).where(Conversation.space_id == space_id, Conversation.contact_id == contact_id)
        )
        await self.session.execute(
            delete(ContactChannel).where(ContactChannel.space_id == space_id, ContactChannel.contact_id == contact_id)
        )
        await self.session.execute(
            delete(Contact).where(Contact.space_id == space_id, Contact.contact_id == contact_id)
        )
        return int(deleted.rowcount or 0)  # type: ignore[attr-defined]

    async def repoint_contact(self, space_id: str, merged_id: str, survivor_id: str) -> None:
        """Records of `merged_id` now belong to `survivor_id`."""
        for model in (Conversation, Message, ContactChannel):
            await self.session.execute(
                update(model)
                .where(model.space_id == space_id, model.contact_id == merged_id)
                .values(contact_id=survivor_id)
            )
        await self.session.execute(delete(Contact).where(Contact.space_id == space_id, Contact.contact_id == merged_id))

    async def contact_channel(self, space_id: str, contact_id: str, channel_id: str) -> ContactChannel | None:
        stmt = (
            select(ContactChannel)
            .where(
                ContactChannel.space_id == space_id,
                ContactChannel.contact_id == contact_id,
                ContactChannel.channel_id == channel_id,
            )
            .order_by(ContactChannel.last_inbound_at.desc().nulls_last())
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def contact_ids_by_external(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        pairs = list(set(pairs))
        if not pairs:
            return {}
        stmt = select(ContactChannel.channel_id, ContactChannel.external_id, ContactChannel.contact_id).where(
            tuple_(ContactChannel.channel_id, ContactChannel.external_id).in_(pairs)
        )
        return {(ch, ext): cid for ch, ext, cid in (await self.session.execute(stmt)).all()}

    # -- settings, categories, shortcuts -------------------------------------------------------------

    async def space_settings(self, space_id: str) -> SpaceSettings | None:
        return await self.session.get(SpaceSettings, space_id)

    async def category(self, space_id: str, category_id: str) -> ClosingCategory | None:
        if not _is_uuid(category_id):
            return None
        stmt = select(ClosingCategory).where(ClosingCategory.id == category_id, ClosingCategory.space_id == space_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def category_by_name(self, space_id: str, name: str) -> ClosingCategory | None:
        stmt = select(ClosingCategory).where(
            ClosingCategory.space_id == space_id, func.lower(ClosingCategory.name) == name.lower()
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_categories(
        self, space_id: str, include_archived: bool, limit: int, after: list[Any] | None
    ) -> list[ClosingCategory]:
        stmt = select(ClosingCategory).where(ClosingCategory.space_id == space_id)
        if not include_archived:
            stmt = stmt.where(ClosingCategory.archived == false())
        if after is not None:
            stmt = stmt.where(
                tuple_(ClosingCategory.name, ClosingCategory.id)
                > tuple_(literal(after[0], ClosingCategory.name.type), literal(after[1], ClosingCategory.id.type))
            )
        stmt = stmt.order_by(ClosingCategory.name, ClosingCategory.id).limit(limit)
        return list((await self.session.execute(stmt)).scalars().all())

    async def shortcut(self, space_id: str, shortcut_id: str) -> Shortcut | None:
        if not _is_uuid(shortcut_id):
            return None
        stmt = select(Shortcut).where(Shortcut.id == shortcut_id, Shortcut.space_id == space_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def shortcut_by_name(self, space_id: str, name: str) -> Shortcut | None:
        stmt = select(Shortcut).where(Shortcut.space_id == space_id, Shortcut.name == name)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_shortcuts(self, space_id: str, prefix: str, limit: int, after: str | None) -> list[Shortcut]:
        stmt = select(Shortcut).where(Shortcut.space_id == space_id)
        if prefix:
            stmt = stmt.where(Shortcut.name.startswith(prefix, autoescape=True))
        if after is not None:
            stmt = stmt.where(Shortcut.name > after)
        stmt = stmt.order_by(Shortcut.name).limit(limit)
        return list((await self.session.execute(stmt)).scalars().all())

    # -- ingest bookkeeping ------------------------------------------------------------------------

    async def ingest_offset(self, partition: int) -> int | None:
        row = await self.session.get(IngestOffset, partition)
        return None if row is None else row.stream_sequence

    async def set_ingest_offsets(self, offsets: dict[int, int], now: datetime) -> None:
        """Move each partition's offset forward to its sequence (never back): one statement for all."""
        if not offsets:
            return
        rows = [{"partition": p, "stream_sequence": seq, "updated_at": now} for p, seq in sorted(offsets.items())]
        stmt = pg_insert(IngestOffset).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[IngestOffset.partition],
            set_={
                "stream_sequence": func.greatest(IngestOffset.stream_sequence, stmt.excluded.stream_sequence),
                "updated_at": stmt.excluded.updated_at,
            },
        )
        await self.session.execute(stmt)

    async def add_pending_receipts(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        stmt = pg_insert(PendingReceipt).values(rows).on_conflict_do_nothing()
        await self.session.execute(stmt)

    async def take_pending_receipts(self, channel_id: str, provider_message_id: str) -> list[PendingReceipt]:
        stmt = (
            delete(PendingReceipt)
            .where(PendingReceipt.channel_id == channel_id, PendingReceipt.provider_message_id == provider_message_id)
            .returning(PendingReceipt)
        )
        return list((await self.session.execute(stmt)).scalars().all())

    # -- reports ----------------------------------------------------------------------------------

    async def report(self, space_id: str, start: datetime, end: datetime, period: str, tz: str) -> dict[str, Any]:
        c = Conversation
        opened_in = and_(c.space_id == space_id, c.opened_at >= start, c.opened_at < end)
        closed_in = and_(c.space_id == space_id, c.closed_at >= start, c.closed_at < end)

        def bucket(col: Any) -> Any:
            return func.timezone(tz, func.date_trunc(period, func.timezone(tz, col)))

        opened_rows = (
            await self.session.execute(
                select(bucket(c.opened_at).label("p"), func.count()).where(opened_in).group_by(text("p"))
            )
        ).all()
        closed_rows = (
            await self.session.execute(
                select(bucket(c.closed_at).label("p"), func.count()).where(closed_in).group_by(text("p"))
            )
        ).all()
        by_category = (
            await self.session.execute(
                select(c.close_category_id, func.max(c.close_category_name), func.count())
                .where(closed_in)
                .group_by(c.close_category_id)
                .order_by(func.count().desc())
            )
        ).all()

        def by_assignee(col: Any) -> Select[Any]:
            return (
                select(
                    col,
                    func.count().filter(opened_in),
                    func.count().filter(closed_in),
                    func.avg(c.first_response_seconds).filter(opened_in),
                    func.avg(c.resolution_seconds).filter(closed_in),
                )
                .where(c.space_id == space_id, col.is_not(None), or_(opened_in, closed_in))
                .group_by(col)
                .order_by(col)
            )

        users = (await self.session.execute(by_assignee(c.assignee_user_id))).all()
        teams = (await self.session.execute(by_assignee(c.assignee_team_id))).all()
        frt = (
            await self.session.execute(
                select(
                    func.count(c.first_response_seconds),
                    func.avg(c.first_response_seconds),
                    func.percentile_cont(0.5).within_group(c.first_response_seconds),
                ).where(opened_in, c.first_response_seconds.is_not(None))
            )
        ).one()
        resolution = (
            await self.session.execute(
                select(
                    func.count(c.resolution_seconds),
                    func.avg(c.resolution_seconds),
                    func.percentile_cont(0.5).within_group(c.resolution_seconds),
                ).where(closed_in, c.resolution_seconds.is_not(None))
            )
        ).one()
        edges = [30, 120, 300, 600, 1800, 3600]
        frt_bucket = case(
            *[(c.first_response_seconds < edge, i) for i, edge in enumerate(edges)], else_=len(edges)
        ).label("b")
        buckets = (
            await self.session.execute(
                select(frt_bucket, func.count())
                .where(opened_in, c.first_response_seconds.is_not(None))
                .group_by(text("b"))
            )
        ).all()
        return {
            "opened": opened_rows,
            "closed": closed_rows,
            "by_category": by_category,
            "by_user": users,
            "by_team": teams,
            "frt": frt,
            "resolution": resolution,
            "frt_buckets": dict(buckets),
            "frt_edges": edges,
        }


_CONFLICTS = {
    "uq_conversations_one_open_per_contact_channel": (
        FailedPrecondition,
        "the contact already has an open conversation on this channel (opened at the same moment); refresh and use it",
    ),
    "uq_shortcuts_space_name": (AlreadyExists, "a shortcut with this name already exists in this space"),
    "uq_closing_categories_space_name": (AlreadyExists, "a closing category with this name already exists"),
}


def _domain_error(exc: IntegrityError) -> Exception:
    detail = str(exc.orig)
    for constraint, (cls, message) in _CONFLICTS.items():
        if constraint in detail:
            return cls(message)
    return exc


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True
