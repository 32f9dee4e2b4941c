"""Which database errors callers see as `Aborted` (retry), however the driver's error surfaces."""

from __future__ import annotations

import pytest
from parley_kit.db import create_engine, session_factory
from parley_kit.errors import Aborted, database_conflict
from sqlalchemy import text


def _raise(sqlstate: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{sqlstate}'; END $$"


@pytest.mark.parametrize(("sqlstate", "reason"), [("40001", "serialization failure"), ("40P01", "deadlocked")])
async def test_serialization_failures_and_deadlocks_are_aborted_through_sqlalchemy_and_asyncpg(
    database_url: str, sqlstate: str, reason: str
) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        with pytest.raises(Exception) as wrapped:  # SQLAlchemy's DBAPIError around asyncpg's error
            async with session_factory(engine)() as session, session.begin():
                await session.execute(text(_raise(sqlstate)))
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            with pytest.raises(Exception) as bare:  # asyncpg's own, as a query on the raw connection raises it
                await raw.fetchrow(_raise(sqlstate))
    finally:
        await engine.dispose()
    for exc in (wrapped.value, bare.value):
        error = database_conflict(exc)
        assert isinstance(error, Aborted) and reason in error.message and "retry" in error.message
    try:
        raise RuntimeError("while handling the batch") from wrapped.value
    except RuntimeError as chained:
        assert isinstance(database_conflict(chained), Aborted)


async def test_other_database_errors_are_not_aborted(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        with pytest.raises(Exception) as info:
            async with engine.connect() as conn:
                await conn.execute(text(_raise("23505")))  # unique violation: a bug or a domain error, not a retry
    finally:
        await engine.dispose()
    assert database_conflict(info.value) is None
    assert database_conflict(ValueError("x")) is None
