"""Group commit: one replica holds all its partition locks on one connection and applies the batches that wait
together, from several partitions, in one transaction; a poison event in a group is set aside on its own."""

from __future__ import annotations

import uuid

from parley.channel_gateway.v1 import events_pb2 as gw
from parley_conversations.ingest import CLASS_PARTITION
from parley_kit.contracts import channel_gateway as cg
from parley_kit.nats import TransientError
from sqlalchemy import text


def contacts_on_distinct_partitions(space_id: str, channel_id: str, n: int) -> list[str]:
    out: dict[int, str] = {}
    i = 0
    while len(out) < n:
        contact = f"psid-g{i}"
        out.setdefault(cg.inbound_partition(space_id, channel_id, contact), contact)
        i += 1
    return list(out.values())


async def test_every_partition_lock_is_held_on_one_connection(service, helpers) -> None:
    app, _ = service
    await helpers.wait_for(lambda: len(app.ingest.workers) == 16)
    assert [count for _, count in await _lock_holders(app)] == [16]


async def _apply_queued_together(
    app, helpers, space_id: str, events: list[gw.InboundEvent], stored: int
) -> tuple[list[int], list[tuple[str, str]]]:
    """Publish `events` while the lock connection is busy, so their partitions' batches queue for the applier;
    wait until `stored` messages of the space are there. Returns the partitions of each group applied
    meanwhile and the space's (provider message id, inserting transaction) in stored order."""
    groups: list[int] = []
    apply = app.ingest.apply

    async def spy(conn, group):  # type: ignore[no-untyped-def]
        groups.append(len(group))
        return await apply(conn, group)

    workers = [
        app.ingest.workers[cg.inbound_partition(e.space_id, e.channel_id, e.contact_external_id)] for e in events
    ]
    app.ingest.apply = spy
    try:
        async with app.ingest._conn_lock:
            await helpers.publish_inbound(app.rt.js, events)
            # Every partition's handler has its batch in the applier (the first group waits for the lock).
            await helpers.wait_for(lambda: all(w._lock.locked() for w in workers))
        rows = await helpers.wait_for(lambda: _count(app, space_id, stored))
    finally:
        del app.ingest.apply
    return groups, rows


async def _messages(app, space_id: str) -> list[tuple[str, str]]:
    async with app.ingest.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT provider_message_id, xmin::text FROM messages WHERE space_id = :sp ORDER BY seq"),
            {"sp": space_id},
        )
        return [(r[0], r[1]) for r in rows]


async def test_batches_of_several_partitions_commit_in_one_transaction(service, helpers) -> None:
    app, _ = service
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    contacts = contacts_on_distinct_partitions(sp, "ch-g", 4)
    # Warm up: each partition has read its offset, so its next batch goes straight to the applier.
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, "ch-g", c, f"{c}-0") for c in contacts])
    await helpers.wait_for(lambda: _count(app, sp, 4))
    events = [helpers.inbound(sp, "ch-g", c, f"{c}-{i}", text=str(i)) for i in (1, 2) for c in contacts]
    groups, rows = await _apply_queued_together(app, helpers, sp, events, 12)
    assert max(groups) >= 2  # the first arrival's group went alone at most; the rest queued into one
    contacts_per_xid: dict[str, set[str]] = {}
    for mid, xid in rows:
        if not mid.endswith("-0"):
            contacts_per_xid.setdefault(xid, set()).add(mid.rsplit("-", 1)[0])
    assert max(len(cs) for cs in contacts_per_xid.values()) >= 2  # one transaction stored several partitions'
    for c in contacts:  # each contact's messages in its stream order
        assert [mid for mid, _ in rows if mid.startswith(c + "-")] == [f"{c}-0", f"{c}-1", f"{c}-2"]


async def test_a_poison_event_in_a_group_is_dead_lettered_and_every_partition_goes_on(service, helpers) -> None:
    app, _ = service
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    contacts = contacts_on_distinct_partitions(sp, "ch-p", 3)
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, "ch-p", c, f"{c}-0") for c in contacts])
    await helpers.wait_for(lambda: _count(app, sp, 3))
    bad = contacts[1]
    events = [
        helpers.inbound(sp, "ch-p", c, f"{c}-{i}", text="nul \x00 byte" if (c, i) == (bad, 1) else str(i))
        for c in contacts
        for i in (1, 2)
    ]
    _, rows = await _apply_queued_together(app, helpers, sp, events, 8)
    assert sorted(mid for mid, _ in rows) == sorted(
        [f"{c}-{i}" for c in contacts for i in (0, 1, 2) if (c, i) != (bad, 1)]
    )
    dead = await helpers.wait_for(lambda: _dead(helpers, app, f"{bad}-1"))
    assert len(dead) == 1


async def test_an_event_set_aside_before_a_transient_failure_is_dead_lettered_once(service, helpers) -> None:
    """One by one, a partition's poison event is set aside, the next event is committed (its offset passes the
    poison's) and a later one fails transiently: the poison is dead-lettered then, not skipped unseen."""
    app, _ = service
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    contacts = contacts_on_distinct_partitions(sp, "ch-t", 2)
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, "ch-t", c, f"{c}-0") for c in contacts])
    await helpers.wait_for(lambda: _count(app, sp, 2))
    bad = contacts[0]
    flaky = f"{bad}-3"
    apply_db, raised = app.ingest._apply_db, []

    async def failing_once(conn, items, *args):  # type: ignore[no-untyped-def]
        if [it.provider_message_id for it in items] == [flaky] and not raised:
            raised.append(flaky)
            raise TransientError("injected: the database went away for a moment")
        return await apply_db(conn, items, *args)

    events = [
        helpers.inbound(sp, "ch-t", c, f"{c}-{i}", text="nul \x00 byte" if (c, i) == (bad, 1) else str(i))
        for c in contacts
        for i in (1, 2, 3)
    ]
    app.ingest._apply_db = failing_once
    try:
        _, rows = await _apply_queued_together(app, helpers, sp, events, 7)
    finally:
        del app.ingest._apply_db
    assert raised == [flaky]
    dead = await helpers.wait_for(lambda: _dead(helpers, app, f"{bad}-1"))
    assert len(dead) == 1
    assert [mid for mid, _ in rows if mid.startswith(bad + "-")] == [f"{bad}-0", f"{bad}-2", flaky]


async def _count(app, space_id: str, n: int) -> list[tuple[str, str]] | None:
    rows = await _messages(app, space_id)
    return rows if len(rows) >= n else None


async def _dead(helpers, app, mid: str):
    found = await helpers.read_stream(app.rt.js, "dead_letter.conversations.>", gw.InboundEvent)
    return [d for d in found if d.provider_message_id == mid] or None


async def _lock_holders(app) -> list[tuple[int, int]]:
    async with app.ingest.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid, count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
                " AND classid::bigint = :cls"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY pid"
            ),
            {"cls": CLASS_PARTITION},
        )
        return [(r[0], r[1]) for r in rows]


async def test_a_lost_lock_connection_gives_every_partition_up_and_they_are_claimed_again(service, helpers) -> None:
    app, _ = service
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    contacts = contacts_on_distinct_partitions(sp, "ch-l", 3)
    ((pid, _),) = await helpers.wait_for(lambda: _lock_holders(app))
    before = dict(app.ingest.workers)
    async with app.ingest.engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await conn.commit()
    events = [helpers.inbound(sp, "ch-l", c, f"{c}-{i}", text=str(i)) for i in range(3) for c in contacts]
    await helpers.publish_inbound(app.rt.js, events)
    rows = await helpers.wait_for(lambda: _count(app, sp, 9), timeout=60)
    assert len(rows) == 9  # none lost, none twice
    for c in contacts:
        assert [mid for mid, _ in rows if mid.startswith(c + "-")] == [f"{c}-0", f"{c}-1", f"{c}-2"]
    holders = await helpers.wait_for(lambda: _holders_of_all(app))
    assert [p for p, _ in holders] != [pid]  # claimed again, on a new lock connection
    assert all(app.ingest.workers[p] is not w for p, w in before.items())


async def _holders_of_all(app) -> list[tuple[int, int]] | None:
    holders = await _lock_holders(app)
    return holders if [n for _, n in holders] == [16] and len(app.ingest.workers) == 16 else None
