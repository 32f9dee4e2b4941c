"""Transactional outbox: an event is stored in the same transaction as the change it describes,
and `OutboxRelay` publishes it to JetStream after the commit.

The relay claims a batch of rows in id order, marking them published in the same statement (uncommitted),
and publishes it pipelined (`Publisher.publish_many`): every event of the batch is written to the NATS
connection, in id order, before any acknowledgement is awaited, so one batch costs one round trip instead
of one per event, and JetStream stores the events in id order. Then it unmarks the rows whose publish
failed and commits.

Failures. A relay that dies between publishing and marking rows published republishes them on restart
with the same `Nats-Msg-Id`, which JetStream drops inside the stream's duplicate window; beyond it,
consumers' own idempotency applies. If the publish of event k fails (an error or no acknowledgement in
time) while k+1 is acknowledged, k+1 is marked published and only k stays pending: it is published
again (first, in id order with the rows still pending) on the next round after `error_backoff`. So
nothing is lost, an acknowledged event is never published again by this relay, and a k that was in
fact stored (a lost acknowledgement) is dropped as a duplicate. The order guarantee is therefore: the
stream holds a relay's events in id order, except that an event whose publish failed may land after
events of its batch that follow it. A failed write to the connection stops the batch there (the rest
is not sent). Rows are claimed with `FOR UPDATE SKIP LOCKED`, so relays of several replicas never
publish the same row at once (order across concurrent replicas is not guaranteed).

`enqueue` issues `NOTIFY parley_outbox`, so the relay wakes on commit instead of waiting for its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from google.protobuf.message import Message
from opentelemetry.context import Context
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.schema import SchemaItem

from parley_kit import metrics, telemetry
from parley_kit.nats.publisher import Publisher, RawEvent

log = logging.getLogger(__name__)

OUTBOX = "outbox"
NOTIFY_CHANNEL = "parley_outbox"


def _schema_items() -> list[SchemaItem]:
    return [
        Column("id", BigInteger, autoincrement=True),
        Column("subject", Text, nullable=False),
        Column("msg_id", Text, nullable=False),
        Column("event_type", Text, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
        PrimaryKeyConstraint("id", name="pk_outbox"),
        UniqueConstraint("msg_id", name="uq_outbox_msg_id"),
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
    ]


def outbox_table(metadata: MetaData) -> Table:
    """The `outbox` table, for a service's metadata (so Alembic sees it)."""
    return Table(OUTBOX, metadata, *_schema_items())


def create_outbox_table_op() -> None:
    """Create the outbox table; call from a migration's `upgrade()`."""
    from alembic import op

    op.create_table(OUTBOX, *_schema_items())


def drop_outbox_table_op() -> None:
    """Drop the outbox table; call from a migration's `downgrade()`."""
    from alembic import op

    op.drop_table(OUTBOX)


_outbox = outbox_table(MetaData())  # what enqueue() writes to: the same table in any service's database
# The rows as arrays, inserted in their order, and the NOTIFY: one statement (compiled once), one round trip.
_ENQUEUE_MANY = text(
    f"WITH added AS (INSERT INTO {OUTBOX} (subject, msg_id, event_type, payload, headers)"
    " SELECT e.subject, e.msg_id, e.event_type, e.payload, e.headers::jsonb"
    " FROM unnest(:subjects, :msg_ids, :event_types, :payloads, :headers) WITH ORDINALITY"
    " AS e(subject, msg_id, event_type, payload, headers, n)"
    " ORDER BY e.n ON CONFLICT (msg_id) DO NOTHING)"
    f" SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
).bindparams(
    bindparam("subjects", type_=ARRAY(Text)),
    bindparam("msg_ids", type_=ARRAY(Text)),
    bindparam("event_types", type_=ARRAY(Text)),
    bindparam("payloads", type_=ARRAY(LargeBinary)),
    bindparam("headers", type_=ARRAY(Text)),
)


async def enqueue(
    session: AsyncSession, subject: str, message: Message, *, msg_id: str, event_type: str | None = None
) -> None:
    """Add an event to the outbox inside the caller's transaction, with the current trace context.

    `msg_id` is the event's de-duplication key: enqueueing it again is a no-op.
    """
    await session.execute(
        pg_insert(_outbox)
        .values(
            subject=subject,
            msg_id=msg_id,
            event_type=event_type or message.DESCRIPTOR.full_name,
            payload=message.SerializeToString(),
            headers=dict(telemetry.inject({})),
        )
        .on_conflict_do_nothing(index_elements=["msg_id"])
    )
    await session.execute(select(func.pg_notify(NOTIFY_CHANNEL, "")))


async def enqueue_many(
    session: AsyncSession,
    events: Sequence[tuple[str, Message, str] | tuple[str, Message, str, Context | None]],
) -> None:
    """Add several events, in order, with one statement (the INSERT and the NOTIFY): (subject, message, msg_id) or
    (subject, message, msg_id, trace context). The same as calling `enqueue` for each, for handlers that
    apply a whole batch in one transaction; a row given a trace context carries that context (so the
    relay's publish span descends from the span of the event that caused it), the others the current one.
    """
    if not events:
        return
    current = json.dumps(dict(telemetry.inject({})))
    columns: dict[str, list[Any]] = {"subjects": [], "msg_ids": [], "event_types": [], "payloads": [], "headers": []}
    for event in events:
        subject, message, msg_id = event[0], event[1], event[2]
        context = event[3] if len(event) > 3 else None  # type: ignore[misc]
        columns["subjects"].append(subject)
        columns["msg_ids"].append(msg_id)
        columns["event_types"].append(message.DESCRIPTOR.full_name)
        columns["payloads"].append(message.SerializeToString())
        columns["headers"].append(
            json.dumps(dict(telemetry.inject({}, context=context))) if context is not None else current
        )
    await session.execute(_ENQUEUE_MANY, columns)


class OutboxRelay:
    """Publishes committed rows of `table` (from `outbox_table()`) in id order, up to `batch_size` per
    transaction and pipelined, and marks them published.

    Wakes on `NOTIFY parley_outbox` and otherwise every `poll_interval` seconds; deletes rows
    published more than `retention` ago; keeps the `parley_outbox_pending_events` gauge current
    (exact after a batch that drained the table; while a backlog lasts, counted at most every
    `count_interval` seconds).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        table: Table,
        publisher: Publisher,
        service: str,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        count_interval: float = 1.0,
        retention: timedelta = timedelta(days=1),
        prune_interval: float = 60.0,
        error_backoff: float = 1.0,
    ) -> None:
        self._sessions = sessions
        self._table = table
        self._publisher = publisher
        self._service = service
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retention = retention
        self._prune_interval = prune_interval
        self._error_backoff = error_backoff
        self._count_interval = count_interval
        self._next_prune = 0.0
        self._next_count = 0.0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listen_conn: AsyncConnection | None = None
        self._listen_driver: Any = None

    async def start(self) -> None:
        """Start relaying in a background task."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="outbox relay")

    async def stop(self) -> None:
        """Finish the batch in progress, then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._unlisten()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._listen()
            self._wake.clear()
            try:
                relayed = await self._relay_batch()
                await self._prune_if_due()
            except Exception:
                log.exception("outbox relay failed; retrying in %ss", self._error_backoff)
                await self._sleep(self._error_backoff)
                continue
            if relayed < self._batch_size:
                await self._sleep(self._poll_interval)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _relay_batch(self) -> int:
        t = self._table.c
        async with self._sessions() as session, session.begin():
            conn = await session.connection()
            # Claim and mark in one statement; the marks only commit after the publishing below (a crash
            # before the commit leaves the rows unpublished), and the failed rows are unmarked first.
            claim = (
                select(t.id)
                .where(t.published_at.is_(None))
                .order_by(t.id)
                .limit(self._batch_size)
                .with_for_update(skip_locked=True)
            )
            rows = sorted(
                (
                    await conn.execute(
                        update(self._table)
                        .where(t.id.in_(claim.scalar_subquery()))
                        .values(published_at=func.now())
                        .returning(t.id, t.subject, t.msg_id, t.event_type, t.payload, t.headers)
                    )
                ).all(),
                key=lambda row: row.id,
            )
            results = await self._publisher.publish_many(
                [
                    RawEvent(
                        row.subject,
                        row.payload,
                        row.msg_id,
                        row.event_type,
                        row.headers,
                        telemetry.extract(row.headers),
                    )
                    for row in rows
                ]
            )
            # Every acknowledged row stays marked, also after a failed one: it is in the stream (see the module
            # docstring); only the failed rows stay pending, and the next round publishes them first.
            failed = [row.id for row, result in zip(rows, results, strict=True) if isinstance(result, Exception)]
            failure = next((result for result in results if isinstance(result, Exception)), None)
            if failed:
                await conn.execute(update(self._table).where(t.id.in_(failed)).values(published_at=None))
            published = len(rows) - len(failed)
            pending: int | None = len(failed)
            if len(rows) == self._batch_size:  # a backlog: count it, at most every `count_interval`
                pending = None
                if time.monotonic() >= self._next_count:
                    self._next_count = time.monotonic() + self._count_interval
                    pending = int(await conn.scalar(select(func.count()).where(t.published_at.is_(None))) or 0)
        metrics.OUTBOX_RELAYED.labels(self._service).inc(published)
        if pending is not None:
            metrics.OUTBOX_PENDING.labels(self._service).set(pending)
        if failure is not None:
            raise failure
        return published

    async def _prune_if_due(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self._prune_interval
        async with self._sessions() as session, session.begin():
            table = self._table
            await session.execute(delete(table).where(table.c.published_at < func.now() - self._retention))

    async def _listen(self) -> None:
        """LISTEN for enqueues on a dedicated connection; on failure the relay just polls."""
        if self._listen_driver is not None and not self._listen_driver.is_closed():
            return
        await self._unlisten()
        engine = self._sessions.kw.get("bind")
        if not isinstance(engine, AsyncEngine):
            return
        try:
            self._listen_conn = await asyncio.wait_for(engine.connect(), 5.0)
            self._listen_driver = (await self._listen_conn.get_raw_connection()).driver_connection
            await self._listen_driver.add_listener(NOTIFY_CHANNEL, self._notified)
        except Exception:
            log.warning("outbox relay cannot LISTEN; polling every %ss", self._poll_interval, exc_info=True)
            await self._unlisten()

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _unlisten(self) -> None:
        conn, self._listen_conn, self._listen_driver = self._listen_conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()
