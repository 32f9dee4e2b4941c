"""Database: SQLAlchemy 2.0 asyncio engine and sessions on PostgreSQL, and Alembic
migrations applied under a PostgreSQL advisory lock so replicas never race.

Each service ships `alembic.ini` and `migrations/` inside its package and calls
`run_migrations(package)`; its `migrations/env.py` is two lines calling `alembic_env()`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    """MetaData with the naming convention every service uses (stable constraint names)."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(url: str, *, pool_size: int = 10, pre_ping: bool = True, **kwargs: Any) -> AsyncEngine:
    """An asyncpg engine; `postgresql://` URLs are upgraded to the asyncpg driver.

    `pre_ping` checks each connection on checkout (with asyncpg: BEGIN, SELECT 1, ROLLBACK); hot paths
    that cannot afford three extra round trips per transaction turn it off and rely on `pool_recycle`
    and on a dropped connection failing one request.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping, **kwargs)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session inside one transaction: committed on success, rolled back on error."""
    async with sessions() as session, session.begin():
        yield session


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def _lock_id(name: str) -> int:
    return zlib.crc32(f"parley-migrations:{name}".encode())


def _alembic_config(package: str, connection: Connection | None = None) -> Any:
    from alembic.config import Config

    root = resources.files(package)
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def run_migrations(package: str, url: str, revision: str = "head", *, downgrade: bool = False) -> None:
    """Upgrade (or downgrade) `package`'s database to `revision`, holding an advisory lock."""
    from alembic import command

    engine = create_engine(url, pool_size=1)

    def _apply(conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _lock_id(package)})
        try:
            cfg = _alembic_config(package, conn)
            if downgrade:
                command.downgrade(cfg, revision)
            else:
                command.upgrade(cfg, revision)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _lock_id(package)})

    try:
        async with engine.connect() as conn:
            await conn.run_sync(_apply)
            await conn.commit()
    finally:
        await engine.dispose()


def alembic_env(target_metadata: MetaData) -> None:
    """Body of every service's migrations/env.py (online mode, on the connection given)."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `python -m parley_<service> migrate`")
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_sync(package: str, url: str) -> None:
    """Blocking wrapper for CLIs and tests."""
    asyncio.run(run_migrations(package, url))
