"""UpsertByIdentity: find-or-create by channel identity, race-safe, fills only empty fields."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from parley_contacts.repository import Repository
from parley_contacts.service import MAX_UPSERT_BATCH, Actor, ContactsService, IdentityInput, UpsertItem
from parley_kit.db import session_factory
from parley_kit.errors import Aborted, Internal, InvalidArgument, Unavailable
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

SERVICE = Actor(subject="service:conversations")


def ident(external_id: str = "psid-1", channel: str = "ch-fb") -> IdentityInput:
    return IdentityInput(channel_id=channel, channel_type=1, external_id=external_id)


async def test_fifty_concurrent_upserts_of_one_new_identity_create_exactly_one_contact(
    service: ContactsService, space: str, sink
) -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    results = await asyncio.gather(
        *(service.upsert_by_identity(space, SERVICE, ident("race"), {"first_name": "Ana"}, at) for _ in range(50))
    )
    ids = {contact_id for contact_id, _ in results}
    assert len(ids) == 1
    assert sum(created for _, created in results) == 1
    page = await service.list_contacts(space, SERVICE)
    assert page.total == 1
    assert len(sink.of("contact.created", space)) == 1


async def test_existing_identity_returns_same_contact_and_moves_interaction_forward_only(
    service: ContactsService, space: str
) -> None:
    t1 = datetime(2026, 11, 1, 10, tzinfo=UTC)
    cid, created = await service.upsert_by_identity(space, SERVICE, ident(), {}, t1)
    assert created
    again, created_again = await service.upsert_by_identity(space, SERVICE, ident(), {}, t1 + timedelta(hours=1))
    assert (again, created_again) == (cid, False)
    await service.upsert_by_identity(space, SERVICE, ident(), {}, t1 - timedelta(days=1))  # late, older message
    contact, _ = await service.get_contact(space, str(cid))
    assert contact.last_interaction_at == t1 + timedelta(hours=1)
    assert contact.last_interaction_channel_id == "ch-fb"


async def test_profile_hints_fill_only_empty_fields_and_never_overwrite_edits(
    service: ContactsService, space: str, agent: Actor, sink
) -> None:
    cid, _ = await service.upsert_by_identity(space, SERVICE, ident(), {"display_name": "Ana Lima"}, None)
    contact, _ = await service.get_contact(space, str(cid))
    assert (contact.first_name, contact.last_name) == ("Ana", "Lima")
    await service.update_contact(space, agent, str(cid), {"first_name": "Anita"})
    await service.upsert_by_identity(
        space, SERVICE, ident(), {"first_name": "Ana", "phone": "+33 6 12 34 56 78", "language": "pt_BR"}, None
    )
    contact, _ = await service.get_contact(space, str(cid))
    assert contact.first_name == "Anita"
    assert contact.phone == "+33612345678"
    assert contact.language == "pt-BR"
    filled = [e for e in sink.of("contact.updated", space) if e.actor == SERVICE.subject]
    assert len(filled) == 1
    assert {c.field for c in filled[0].data["changes"]} == {"phone", "language"}


async def test_invalid_profile_hints_are_dropped_not_failing_the_message(service: ContactsService, space: str) -> None:
    cid, created = await service.upsert_by_identity(
        space, SERVICE, ident(), {"phone": "not a phone", "avatar_url": "ftp://x", "language": "??"}, None
    )
    contact, _ = await service.get_contact(space, str(cid))
    assert created and contact.phone is None and contact.avatar_url is None and contact.language is None


async def test_same_external_id_on_another_channel_or_space_is_another_contact(
    service: ContactsService, space: str
) -> None:
    a, _ = await service.upsert_by_identity(space, SERVICE, ident("x", "ch-1"), {}, None)
    b, _ = await service.upsert_by_identity(space, SERVICE, ident("x", "ch-2"), {}, None)
    c, _ = await service.upsert_by_identity(space + "-other", SERVICE, ident("x", "ch-1"), {}, None)
    assert len({a, b, c}) == 3


async def test_repeated_upsert_without_news_emits_no_event(service: ContactsService, space: str, sink) -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    await service.upsert_by_identity(space, SERVICE, ident(), {"first_name": "Bo"}, at)
    before = len([e for e in sink.events if e.space_id == space])
    for _ in range(3):
        await service.upsert_by_identity(space, SERVICE, ident(), {"first_name": "Bo"}, at)
    assert len([e for e in sink.events if e.space_id == space]) == before


def item(space: str, external_id: str, at: datetime | None = None, **hints: str) -> UpsertItem:
    return UpsertItem(space, ident(external_id), hints, at)


async def test_concurrent_batches_with_one_new_identity_create_exactly_one_contact(
    service: ContactsService, space: str, sink
) -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    batches = [[item(space, f"own-{i}", at), item(space, "shared", at, first_name="Ana")] for i in range(20)]
    results = await asyncio.gather(*(service.upsert_by_identities(SERVICE, b) for b in batches))
    shared = [r[1] for r in results]
    assert len({r.contact_id for r in shared}) == 1 and sum(r.created for r in shared) == 1
    assert all(r[0].created and r[0].error is None for r in results)
    assert (await service.list_contacts(space, SERVICE)).total == 21
    assert len(sink.of("contact.created", space)) == 21


async def test_batch_reports_a_refused_identity_per_item_and_keeps_the_others(
    service: ContactsService, space: str
) -> None:
    known, _ = await service.upsert_by_identity(space, SERVICE, ident("known"), {}, None)
    out = await service.upsert_by_identities(
        SERVICE, [item(space, "fresh"), UpsertItem(space, ident(""), {}, None), item(space, "known")]
    )
    assert out[0].created and out[0].contact_id is not None and out[0].error is None
    assert isinstance(out[1].error, InvalidArgument) and out[1].contact_id is None
    assert (out[2].contact_id, out[2].created, out[2].error) == (known, False, None)
    with pytest.raises(InvalidArgument, match="at most 500"):
        await service.upsert_by_identities(SERVICE, [item(space, f"x{i}") for i in range(MAX_UPSERT_BATCH + 1)])


async def test_batch_moves_interaction_forward_to_the_latest_and_fills_only_empty_hints(
    service: ContactsService, space: str, sink
) -> None:
    t1 = datetime(2026, 11, 1, 10, tzinfo=UTC)
    cid, _ = await service.upsert_by_identity(space, SERVICE, ident("p"), {"first_name": "Ana"}, t1)
    out = await service.upsert_by_identities(
        SERVICE,
        [
            item(space, "p", t1 + timedelta(hours=2), first_name="Other", language="fr"),
            item(space, "p", t1 + timedelta(hours=3)),
            item(space, "p", t1 - timedelta(days=1)),
        ],
    )
    assert [(o.contact_id, o.created) for o in out] == [(cid, False)] * 3
    got, _ = await service.get_contact(space, str(cid))
    assert got.last_interaction_at == t1 + timedelta(hours=3)
    assert (got.first_name, got.language) == ("Ana", "fr")
    assert len(sink.of("contact.updated", space)) == 1
    await service.upsert_by_identities(SERVICE, [item(space, "p", t1)])  # older: never moves back
    got, _ = await service.get_contact(space, str(cid))
    assert got.last_interaction_at == t1 + timedelta(hours=3)


async def test_a_batch_repeating_a_new_identity_creates_it_once(service: ContactsService, space: str) -> None:
    at = datetime(2026, 11, 2, tzinfo=UTC)
    out = await service.upsert_by_identities(SERVICE, [item(space, "twice", at), item(space, "twice")])
    assert out[0].contact_id == out[1].contact_id and [o.created for o in out] == [True, False]
    got, _ = await service.get_contact(space, str(out[0].contact_id))
    assert got.last_interaction_at == at


class FailingClaims(Repository):
    """Claiming a new identity fails as the database would: 'deadlocked' with a deadlock (SQLSTATE 40P01, raised
    by PostgreSQL), 'dropped' losing its connection (the server ends it mid-statement), 'buggy' with a bug."""

    async def claim_identity(
        self, s: AsyncSession, space_id: str, channel_id: str, channel_type: int, external_id: str, *args, **kw
    ) -> bool:
        if external_id == "deadlocked":
            await s.execute(text("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"))
        if external_id == "dropped":
            await s.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        if external_id == "buggy":
            raise RuntimeError("a bug")
        return await super().claim_identity(s, space_id, channel_id, channel_type, external_id, *args, **kw)


async def test_a_batch_answers_a_deadlocked_item_aborted_and_a_lost_connection_unavailable_not_internal(
    engine: AsyncEngine, sink, space: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Per item: transient database failures say so (the caller retries the item), a bug stays INTERNAL (with
    its traceback logged); the other items are answered."""
    service = ContactsService(FailingClaims(session_factory(engine), sink))
    caplog.set_level(logging.WARNING, logger="parley_contacts.service")
    out = await service.upsert_by_identities(
        SERVICE, [item(space, x) for x in ("deadlocked", "fresh", "dropped", "buggy")]
    )
    assert isinstance(out[0].error, Aborted) and "retry" in out[0].error.message
    assert out[1].created and isinstance(out[1].contact_id, uuid.UUID) and out[1].error is None
    assert isinstance(out[2].error, Unavailable) and "retry" in out[2].error.message
    assert isinstance(out[3].error, Internal) and "logged" in out[3].error.message
    logged = {
        x: [(r.levelname, r.exc_info is not None) for r in caplog.records if f"identity {x} " in r.getMessage()]
        for x in ("deadlocked", "dropped", "buggy")
    }
    assert logged == {"deadlocked": [("WARNING", False)], "dropped": [("WARNING", False)], "buggy": [("ERROR", True)]}
    assert (await service.list_contacts(space, SERVICE)).total == 1
