"""The Alembic helpers create exactly the table `outbox_table()` declares, and drop it again."""

from __future__ import annotations

from collections.abc import Callable

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from parley_kit.db import create_engine, new_metadata
from parley_kit.outbox import create_outbox_table_op, drop_outbox_table_op, outbox_table
from sqlalchemy import Connection, inspect


def _migrate(step: Callable[[], None]) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        with Operations.context(MigrationContext.configure(conn)):
            step()

    return run


async def test_migration_helpers_create_the_declared_outbox_table_and_drop_it(database_url: str) -> None:
    engine = create_engine(database_url)
    declared = new_metadata()
    outbox_table(declared)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate(create_outbox_table_op))
        async with engine.connect() as conn:
            drift = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), declared))
            indexes = await conn.run_sync(lambda sync: inspect(sync).get_indexes("outbox"))
        assert drift == []
        [unpublished] = [ix for ix in indexes if ix["name"] == "ix_outbox_unpublished"]
        assert unpublished["dialect_options"]["postgresql_where"] == "(published_at IS NULL)"

        async with engine.begin() as conn:
            await conn.run_sync(_migrate(drop_outbox_table_op))
        async with engine.connect() as conn:
            assert not await conn.run_sync(lambda sync: inspect(sync).has_table("outbox"))
    finally:
        await engine.dispose()
