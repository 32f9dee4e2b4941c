"""Which database errors callers see as `Aborted` or `Unavailable` (retry), however the driver's error surfaces."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
import sqlalchemy.exc
from parley_kit.db import create_engine, session_factory
from parley_kit.errors import Aborted, Unavailable, database_conflict, database_unavailable
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


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


async def _terminate(database_url: str, pid: int) -> None:
    """Drop backend `pid` from another connection, as a restart or a proxy timeout would."""
    other = create_engine(database_url, pool_size=1)
    try:
        async with other.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    finally:
        await other.dispose()


async def _pooled_then_dropped(engine: AsyncEngine, database_url: str) -> None:
    """The engine's one idle pooled connection, dropped by the server."""
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    await _terminate(database_url, pid)


async def _through_session(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session, session.begin():
        await session.execute(text("SELECT 1"))


async def _on_the_raw_connection(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        await raw.fetchrow("SELECT 1")


@pytest.mark.parametrize("use", [_through_session, _on_the_raw_connection], ids=["sqlalchemy", "asyncpg"])
async def test_a_dropped_pooled_connection_is_unavailable_through_sqlalchemy_and_asyncpg(
    database_url: str, use: Callable[[AsyncEngine], Awaitable[None]]
) -> None:
    engine = create_engine(database_url, pool_size=1, pre_ping=False)  # as a hot path's pool: no pre-ping
    try:
        await _pooled_then_dropped(engine, database_url)
        with pytest.raises(Exception) as info:
            await use(engine)
    finally:
        await engine.dispose()
    error = database_unavailable(info.value)
    assert isinstance(error, Unavailable) and "retry" in error.message
    assert database_conflict(info.value) is None


async def _terminate_own_backend(engine: AsyncEngine, raw_driver: bool) -> None:
    sql = "SELECT pg_terminate_backend(pg_backend_pid())"
    if raw_driver:  # asyncpg's ConnectionDoesNotExistError (SQLSTATE 08003), bare
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.fetchrow(sql)
    else:
        async with session_factory(engine)() as session, session.begin():
            await session.execute(text(sql))


@pytest.mark.parametrize("raw_driver", [False, True], ids=["sqlalchemy", "asyncpg"])
async def test_a_connection_dropped_in_the_middle_of_a_query_is_unavailable(
    database_url: str, raw_driver: bool
) -> None:
    engine = create_engine(database_url, pool_size=1, pre_ping=False)
    try:
        with pytest.raises(Exception) as info:
            await _terminate_own_backend(engine, raw_driver)
    finally:
        await engine.dispose()
    assert isinstance(database_unavailable(info.value), Unavailable)


def test_an_error_sqlalchemy_marks_as_a_disconnect_is_unavailable_whatever_the_driver_said() -> None:
    exc = sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert isinstance(database_unavailable(exc), Unavailable)


async def test_a_pool_with_no_free_connection_in_time_is_unavailable(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, pool_timeout=0.1)  # one connection plus one overflow
    held: list[AsyncConnection] = []
    try:
        for _ in range(2):
            held.append(await engine.connect())
        with pytest.raises(Exception) as info:
            await _through_session(engine)
    finally:
        for conn in held:
            await conn.close()
        await engine.dispose()
    assert isinstance(database_unavailable(info.value), Unavailable)


async def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{port}/none", pool_size=1, pre_ping=False)
    try:
        with pytest.raises(Exception) as info:
            await _through_session(engine)
    finally:
        await engine.dispose()
    assert isinstance(database_unavailable(info.value), Unavailable)


async def test_bugs_and_conflicts_are_not_unavailable(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    raised = []
    try:
        for sqlstate in ("23505", "40P01"):  # a unique violation; a deadlock (Aborted, not Unavailable)
            with pytest.raises(Exception) as info:
                async with engine.connect() as conn:
                    await conn.execute(text(_raise(sqlstate)))
            raised.append(info.value)
    finally:
        await engine.dispose()
    misuse = asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    for exc in (*raised, misuse, ValueError("x")):
        assert database_unavailable(exc) is None
