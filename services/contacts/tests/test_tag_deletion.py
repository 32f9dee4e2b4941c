"""Deleting a tag: gone from the catalog and from every read at once, its contacts untagged afterwards in
chunks (each with its tag.removed events), and a deletion interrupted midway finished by the next run."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import pytest
from parley_contacts.config import Settings
from parley_contacts.domain import Contact, FieldCond, FieldOp, Group, TagCond, TagMatch
from parley_contacts.repository import DomainEvent, Repository, UntagStep
from parley_contacts.service import Actor, ContactsService, ImportRow
from parley_kit.db import session_factory
from parley_kit.errors import InvalidArgument, NotFound
from prometheus_client import REGISTRY
from pydantic import ValidationError
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


async def test_a_deleted_tag_leaves_every_read_at_once_and_its_contacts_afterwards(
    service: ContactsService, engine: AsyncEngine, sink, stored_tags, space: str, manager: Actor
) -> None:
    doomed, kept = await service.create_tag(space, "doomed"), await service.create_tag(space, "kept")
    await service.create_field(space, "score", "Score", "number")
    only, both = [
        await service.create_contact(space, manager, {}, {"score": "1"}, tag_ids=ids)
        for ids in ([str(doomed.id)], [str(doomed.id), str(kept.id)])
    ]
    others = [
        await service.create_contact(space, manager, {}, {"score": "2"}, tag_ids=ids) for ids in ([str(kept.id)], [])
    ]
    views = {
        "any doomed": (TagCond(TagMatch.ANY, (doomed.id,)),),
        "any doomed or kept": (TagCond(TagMatch.ANY, (doomed.id, kept.id)),),
        "all doomed and kept": (TagCond(TagMatch.ALL, (doomed.id, kept.id)),),
        "none doomed, with a score": (TagCond(TagMatch.NONE, (doomed.id,)), FieldCond("score", FieldOp.IS_SET)),
        "any doomed, with a score": (TagCond(TagMatch.ANY, (doomed.id,)), FieldCond("score", FieldOp.IS_SET)),
    }
    view_ids = {
        name: (await service.create_view(space, manager, name, Group(any=False, children=conds), True)).id
        for name, conds in views.items()
    }

    assert await service.delete_tag(space, manager, str(doomed.id)) == 2

    # Not untagged yet (that is the background's work)...
    assert (await stored_tags(space))[only.id] == {doomed.id}
    # ...but no read shows the tag any more.
    assert (await service.get_contact(space, str(only.id)))[0].tag_ids == ()
    assert (await service.get_contact(space, str(both.id)))[0].tag_ids == (kept.id,)
    listed = await service.list_contacts(space, manager)
    assert {c.id: c.tag_ids for c in listed.contacts}[both.id] == (kept.id,)
    assert [t.id for t in await service.list_tags(space)] == [kept.id]
    expected = {
        "any doomed": set(),
        "any doomed or kept": {both.id, others[0].id},
        "all doomed and kept": set(),
        "none doomed, with a score": {only.id, both.id, *(c.id for c in others)},
        "any doomed, with a score": set(),
    }
    for name, view_id in view_ids.items():
        page = await service.list_contacts(space, manager, view_id=str(view_id))
        assert ({c.id for c in page.contacts}, page.total) == (expected[name], len(expected[name])), name
    with pytest.raises(InvalidArgument, match="unknown tag id"):
        await service.list_contacts(space, manager, criteria=Group(any=False, children=views["any doomed"]))
    for call in (
        service.change_tags(space, manager, [str(others[1].id)], [str(doomed.id)], []),
        service.change_tags(space, manager, [str(only.id)], [], [str(doomed.id)]),
        service.update_tag(space, str(doomed.id), "renamed", None, None),
        service.delete_tag(space, manager, str(doomed.id)),
        service.create_contact(space, manager, {}, tag_ids=[str(doomed.id)]),
    ):
        with pytest.raises(NotFound, match=f"tag {doomed.id} not found"):
            await call
    again = await service.create_tag(space, "Doomed")  # the name is free again
    assert [t.id for t in await service.list_tags(space)] == [again.id, kept.id]

    assert await service.finish_tag_deletions() == 2
    expected_tags = {only.id: set(), both.id: {kept.id}, others[0].id: {kept.id}, others[1].id: set()}
    assert await stored_tags(space) == expected_tags
    removed = sink.of("tag.removed", space)
    assert sorted(e.data["contact_id"] for e in removed) == sorted([only.id, both.id])
    assert {(e.actor, e.data["tag"].id) for e in removed} == {(manager.subject, doomed.id)}
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM tags WHERE id = :t"), {"t": doomed.id})).scalar() == 0


async def test_reads_hide_a_deleted_tag_in_the_statement_reading_the_contacts_not_in_a_round_trip_of_their_own(
    service: ContactsService, engine: AsyncEngine, space: str, manager: Actor
) -> None:
    """Every page and contact read (and every write re-reading its contact) paid a query of the space's pending
    deletions, although normally there are none: the filter now rides in the statement reading the rows."""
    doomed, kept = await service.create_tag(space, "doomed"), await service.create_tag(space, "kept")
    contact = await service.create_contact(
        space, manager, {"first_name": "Zed"}, tag_ids=[str(doomed.id), str(kept.id)]
    )
    await service.delete_tag(space, manager, str(doomed.id))
    by_kept = Group(any=False, children=(TagCond(TagMatch.ANY, (kept.id,)),))
    pages: dict[str, dict[str, Any]] = {
        "page": {"with_total": False},
        "page by criteria": {"criteria": by_kept},
        "search": {"search": "zed"},
    }

    async def read(name: str) -> Contact:
        if name == "get":
            return (await service.get_contact(space, str(contact.id)))[0]
        if name == "update":
            return await service.update_contact(space, manager, str(contact.id), {"last_name": "Z"})
        (found,) = (await service.list_contacts(space, manager, **pages[name])).contacts
        return found

    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        for name in ("get", *pages, "update"):
            statements.clear()
            assert (await read(name)).tag_ids == (kept.id,), name
            pending_reads = [q for q in statements if "deleted_at IS NOT NULL" in q and "contacts" not in q]
            assert pending_reads == [], name
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    await service.finish_tag_deletions()


async def test_a_deletion_interrupted_midway_is_finished_by_the_next_run_with_one_event_per_contact(
    service: ContactsService,
    engine: AsyncEngine,
    sink,
    stored_tags,
    space: str,
    manager: Actor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tag = await service.create_tag(space, "popular")
    holders = [await service.create_contact(space, manager, {}, tag_ids=[str(tag.id)]) for _ in range(5)]
    assert await service.delete_tag(space, manager, str(tag.id)) == 5
    written = 0

    async def dies_at_the_third_event(session: AsyncSession, event: DomainEvent) -> None:
        nonlocal written
        if event.space_id == space:
            written += 1
        if written == 3:
            raise ConnectionResetError("the process died")
        await sink(session, event)

    dying = ContactsService(Repository(session_factory(engine), dies_at_the_third_event))
    assert await dying.finish_tag_deletions(chunk=2) == 2
    assert "ConnectionResetError: the process died" in caplog.text
    # The first chunk committed with its events; the second rolled back with its own.
    assert sorted(len(tags) for tags in (await stored_tags(space)).values()) == [0, 0, 1, 1, 1]
    assert len(sink.of("tag.removed", space)) == 2
    assert (await service.get_contact(space, str(holders[4].id)))[0].tag_ids == ()  # still hidden meanwhile

    restarted = ContactsService(service.repo)
    assert await restarted.finish_tag_deletions(chunk=2) == 3
    assert await stored_tags(space) == {h.id: set() for h in holders}
    assert sorted(e.data["contact_id"] for e in sink.of("tag.removed", space)) == sorted(h.id for h in holders)
    assert await restarted.finish_tag_deletions() == 0


def _sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


async def test_the_backlog_gauges_and_the_untagged_counter_show_a_deletion_until_it_is_done(
    service: ContactsService, engine: AsyncEngine, sink, space: str, manager: Actor
) -> None:
    await service.finish_tag_deletions()  # whatever earlier tests left
    assert _sample("parley_contacts_tags_pending_deletion") == 0
    assert _sample("parley_contacts_tag_deletion_oldest_timestamp_seconds") == 0
    untagged = _sample("parley_contacts_tag_deletion_untagged_total")
    tag = await service.create_tag(space, "slow")
    for _ in range(3):
        await service.create_contact(space, manager, {}, tag_ids=[str(tag.id)])
    asked = time.time()
    await service.delete_tag(space, manager, str(tag.id))

    written = 0

    async def fails_after_the_first_chunk(session: AsyncSession, event: DomainEvent) -> None:
        nonlocal written
        written += 1
        if written == 3:
            raise ConnectionResetError("the database went away")
        await sink(session, event)

    stuck = ContactsService(Repository(session_factory(engine), fails_after_the_first_chunk))
    assert await stuck.finish_tag_deletions(chunk=2) == 2  # the failed chunk is logged, the gauges refreshed
    assert _sample("parley_contacts_tags_pending_deletion") == 1
    assert asked - 1 <= _sample("parley_contacts_tag_deletion_oldest_timestamp_seconds") <= time.time()
    assert _sample("parley_contacts_tag_deletion_untagged_total") == untagged + 2  # the committed chunk only

    assert await service.finish_tag_deletions(chunk=2) == 1
    assert _sample("parley_contacts_tags_pending_deletion") == 0
    assert _sample("parley_contacts_tag_deletion_oldest_timestamp_seconds") == 0
    assert _sample("parley_contacts_tag_deletion_untagged_total") == untagged + 3


def test_the_loops_interval_and_chunk_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_CONTACTS_TAG_DELETION_INTERVAL_SECONDS", "15")
    monkeypatch.setenv("PARLEY_CONTACTS_TAG_DELETION_CHUNK", "250")
    monkeypatch.setenv("PARLEY_ASSIGNEE_CHECK", "off")  # no workspace needed to read settings
    settings = Settings(database_url="postgresql+asyncpg://x@localhost/contacts")
    assert (settings.contacts_tag_deletion_interval_seconds, settings.contacts_tag_deletion_chunk) == (15, 250)
    with pytest.raises(ValidationError, match="contacts_tag_deletion_chunk"):
        Settings(database_url="postgresql+asyncpg://x@localhost/contacts", contacts_tag_deletion_chunk=0)


async def test_the_background_loop_finishes_interrupted_deletions_at_start_and_new_ones_when_woken(
    service: ContactsService, stored_tags, space: str, manager: Actor
) -> None:
    svc = ContactsService(service.repo)
    left, right = await svc.create_tag(space, "left"), await svc.create_tag(space, "right")
    contact = await svc.create_contact(space, manager, {}, tag_ids=[str(left.id), str(right.id)])
    await svc.delete_tag(space, manager, str(left.id))  # as if the process died before untagging

    async def until(tags: set[uuid.UUID]) -> None:
        for _ in range(500):
            if (await stored_tags(space))[contact.id] == tags:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the contact's tags never became {tags}")

    loop = asyncio.create_task(svc.run_tag_deletions(interval=3600))
    try:
        await until({right.id})  # the first pass, at start
        await svc.delete_tag(space, manager, str(right.id))
        await until(set())  # woken by DeleteTag, not by the hour
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_an_import_naming_a_deleted_tag_creates_a_new_tag_of_that_name(
    service: ContactsService, stored_tags, space: str, manager: Actor
) -> None:
    old = await service.create_tag(space, "vip")
    holder = await service.create_contact(space, manager, {}, tag_ids=[str(old.id)])
    await service.delete_tag(space, manager, str(old.id))
    (outcome,) = await service.import_contacts(space, manager, [ImportRow({}, {}, ("VIP",))])
    (new,) = await service.list_tags(space)
    assert new.id != old.id and new.name == "VIP"
    assert (await service.get_contact(space, str(outcome.contact_id)))[0].tag_ids == (new.id,)
    await service.finish_tag_deletions()
    assert await stored_tags(space) == {holder.id: set(), outcome.contact_id: {new.id}}


class FailingStep(Repository):
    """A step of one deleted tag's removal fails (a bug, a poisoned row)."""

    def __init__(self, engine: AsyncEngine, sink, failing: uuid.UUID) -> None:
        super().__init__(session_factory(engine), sink)
        self.failing = failing

    async def untag_deleted(self, s: AsyncSession, tag_id: uuid.UUID, chunk: int) -> UntagStep | None:
        if tag_id == self.failing:
            raise RuntimeError(f"no step for tag {tag_id}")
        return await super().untag_deleted(s, tag_id, chunk)


async def test_a_tag_whose_deletion_fails_is_logged_and_the_others_are_finished(
    service: ContactsService,
    engine: AsyncEngine,
    sink,
    stored_tags,
    space: str,
    manager: Actor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Deletions are finished oldest first across spaces: one whose step fails (here the oldest) is logged
    with its traceback and retried by the next pass, instead of ending the pass before every later one."""
    bad, good = await service.create_tag(space, "bad"), await service.create_tag(space, "good")
    one, two = [await service.create_contact(space, manager, {}, tag_ids=[str(t.id)]) for t in (bad, good)]
    for tag in (bad, good):
        await service.delete_tag(space, manager, str(tag.id))
    failing = ContactsService(FailingStep(engine, sink, bad.id))
    assert await failing.finish_tag_deletions() == 1
    assert await stored_tags(space) == {one.id: {bad.id}, two.id: set()}
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert str(bad.id) in record.getMessage() and record.exc_info is not None
    assert await service.finish_tag_deletions() == 1
    assert await stored_tags(space) == {one.id: set(), two.id: set()}
