"""ImportContacts: every row answered on its own, a failed row changes nothing, optional de-duplication."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from parley_contacts.domain import MAX_TAGS_PER_CONTACT
from parley_contacts.repository import Repository
from parley_contacts.service import Actor, ContactsService, ImportRow
from parley_kit.db import session_factory
from parley_kit.errors import Aborted, FailedPrecondition, Internal, InvalidArgument
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


class CrashingRepository(Repository):
    """Fails like a bug would when inserting a contact named 'Crash', and as PostgreSQL does on a deadlock
    (SQLSTATE 40P01, raised by the database itself) for one named 'Deadlock'."""

    async def insert_contact(self, s: AsyncSession, values: dict[str, Any]) -> None:
        if values.get("first_name") == "Crash":
            raise RuntimeError("connection lost")
        if values.get("first_name") == "Deadlock":
            await s.execute(text("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"))
        await super().insert_contact(s, values)


@pytest.fixture
def crashing(engine: AsyncEngine, sink) -> ContactsService:
    return ContactsService(CrashingRepository(session_factory(engine), sink))


def row(tags: tuple[str, ...] = (), values: dict[str, str] | None = None, **profile: str) -> ImportRow:
    return ImportRow(dict(profile), values or {}, tags)


async def test_an_unexpected_failure_is_that_rows_internal_error_and_later_rows_are_imported(
    crashing: ContactsService, space: str, manager: Actor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="parley_contacts.service")
    outcomes = await crashing.import_contacts(
        space, manager, [row(first_name="Ana"), row(first_name="Crash"), row(first_name="Bea")]
    )
    assert [o.contact_id is not None for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, Internal) and "logged" in outcomes[1].error.message
    assert "import row 1" in caplog.text and "connection lost" in caplog.text  # the traceback, for operators
    names = sorted(c.first_name for c in (await crashing.list_contacts(space, manager)).contacts)
    assert names == ["Ana", "Bea"]


async def test_a_deadlocked_row_is_aborted_to_retry_not_internal_and_later_rows_are_imported(
    crashing: ContactsService, space: str, manager: Actor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="parley_contacts.service")
    outcomes = await crashing.import_contacts(
        space, manager, [row(("new",), first_name="Deadlock"), row(first_name="Bea")]
    )
    assert isinstance(outcomes[0].error, Aborted) and "retry" in outcomes[0].error.message
    assert outcomes[1].contact_id is not None and outcomes[1].error is None
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "import row 0" in caplog.text
    assert await crashing.list_tags(space) == []  # the row changed nothing


async def test_every_domain_error_is_reported_on_its_row_and_later_rows_are_imported(
    service: ContactsService, space: str, manager: Actor
) -> None:
    twin = {"first_name": "Twin", "email": "twin@x.com"}
    await service.create_contact(space, manager, twin)
    await service.create_contact(space, manager, twin)
    outcomes = await service.import_contacts(
        space,
        manager,
        [row(email="twin@x.com"), row(email="nope"), row(first_name="Ok", email="ok@x.com")],
        dedupe_by="email",
    )
    assert isinstance(outcomes[0].error, FailedPrecondition) and "merge them" in outcomes[0].error.message
    assert isinstance(outcomes[1].error, InvalidArgument)
    assert outcomes[2].contact_id is not None and outcomes[2].error is None


async def test_a_failed_row_creates_no_tag(
    crashing: ContactsService, engine: AsyncEngine, space: str, manager: Actor, sink
) -> None:
    await crashing.create_field(space, "age", "Age", "number")
    before = len(sink.events)
    outcomes = await crashing.import_contacts(
        space,
        manager,
        [
            row(("from-bad-email",), email="nope"),  # refused before its transaction
            row(("from-bad-value", "kept"), {"age": "old"}),  # refused after its tags were inserted
            row(("from-crash",), first_name="Crash"),  # an unexpected failure inside the transaction
            row(("Kept",), first_name="Good"),
        ],
    )
    assert [o.error is None for o in outcomes] == [False, False, False, True]
    assert [t.name for t in await crashing.list_tags(space)] == ["Kept"]
    assert [e.kind for e in sink.events[before:]] == ["contact.created"]


async def test_rows_racing_to_create_one_tag_name_share_one_tag(
    service: ContactsService, space: str, manager: Actor
) -> None:
    calls = [
        service.import_contacts(space, manager, [row(("Hot" if i % 2 else "hot",), first_name=f"c{i}")])
        for i in range(8)
    ]
    results = await asyncio.gather(*calls)
    assert all(o.error is None for outcomes in results for o in outcomes)
    (tag,) = await service.list_tags(space)
    contacts = (await service.list_contacts(space, manager)).contacts
    assert len(contacts) == 8 and all(c.tag_ids == (tag.id,) for c in contacts)


async def test_an_import_row_reads_its_existing_tags_in_one_statement(
    service: ContactsService, engine: AsyncEngine, space: str, manager: Actor
) -> None:
    """A row naming three existing tags and a new one: one statement finds (and locks) the three, one inserts the
    new one; not a round trip per tag per row (3,000 for a file of 1,000 such rows)."""
    for name in ("gold", "silver", "bronze"):
        await service.create_tag(space, name)
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith(("SELECT tags.", "INSERT INTO tags ")):  # reads and writes of the tag catalog
            statements.append(statement.split()[0])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        (outcome,) = await service.import_contacts(
            space, manager, [row(("Silver", "new", "GOLD", "bronze", "gold"), first_name="Ana")]
        )
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert outcome.error is None
    assert statements == ["SELECT", "INSERT"]
    tags = {t.id: t.name for t in await service.list_tags(space)}
    got, _ = await service.get_contact(space, str(outcome.contact_id))
    assert sorted(tags[t] for t in got.tag_ids) == ["bronze", "gold", "new", "silver"]


async def test_dedupe_by_email_updates_the_existing_contact_instead_of_adding_one(
    service: ContactsService, space: str, manager: Actor, sink
) -> None:
    await service.create_field(space, "plan", "Plan", "list", options=["free", "pro"])
    vip = await service.create_tag(space, "vip")
    ana = await service.create_contact(
        space,
        manager,
        {"first_name": "Ana", "email": "Ana@X.com", "phone": "+33612345678"},
        {"plan": "free"},
        [str(vip.id)],
    )
    before = len(sink.events)
    (outcome,) = await service.import_contacts(
        space,
        manager,
        [row(("vip", "csv"), {"plan": "pro"}, first_name="Anita", email="ana@x.com", last_name="")],
        dedupe_by="email",
    )
    assert (outcome.contact_id, outcome.updated) == (ana.id, True)
    got, _ = await service.get_contact(space, str(ana.id))
    assert (got.first_name, got.phone) == ("Anita", "+33612345678")  # an empty cell clears nothing
    assert [e.kind for e in sink.events[before:]] == ["contact.updated", "field.updated", "tag.added"]
    assert (await service.list_contacts(space, manager)).total == 1


async def test_dedupe_by_phone_matches_the_normalized_number_and_a_row_without_one_is_created(
    service: ContactsService, space: str, manager: Actor
) -> None:
    bea = await service.create_contact(space, manager, {"first_name": "Bea", "phone": "+33612345678"})
    outcomes = await service.import_contacts(
        space,
        manager,
        [row(phone="06 12 34 56 78", country="fr", last_name="B"), row(first_name="No phone")],
        dedupe_by="phone",
    )
    assert (outcomes[0].contact_id, outcomes[0].updated) == (bea.id, True)
    assert outcomes[1].contact_id not in (None, bea.id) and not outcomes[1].updated
    got, _ = await service.get_contact(space, str(bea.id))
    assert (got.first_name, got.last_name, got.country) == ("Bea", "B", "FR")


async def test_concurrent_deduplicated_imports_of_one_email_create_one_contact(
    service: ContactsService, space: str, manager: Actor
) -> None:
    calls = [
        service.import_contacts(space, manager, [row(first_name=f"n{i}", email="same@x.com")], dedupe_by="email")
        for i in range(10)
    ]
    outcomes = [o for result in await asyncio.gather(*calls) for o in result]
    assert all(o.error is None for o in outcomes)
    assert len({o.contact_id for o in outcomes}) == 1
    assert sorted(o.updated for o in outcomes) == [False] + [True] * 9
    assert (await service.list_contacts(space, manager)).total == 1


async def test_a_file_imported_again_with_dedupe_adds_no_contact(
    service: ContactsService, space: str, manager: Actor
) -> None:
    rows = [row(first_name=f"p{i}", email=f"p{i}@x.com") for i in range(5)]
    first = await service.import_contacts(space, manager, rows[:3])  # e.g. a run stopped after a batch
    again = await service.import_contacts(space, manager, rows, dedupe_by="email")
    assert [o.updated for o in again] == [True, True, True, False, False]
    assert [o.contact_id for o in again[:3]] == [o.contact_id for o in first]
    assert (await service.list_contacts(space, manager)).total == 5


async def test_dedupe_on_anything_but_email_or_phone_is_refused(
    service: ContactsService, space: str, manager: Actor
) -> None:
    with pytest.raises(InvalidArgument, match="email, phone"):
        await service.import_contacts(space, manager, [row(first_name="x")], dedupe_by="first_name")


async def test_a_deduplicated_row_may_not_give_its_contact_more_than_100_tags(
    service: ContactsService, space: str, manager: Actor, sink
) -> None:
    """The cap on an existing contact: the row is refused whole (no tag created, no change, no event); a row
    naming only tags the full contact already carries still updates it."""
    names = [f"t{i:03}" for i in range(MAX_TAGS_PER_CONTACT)]
    tags = [str((await service.create_tag(space, name)).id) for name in names]
    full = await service.create_contact(space, manager, {"first_name": "Full", "email": "full@x.com"}, {}, tags)
    before = len(sink.events)
    (refused,) = await service.import_contacts(
        space, manager, [row(("T000", "extra"), first_name="Changed", email="full@x.com")], dedupe_by="email"
    )
    assert isinstance(refused.error, FailedPrecondition) and refused.contact_id is None
    assert f"contact {full.id} would have 101 tags; a contact has at most 100" in refused.error.message
    got, _ = await service.get_contact(space, str(full.id))
    assert (got.first_name, len(got.tag_ids)) == ("Full", MAX_TAGS_PER_CONTACT)
    assert "extra" not in {t.name for t in await service.list_tags(space)}
    assert len(sink.events) == before
    (kept,) = await service.import_contacts(
        space, manager, [row(tuple(n.upper() for n in names), first_name="Changed", email="full@x.com")], "email"
    )
    assert (kept.contact_id, kept.updated, kept.error) == (full.id, True, None)
    got, _ = await service.get_contact(space, str(full.id))
    assert (got.first_name, len(got.tag_ids)) == ("Changed", MAX_TAGS_PER_CONTACT)


async def test_a_deduplicated_row_counts_tags_still_being_removed_toward_the_cap(
    service: ContactsService, stored_tags, space: str, manager: Actor
) -> None:
    """A tag deleted from the catalog stays on its contacts' rows (and so in their index entries) until the
    background removes it: reads no longer show it, but the cap counts it, as tagging does."""
    tags = [str((await service.create_tag(space, f"t{i:03}")).id) for i in range(MAX_TAGS_PER_CONTACT)]
    full = await service.create_contact(space, manager, {"email": "full@x.com"}, {}, tags)
    await service.delete_tag(space, manager, tags[0])  # its removal from `full` is pending
    assert len((await service.get_contact(space, str(full.id)))[0].tag_ids) == MAX_TAGS_PER_CONTACT - 1
    (refused,) = await service.import_contacts(space, manager, [row(("extra",), email="full@x.com")], "email")
    assert isinstance(refused.error, FailedPrecondition)
    assert f"contact {full.id} would have 101 tags" in refused.error.message
    assert "counting deleted tags not yet removed from it" in refused.error.message
    assert len((await stored_tags(space))[full.id]) == MAX_TAGS_PER_CONTACT
    await service.finish_tag_deletions()
    (kept,) = await service.import_contacts(space, manager, [row(("extra",), email="full@x.com")], "email")
    assert (kept.contact_id, kept.error) == (full.id, None)
    assert len((await stored_tags(space))[full.id]) == MAX_TAGS_PER_CONTACT
