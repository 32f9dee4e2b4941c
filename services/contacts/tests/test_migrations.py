"""Migrations are reversible and leave the schema the models describe."""

from __future__ import annotations

from parley_contacts.models import metadata
from parley_kit.db import create_engine, run_migrations
from sqlalchemy import inspect


async def _tables(url: str) -> set[str]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrations_upgrade_downgrade_and_upgrade_again(database_url: str) -> None:
    await run_migrations("parley_contacts", database_url)
    assert set(metadata.tables) <= await _tables(database_url)
    await run_migrations("parley_contacts", database_url, "base", downgrade=True)
    assert await _tables(database_url) <= {"alembic_version"}
    await run_migrations("parley_contacts", database_url)
    assert set(metadata.tables) <= await _tables(database_url)
