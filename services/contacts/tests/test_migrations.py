"""Migrations are reversible, leave the schema the models describe, and carry existing data over."""

from __future__ import annotations

import json
import uuid

from parley_contacts.domain import criteria_from_json
from parley_contacts.models import metadata
from parley_kit.db import create_engine, run_migrations
from sqlalchemy import inspect, text


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


async def test_tag_ids_migration_backfills_existing_contacts_and_reverts(database_url: str) -> None:
    await run_migrations("parley_contacts", database_url, "base", downgrade=True)
    await run_migrations("parley_contacts", database_url, "20261125_0002")
    contact, untagged, t1, t2 = (uuid.uuid4() for _ in range(4))
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tags (id, space_id, name, created_at)"
                    " VALUES (:t1, 's', 'one', now()), (:t2, 's', 'two', now())"
                ),
                {"t1": t1, "t2": t2},
            )
            await conn.execute(
                text(
                    "INSERT INTO contacts (id, space_id, created_at, updated_at)"
                    " VALUES (:c, 's', now(), now()), (:u, 's', now(), now())"
                ),
                {"c": contact, "u": untagged},
            )
            await conn.execute(
                text("INSERT INTO contact_tags (contact_id, tag_id, space_id) VALUES (:c, :t1, 's'), (:c, :t2, 's')"),
                {"c": contact, "t1": t1, "t2": t2},
            )
        await run_migrations("parley_contacts", database_url)
        async with engine.connect() as conn:
            got = dict((await conn.execute(text("SELECT id, tag_ids FROM contacts"))).all())
        assert sorted(got[contact]) == sorted([t1, t2]) and got[untagged] == []
        await run_migrations("parley_contacts", database_url, "20261125_0002", downgrade=True)
        async with engine.connect() as conn:
            columns = {c["name"] for c in await conn.run_sync(lambda c: inspect(c).get_columns("contacts"))}
            assert "tag_ids" not in columns
            assert (await conn.execute(text("SELECT count(*) FROM contact_tags"))).scalar() == 2
    finally:
        await engine.dispose()
        await run_migrations("parley_contacts", database_url)


async def test_value_tag_ids_migration_backfills_existing_values_and_reverts(database_url: str) -> None:
    await run_migrations("parley_contacts", database_url, "base", downgrade=True)
    await run_migrations("parley_contacts", database_url, "20261125_0003")
    tagged, untagged, tag, field = (uuid.uuid4() for _ in range(4))
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO field_definitions (id, space_id, key, label, type, created_at, updated_at)"
                    " VALUES (:f, 's', 'score', 'Score', 'number', now(), now())"
                ),
                {"f": field},
            )
            await conn.execute(
                text(
                    "INSERT INTO contacts (id, space_id, created_at, updated_at, tag_ids)"
                    " VALUES (:c, 's', now(), now(), ARRAY[CAST(:t AS uuid)]), (:u, 's', now(), now(), '{}')"
                ),
                {"c": tagged, "u": untagged, "t": tag},
            )
            await conn.execute(
                text(
                    "INSERT INTO field_values (contact_id, field_id, space_id, value_number)"
                    " VALUES (:c, :f, 's', 1), (:u, :f, 's', 2)"
                ),
                {"c": tagged, "u": untagged, "f": field},
            )
        await run_migrations("parley_contacts", database_url)
        async with engine.connect() as conn:
            got = dict((await conn.execute(text("SELECT contact_id, tag_ids FROM field_values"))).all())
            include = (
                await conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_field_values_number'"))
            ).scalar_one()
        assert got == {tagged: [tag], untagged: []}
        assert "INCLUDE (contact_id, tag_ids)" in include
        await run_migrations("parley_contacts", database_url, "20261125_0003", downgrade=True)
        async with engine.connect() as conn:
            columns = {c["name"] for c in await conn.run_sync(lambda c: inspect(c).get_columns("field_values"))}
            assert "tag_ids" not in columns
            assert (await conn.execute(text("SELECT count(*) FROM field_values"))).scalar() == 2
    finally:
        await engine.dispose()
        await run_migrations("parley_contacts", database_url)


async def test_view_field_ids_migration_names_fields_by_id_and_reverts_to_current_keys(database_url: str) -> None:
    await run_migrations("parley_contacts", database_url, "base", downgrade=True)
    await run_migrations("parley_contacts", database_url, "20261125_0004")
    score, other_space_score, view = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    criteria = {
        "all": [
            {"field": {"name": "score", "op": "greater_than", "values": ["5"]}},
            {
                "any": [
                    {"field": {"name": "email", "op": "is_set", "values": []}},
                    {"field": {"name": "gone", "op": "is_set", "values": []}},  # deleted before the upgrade
                    {"tags": {"match": "any", "ids": [str(uuid.uuid4())]}},
                ]
            },
        ]
    }
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO field_definitions (id, space_id, key, label, type, created_at, updated_at)"
                    " VALUES (:f, 's', 'score', 'Score', 'number', now(), now()),"
                    " (:o, 'other', 'score', 'Score', 'text', now(), now())"
                ),
                {"f": score, "o": other_space_score},
            )
            await conn.execute(
                text(
                    "INSERT INTO views (id, space_id, name, owner, shared, criteria, created_at, updated_at)"
                    " VALUES (:v, 's', 'high', 'user:u', false, CAST(:c AS jsonb), now(), now())"
                ),
                {"v": view, "c": json.dumps(criteria)},
            )
        await run_migrations("parley_contacts", database_url)
        async with engine.begin() as conn:
            migrated = (await conn.execute(text("SELECT criteria FROM views"))).scalar_one()
            await conn.execute(text("UPDATE field_definitions SET key = 'points' WHERE id = :f"), {"f": score})
        first, rest = migrated["all"]
        assert first == {"field": {"name": "score", "op": "greater_than", "values": ["5"], "id": str(score)}}
        assert rest == criteria["all"][1]  # standard fields, deleted fields and tags are untouched
        assert criteria_from_json(migrated).children[0].field_id == score  # the service reads the id
        await run_migrations("parley_contacts", database_url, "20261125_0004", downgrade=True)
        async with engine.connect() as conn:
            reverted = (await conn.execute(text("SELECT criteria FROM views"))).scalar_one()
        renamed = {"field": {"name": "points", "op": "greater_than", "values": ["5"]}}
        assert reverted == {"all": [renamed, criteria["all"][1]]}  # the previous release reads the current key
    finally:
        await engine.dispose()
        await run_migrations("parley_contacts", database_url)


async def test_tag_deletion_migration_frees_deleted_names_and_its_downgrade_finishes_deletions(
    database_url: str,
) -> None:
    await run_migrations("parley_contacts", database_url, "base", downgrade=True)
    await run_migrations("parley_contacts", database_url)
    contact, deleted, live = (uuid.uuid4() for _ in range(3))
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tags (id, space_id, name, created_at, deleted_at, deleted_by)"
                    " VALUES (:d, 's', 'vip', now(), now(), 'user:boss'), (:l, 's', 'VIP', now(), NULL, NULL)"
                ),
                {"d": deleted, "l": live},
            )
            await conn.execute(
                text(
                    "INSERT INTO contacts (id, space_id, created_at, updated_at, tag_ids)"
                    " VALUES (:c, 's', now(), now(), ARRAY[CAST(:d AS uuid), CAST(:l AS uuid)])"
                ),
                {"c": contact, "d": deleted, "l": live},
            )
            await conn.execute(
                text("INSERT INTO contact_tags (contact_id, tag_id, space_id) VALUES (:c, :d, 's'), (:c, :l, 's')"),
                {"c": contact, "d": deleted, "l": live},
            )
        await run_migrations("parley_contacts", database_url, "20261206_0005", downgrade=True)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT tag_ids FROM contacts"))).scalar_one() == [live]
            assert (await conn.execute(text("SELECT array_agg(tag_id) FROM contact_tags"))).scalar_one() == [live]
            assert (await conn.execute(text("SELECT array_agg(id) FROM tags"))).scalar_one() == [live]
            columns = {c["name"] for c in await conn.run_sync(lambda c: inspect(c).get_columns("tags"))}
            assert "deleted_at" not in columns
    finally:
        await engine.dispose()
        await run_migrations("parley_contacts", database_url)
