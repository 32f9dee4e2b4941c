"""Calls racing on the same rows, interleaved deterministically: a test holds a row lock in its own
transaction so that one call pauses at a known point while another runs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from parley_contacts.service import Actor, ContactsService, IdentityInput
from parley_kit.errors import AlreadyExists, FailedPrecondition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


async def wait_blocked(engine: AsyncEngine, count: int = 1) -> None:
    """Return once `count` sessions of this database wait for a lock: the calls under test are paused."""
    for _ in range(1000):
        async with engine.connect() as conn:
            waiting = await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            if waiting.scalar_one() >= count:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} sessions ever waited for a lock")


@asynccontextmanager
async def holding(engine: AsyncEngine, sql: str, **params: object) -> AsyncIterator[AsyncConnection]:
    """A transaction that ran `sql` (taking its locks); committed when the block ends."""
    async with engine.connect() as conn:
        await conn.execute(text(sql), params)
        yield conn
        await conn.commit()


def _identity_row(space: str, contact_id: uuid.UUID, ident: IdentityInput) -> dict[str, object]:
    return {
        "s": space,
        "c": contact_id,
        "ch": ident.channel_id,
        "t": ident.channel_type,
        "x": ident.external_id,
    }


CLAIM_IDENTITY = (
    "INSERT INTO contact_identities (id, space_id, contact_id, channel_id, channel_type, external_id, created_at)"
    " VALUES (gen_random_uuid(), :s, :c, :ch, :t, :x, now())"
)


async def test_add_identity_claimed_meanwhile_by_another_contact_is_already_exists_and_emits_nothing(
    service: ContactsService, engine: AsyncEngine, sink, space: str, agent: Actor
) -> None:
    """AddIdentity reads the identity's owner (none), then another caller claims it before the insert:
    the insert finds it taken, and the call says so instead of reporting an identity it does not have."""
    mine, other = [await service.create_contact(space, agent, {}) for _ in range(2)]
    ident = IdentityInput("ch-fb", 1, "psid-raced")
    async with holding(engine, CLAIM_IDENTITY, **_identity_row(space, other.id, ident)):
        call = asyncio.create_task(service.add_identity(space, agent, str(mine.id), ident))
        await wait_blocked(engine)  # its insert waits for the other claim to commit
    with pytest.raises(AlreadyExists, match=f"belongs to contact {other.id}"):
        await call
    assert not [e for e in sink.of("contact.updated", space) if e.data["contact_id"] == mine.id]
    assert (await service.get_contact(space, str(mine.id)))[0].identities == ()


async def test_opposite_merges_of_two_contacts_do_not_deadlock(
    service: ContactsService, engine: AsyncEngine, space: str, manager: Actor
) -> None:
    """merge(a <- b) and merge(b <- a) at once: both lock the pair in one order, so the second waits for
    the first and then finds the two already one contact, instead of a deadlock."""
    a, b = [await service.create_contact(space, manager, {"first_name": n}) for n in "ab"]
    # The test holds `a`; the first merge waits for it, the second merge then waits too.
    async with holding(engine, "SELECT 1 FROM contacts WHERE id = :a FOR UPDATE", a=a.id):
        first = asyncio.create_task(service.merge(space, manager, str(a.id), str(b.id)))
        await wait_blocked(engine, 1)
        second = asyncio.create_task(service.merge(space, manager, str(b.id), str(a.id)))
        await wait_blocked(engine, 2)
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert results[0].id == a.id  # type: ignore[union-attr]
    assert isinstance(results[1], FailedPrecondition) and "already one contact" in results[1].message
    assert (await service.get_contact(space, str(b.id)))[0].id == a.id


async def test_a_merge_and_a_bulk_tagging_of_the_same_contacts_do_not_deadlock(
    service: ContactsService, engine: AsyncEngine, space: str, manager: Actor
) -> None:
    """The survivor's id sorts after the merged one's: the merge must still lock them in id order, as
    ChangeTags does, or each would hold the lock the other waits for."""
    tag = await service.create_tag(space, "vip")
    merged, survivor = [await service.create_contact(space, manager, {}) for _ in range(2)]  # ids grow (UUIDv7)
    assert merged.id < survivor.id
    async with holding(engine, "SELECT 1 FROM contacts WHERE id = :s FOR UPDATE", s=survivor.id):
        merge = asyncio.create_task(service.merge(space, manager, str(survivor.id), str(merged.id)))
        await wait_blocked(engine, 1)
        tagging = asyncio.create_task(
            service.change_tags(space, manager, [str(merged.id), str(survivor.id)], [str(tag.id)], [])
        )
        await wait_blocked(engine, 2)
    assert (await merge).id == survivor.id
    assert await tagging == 1  # the merged contact is gone by then; the survivor is tagged
    assert (await service.get_contact(space, str(merged.id)))[0].tag_ids == (tag.id,)
