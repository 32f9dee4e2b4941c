"""Calls racing on the same rows, interleaved deterministically: a test holds a row lock in its own
transaction so that one call pauses at a known point while another runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from parley_contacts.domain import Tag
from parley_contacts.repository import Repository
from parley_contacts.service import Actor, ContactsService, IdentityInput, ImportRow
from parley_kit.db import session_factory
from parley_kit.errors import AlreadyExists, FailedPrecondition, NotFound
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


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
async def holding(engine: AsyncEngine, sql: str, **params: object) -> AsyncIterator[None]:
    """A transaction that ran `sql` (and holds its locks) until the block ends, then commits."""
    async with engine.connect() as conn:
        await conn.execute(text(sql), params)
        yield
        await conn.commit()


# Another caller claiming an identity (as UpsertByIdentity or AddIdentity do), not yet committed.
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
    claim = {"s": space, "c": other.id, "ch": ident.channel_id, "t": ident.channel_type, "x": ident.external_id}
    async with holding(engine, CLAIM_IDENTITY, **claim):
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


async def test_a_contact_tagged_while_its_tag_is_deleted_ends_untagged_with_its_event(
    service: ContactsService, engine: AsyncEngine, sink, stored_tags, space: str, manager: Actor
) -> None:
    """DeleteTag waits for tag writers in flight (here the test's transaction stands for one); a ChangeTags
    adding the tag meanwhile is untagged by the deletion too, with its tag.removed, instead of keeping
    the dead id on its row and values while the cascade silently drops its contact_tags row."""
    tag = await service.create_tag(space, "doomed")
    await service.create_field(space, "score", "Score", "number")
    holder = await service.create_contact(space, manager, {}, {"score": "1"}, tag_ids=[str(tag.id)])
    late = await service.create_contact(space, manager, {}, {"score": "2"})
    async with holding(engine, "SELECT 1 FROM tags WHERE id = :t FOR KEY SHARE", t=tag.id):
        deleting = asyncio.create_task(service.delete_tag(space, manager, str(tag.id)))
        await wait_blocked(engine)
        assert await service.change_tags(space, manager, [str(late.id)], [str(tag.id)], []) == 1
    assert await deleting == 2
    await service.finish_tag_deletions()
    assert await stored_tags(space) == {holder.id: set(), late.id: set()}
    assert {e.data["contact_id"] for e in sink.of("tag.removed", space)} == {holder.id, late.id}


async def test_tagging_with_a_tag_deleted_meanwhile_is_not_found_and_changes_nothing(
    service: ContactsService, engine: AsyncEngine, stored_tags, space: str, manager: Actor
) -> None:
    """ChangeTags checks its tags, then the deletion of one commits before it writes: NOT_FOUND, not a
    foreign-key violation (INTERNAL)."""
    low, high = sorted([await service.create_tag(space, n) for n in ("one", "two")], key=lambda t: t.id)
    contact = await service.create_contact(space, manager, {})
    # The test holds `low`: the tagging pauses there, before it writes (or locks) `high`.
    async with holding(engine, "SELECT 1 FROM tags WHERE id = :t FOR UPDATE", t=low.id):
        tagging = asyncio.create_task(
            service.change_tags(space, manager, [str(contact.id)], [str(low.id), str(high.id)], [])
        )
        await wait_blocked(engine)
        await service.delete_tag(space, manager, str(high.id))
    with pytest.raises(NotFound, match=f"tag {high.id} not found"):
        await tagging
    assert await stored_tags(space) == {contact.id: set()}


async def test_an_inbound_message_does_not_wait_for_the_rest_of_a_tag_deletion(
    service: ContactsService, engine: AsyncEngine, space: str, manager: Actor
) -> None:
    """A popular tag's contacts are untagged a chunk per transaction: once a contact's chunk has committed,
    UpsertByIdentity moves its last interaction at once, however long the rest of the deletion takes (in
    one transaction it waited for the whole deletion)."""
    tag = await service.create_tag(space, "popular")
    holders = [
        await service.create_contact(
            space, manager, {}, tag_ids=[str(tag.id)], identities=[IdentityInput("ch", 1, f"p{i}")]
        )
        for i in range(5)
    ]
    await service.delete_tag(space, manager, str(tag.id))
    # The test holds the third contact: the second chunk waits for it, the first has committed.
    async with holding(engine, "SELECT 1 FROM contacts WHERE id = :c FOR UPDATE", c=holders[2].id):
        finishing = asyncio.create_task(service.finish_tag_deletions(chunk=2))
        await wait_blocked(engine)
        at = datetime.now(UTC)
        upsert = service.upsert_by_identity(space, manager, IdentityInput("ch", 1, "p0"), {}, at)
        assert await asyncio.wait_for(upsert, 5) == (holders[0].id, False)
    assert await finishing == 5
    assert (await service.get_contact(space, str(holders[0].id)))[0].last_interaction_at == at


class MeetingTagCreators(Repository):
    """Pauses each transaction after the first tag it creates until another transaction has created one too,
    or until a transaction waits for a lock (for the tag this one created): two imports creating tags then go
    on side by side."""

    def __init__(self, engine: AsyncEngine, sink) -> None:
        super().__init__(session_factory(engine), sink)
        self.engine = engine
        self.created: set[int] = set()
        self.met = asyncio.Event()

    async def insert_tag(self, s: AsyncSession, space_id: str, tag: Tag) -> bool:
        inserted = await super().insert_tag(s, space_id, tag)
        if inserted and id(s) not in self.created:
            self.created.add(id(s))
            if len(self.created) == 2:
                self.met.set()
            waits = [asyncio.create_task(self.met.wait()), asyncio.create_task(wait_blocked(self.engine))]
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*done)
        return inserted


async def test_imports_naming_the_same_new_tags_in_opposite_orders_both_succeed(
    engine: AsyncEngine, sink, stored_tags, space: str, manager: Actor
) -> None:
    """Rows tagged `vip;gold` and `gold;vip`, neither tag existing, imported at once: each row creates its
    missing tags in one order (by name), so the second waits for the first's instead of each holding the tag
    the other waits for (a deadlock, which failed one row)."""
    service = ContactsService(MeetingTagCreators(engine, sink))
    rows = (
        [ImportRow({"first_name": "A"}, {}, ("vip", "gold"))],
        [ImportRow({"first_name": "B"}, {}, ("Gold", "VIP"))],
    )
    results = await asyncio.gather(*(service.import_contacts(space, manager, r) for r in rows))
    assert [o.error for (o,) in results] == [None, None]
    tags = {t.name.lower(): t.id for t in await service.list_tags(space)}
    assert sorted(tags) == ["gold", "vip"]
    assert await stored_tags(space) == {o.contact_id: set(tags.values()) for (o,) in results}
