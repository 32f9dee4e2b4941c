"""The only place that speaks SQL: channels, the send log and the rate buckets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from parley_kit.errors import AlreadyExists
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from parley_channel_gateway.models import ACTIVE, ChannelRow, RateBucketRow, SendLogRow

UNIQUE_ACCOUNT = "uq_channels_active_account"


@dataclass(frozen=True)
class Grant:
    """The outcome of asking a rate bucket for one send."""

    granted: bool
    wait_seconds: float
    """Granted: how long to wait before sending (the slot is reserved). Refused: when to ask again."""


class Repository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    # -- channels -------------------------------------------------------------------------------------------

    async def insert_channel(self, session: AsyncSession, row: ChannelRow, duplicate_message: str) -> None:
        """Insert `row`; an active channel of the same account anywhere raises AlreadyExists."""
        try:
            async with session.begin_nested():
                session.add(row)
                await session.flush()
        except IntegrityError as exc:
            if UNIQUE_ACCOUNT in str(exc.orig):
                raise AlreadyExists(duplicate_message) from None
            raise

    async def channel_in_space(
        self, session: AsyncSession, space_id: str, channel_id: str, *, lock: bool = False
    ) -> ChannelRow | None:
        query = select(ChannelRow).where(ChannelRow.id == channel_id, ChannelRow.space_id == space_id)
        if lock:
            query = query.with_for_update()
        return (await session.execute(query)).scalar_one_or_none()

    async def channel(self, session: AsyncSession, channel_id: str) -> ChannelRow | None:
        return await session.get(ChannelRow, channel_id)

    async def active_channel_for_account(
        self, session: AsyncSession, type_: str, external_id: str
    ) -> ChannelRow | None:
        query = select(ChannelRow).where(
            ChannelRow.type == type_, ChannelRow.external_id == external_id, ChannelRow.status == ACTIVE
        )
        return (await session.execute(query)).scalar_one_or_none()

    async def list_channels(
        self,
        session: AsyncSession,
        space_id: str,
        *,
        type_: str | None,
        include_disconnected: bool,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[ChannelRow]:
        """Channels of the space ordered by (created_at, id), after the keyset `after`."""
        query = select(ChannelRow).where(ChannelRow.space_id == space_id)
        if type_:
            query = query.where(ChannelRow.type == type_)
        if not include_disconnected:
            query = query.where(ChannelRow.status == ACTIVE)
        if after is not None:
            created, last_id = after
            query = query.where(
                or_(ChannelRow.created_at > created, and_(ChannelRow.created_at == created, ChannelRow.id > last_id))
            )
        query = query.order_by(ChannelRow.created_at, ChannelRow.id).limit(limit)
        return list((await session.execute(query)).scalars())

    async def count_channels(
        self, session: AsyncSession, space_id: str, *, type_: str | None, include_disconnected: bool
    ) -> int:
        query = select(func.count()).select_from(ChannelRow).where(ChannelRow.space_id == space_id)
        if type_:
            query = query.where(ChannelRow.type == type_)
        if not include_disconnected:
            query = query.where(ChannelRow.status == ACTIVE)
        return int(await session.scalar(query) or 0)

    async def touch_inbound(self, channel_ids: Iterable[str]) -> None:
        """Record that these channels just received events (moves last_inbound_at forward only)."""
        ids = sorted(set(channel_ids))
        if not ids:
            return
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(ChannelRow)
                .where(ChannelRow.id.in_(ids))
                .values(
                    last_inbound_at=func.greatest(func.coalesce(ChannelRow.last_inbound_at, func.now()), func.now())
                )
            )

    async def record_send_outcome(
        self, session: AsyncSession, channel_id: str, *, ok: bool, error_code: str = "", error_message: str = ""
    ) -> None:
        """Update the channel's health after a send."""
        if ok:
            values = {"last_outbound_at": func.now(), "consecutive_failures": 0}
        else:
            values = {
                "last_error_at": func.now(),
                "last_error_code": error_code,
                "last_error_message": error_message[:1000],
                "consecutive_failures": ChannelRow.consecutive_failures + 1,
            }
        await session.execute(update(ChannelRow).where(ChannelRow.id == channel_id).values(**values))

    # -- send log ---------------------------------------------------------------------------------------------

    async def claim_send(self, session: AsyncSession, row: SendLogRow) -> SendLogRow:
        """Insert the request's log row if new, then return it locked FOR UPDATE (inside the caller's transaction)."""
        values = {c.key: getattr(row, c.key) for c in SendLogRow.__table__.columns if getattr(row, c.key) is not None}
        await session.execute(
            pg_insert(SendLogRow).values(**values).on_conflict_do_nothing(index_elements=["request_id"])
        )
        query = select(SendLogRow).where(SendLogRow.request_id == row.request_id).with_for_update()
        return (await session.execute(query.execution_options(populate_existing=True))).scalar_one()

    async def lock_send(self, session: AsyncSession, request_id: str) -> SendLogRow:
        """The request's log row, locked FOR UPDATE (it must exist)."""
        query = select(SendLogRow).where(SendLogRow.request_id == request_id).with_for_update()
        return (await session.execute(query.execution_options(populate_existing=True))).scalar_one()

    async def send_log(self, session: AsyncSession, request_id: str) -> SendLogRow | None:
        return await session.get(SendLogRow, request_id, populate_existing=True)

    # -- rate buckets ---------------------------------------------------------------------------------------------

    async def take_token(self, channel_id: str, *, rate: float, burst: float, max_wait: float) -> Grant:
        """Take one token of the channel's bucket, atomically across every replica.

        The bucket may go negative by up to `rate * max_wait` tokens: a grant then tells the caller how long
        to wait before sending (its slot is reserved, so replicas never overshoot the rate). A request that
        would have to wait longer is refused, with the time after which to ask again.
        """
        floor = -rate * max_wait
        async with self.sessions() as session, session.begin():
            await session.execute(
                pg_insert(RateBucketRow)
                .values(channel_id=channel_id, tokens=burst, refilled_at=func.statement_timestamp())
                .on_conflict_do_nothing(index_elements=["channel_id"])
            )
            row = (
                await session.execute(
                    text(
                        """
                        WITH cur AS (
                            SELECT LEAST(CAST(:burst AS float8), tokens + GREATEST(0, EXTRACT(EPOCH FROM
                                   (statement_timestamp() - refilled_at)))::float8 * CAST(:rate AS float8)) AS avail
                            FROM rate_buckets WHERE channel_id = :id FOR UPDATE
                        )
                        UPDATE rate_buckets AS b
                        SET tokens = CASE WHEN cur.avail - 1 >= CAST(:floor AS float8)
                                          THEN cur.avail - 1 ELSE cur.avail END,
                            refilled_at = statement_timestamp()
                        FROM cur WHERE b.channel_id = :id
                        RETURNING b.tokens AS tokens, (cur.avail - 1 >= CAST(:floor AS float8)) AS granted
                        """
                    ),
                    {"id": channel_id, "rate": rate, "burst": burst, "floor": floor},
                )
            ).one()
        tokens, granted = float(row.tokens), bool(row.granted)
        if granted:
            return Grant(True, max(0.0, -tokens / rate))
        return Grant(False, max(0.0, (floor + 1 - tokens) / rate))
