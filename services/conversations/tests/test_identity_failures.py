"""An identity the contacts service fails on its own (a per-item error, not a refusal) holds back only its own
partition, from its first event on, and only for a bounded number of deliveries before its events are
dead-lettered; a contacts outage (the whole call failing) holds everything back and dead-letters nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from opentelemetry.context import Context
from parley.channel_gateway.v1 import events_pb2 as gw
from parley_conversations import events
from parley_conversations import ingest as ingest_module
from parley_conversations.app import Conversations, build_app
from parley_conversations.domain import InboundItem, InboundKind
from parley_conversations.ingest import ContactsResolver, InboundIngest, PartitionWorker, Resolution
from parley_kit.contracts import channel_gateway as cg
from parley_kit.nats import Delivery
from parley_kit.testing.service import running
from prometheus_client import REGISTRY
from sqlalchemy import text

ATTEMPTS = 3
NOW = datetime(2026, 12, 6, tzinfo=UTC)
BROKEN = "the double failed this identity"


@pytest.fixture(scope="module")
async def ingest(make_settings: Any, fake_contacts: Any, helpers: Any) -> AsyncIterator[tuple[Conversations, Any]]:
    """A conversations process whose ingest resolves contacts through the test double and gives a failing
    identity ATTEMPTS deliveries."""
    fake, target = fake_contacts
    channel = grpc.aio.insecure_channel(target)
    app = await build_app(
        make_settings(ingest_identity_attempts=ATTEMPTS), contacts=ContactsResolver(channel, timeout=2.0)
    )
    async with running(app.rt):
        assert app.ingest is not None
        await helpers.wait_for(lambda: len(app.ingest.workers) == cg.INBOUND_PARTITIONS)
        yield app, fake
    await channel.close()


@pytest.fixture(autouse=True)
def healthy_contacts(fake_contacts: Any) -> Iterator[None]:
    fake, _ = fake_contacts
    yield
    fake.fail_with, fake.fail_items = None, {}


def _channel(sp: str) -> str:
    """A channel of the space's own: provider message ids are unique per channel."""
    return f"ch-{sp}"


def _layout(sp: str) -> tuple[str, str, str, list[str]]:
    """A contact `bad`, two others on its partition (`before`, `after`) and two on two other partitions."""
    bad = "psid-bad"
    home = cg.inbound_partition(sp, _channel(sp), bad)
    same: list[str] = []
    others: dict[int, str] = {}
    i = 0
    while len(same) < 2 or len(others) < 2:
        contact = f"psid-{i}"
        partition = cg.inbound_partition(sp, _channel(sp), contact)
        if partition == home and len(same) < 2:
            same.append(contact)
        elif partition != home and len(others) < 2:
            others.setdefault(partition, contact)
        i += 1
    return bad, same[0], same[1], list(others.values())


def _events(helpers: Any, sp: str, *named: tuple[str, int]) -> list[gw.InboundEvent]:
    return [helpers.inbound(sp, _channel(sp), contact, f"{contact}-{i}", text=str(i)) for contact, i in named]


async def _stored(app: Conversations, sp: str) -> list[tuple[str, str]]:
    """(provider message id, inserting transaction) of the space's messages, in the order they were stored."""
    assert app.ingest is not None
    async with app.ingest.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT provider_message_id, xmin::text FROM messages WHERE space_id = :sp ORDER BY seq"),
            {"sp": sp},
        )
        return [(r[0], r[1]) for r in rows]


def _stored_with(app: Conversations, sp: str, *mids: str) -> Any:
    async def check() -> list[tuple[str, str]] | None:
        rows = await _stored(app, sp)
        return rows if set(mids) <= {mid for mid, _ in rows} else None

    return check


async def _dead_letters(app: Conversations, sp: str) -> list[tuple[str, dict[str, str]]]:
    """(provider message id, headers) of the space's inbound events on the dead-letter subjects."""
    sub = await app.rt.js.pull_subscribe("dead_letter.conversations.>", stream="CONVERSATIONS_DEAD_LETTER")
    out: list[tuple[str, dict[str, str]]] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(256, timeout=0.3)
            except TimeoutError:
                break
            for m in msgs:
                event = gw.InboundEvent()
                event.ParseFromString(m.data)
                if event.space_id == sp:
                    out.append((event.provider_message_id, dict(m.headers or {})))
                await m.ack()
    finally:
        await sub.unsubscribe()
    return out


def _identity_failures(outcome: str) -> float:
    value = REGISTRY.get_sample_value("parley_conversations_ingest_identity_failures_total", {"outcome": outcome})
    return value or 0.0


def _of(rows: list[tuple[str, str]], *contacts: str) -> list[str]:
    """The provider message ids of `contacts`' events among `rows`, in stored order."""
    return [mid for mid, _ in rows if mid.rsplit("-", 1)[0] in contacts]


async def _warm_up(app: Conversations, helpers: Any, sp: str, contacts: list[str]) -> None:
    """Each contact's partition has read its offset, so its next batch goes straight to the applier."""
    await helpers.publish_inbound(app.rt.js, _events(helpers, sp, *((c, 0) for c in contacts)))
    await helpers.wait_for(_stored_with(app, sp, *(f"{c}-0" for c in contacts)))


async def test_a_contact_failing_on_its_own_holds_back_only_its_partition_from_its_first_event(
    ingest: Any, helpers: Any
) -> None:
    app, fake = ingest
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    bad, before, after, others = _layout(sp)
    blocker = next(  # a contact on a partition of its own, whose group keeps the applier busy
        c
        for c in (f"psid-x{i}" for i in range(100))
        if cg.inbound_partition(sp, _channel(sp), c) not in _partitions(sp, bad, *others)
    )
    await _warm_up(app, helpers, sp, [before, blocker, *others])
    fake.fail_items = {bad: grpc.StatusCode.INTERNAL}
    retried = _identity_failures("retried")
    groups: list[dict[int, list[str]]] = []
    apply = app.ingest.apply

    async def spy(conn, group):  # type: ignore[no-untyped-def]
        groups.append({p.worker.partition: [u.event.provider_message_id for u in p.units] for p in group})
        return await apply(conn, group)

    app.ingest.apply = spy
    try:
        async with app.ingest._conn_lock:
            # The blocker's group waits for the lock connection; every batch published after it waits for
            # the applier, so they all go in the next group, together.
            await helpers.publish_inbound(app.rt.js, _events(helpers, sp, (blocker, 1)))
            await helpers.wait_for(lambda: _applier_waiting(app))
            batch = _events(helpers, sp, (before, 1), (bad, 1), (after, 1), (bad, 2), *((o, 1) for o in others))
            expected_ids = [e.provider_message_id for e in batch]
            await helpers.publish_inbound(app.rt.js, batch)
            await helpers.wait_for(lambda: _pending(app) >= set(expected_ids))
        expected = [f"{before}-1", *(f"{o}-1" for o in others)]
        rows = await helpers.wait_for(_stored_with(app, sp, *expected))
    finally:
        del app.ingest.apply
    home = cg.inbound_partition(sp, _channel(sp), bad)
    (group,) = [g for g in groups if home in g]  # applied once so far: the retry waits for its backoff
    assert group[home] == [f"{before}-1", f"{bad}-1", f"{after}-1", f"{bad}-2"]
    assert set(group) == _partitions(sp, bad, *others)
    xids = {xid for mid, xid in rows if mid in expected}
    assert len(xids) == 1  # the other partitions and the earlier event committed together, in that group
    assert not {f"{bad}-1", f"{after}-1", f"{bad}-2"} & {mid for mid, _ in rows}
    assert _identity_failures("retried") >= retried + 1

    fake.fail_items = {}  # contacts recovers before the identity's attempts run out
    rows = await helpers.wait_for(_stored_with(app, sp, f"{bad}-2"), timeout=30)
    assert _of(rows, bad, before, after) == [f"{before}-0", f"{before}-1", f"{bad}-1", f"{after}-1", f"{bad}-2"]
    assert await _dead_letters(app, sp) == []


async def test_a_contact_that_keeps_failing_is_dead_lettered_after_its_attempts_and_its_partition_goes_on(
    ingest: Any, helpers: Any
) -> None:
    app, fake = ingest
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    bad, before, after, _ = _layout(sp)
    fake.fail_items = {bad: grpc.StatusCode.INTERNAL}
    dead_lettered = _identity_failures("dead_lettered")
    await helpers.publish_inbound(app.rt.js, _events(helpers, sp, (before, 1), (bad, 1), (after, 1), (bad, 2)))
    rows = await helpers.wait_for(_stored_with(app, sp, f"{after}-1"), timeout=60)
    assert [mid for mid, _ in rows] == [f"{before}-1", f"{after}-1"]
    dead = await helpers.wait_for(lambda: _at_least(_dead_letters(app, sp), 2))
    assert sorted(mid for mid, _ in dead) == [f"{bad}-1", f"{bad}-2"]
    for _, headers in dead:
        reason = headers["Parley-Dead-Letter-Reason"]
        assert f"contacts failed the identity: INTERNAL: {BROKEN} (on {ATTEMPTS} deliveries in a row)" in reason
        assert headers["Parley-Consumer"] == events.inbound_durable(cg.inbound_partition(sp, _channel(sp), bad))
    assert _identity_failures("dead_lettered") == dead_lettered + 1

    # Still failing: the count started over, so its next event holds the partition back again for its attempts.
    retried = _identity_failures("retried")
    await helpers.publish_inbound(app.rt.js, _events(helpers, sp, (bad, 3), (after, 2)))
    rows = await helpers.wait_for(_stored_with(app, sp, f"{after}-2"), timeout=60)
    dead = await helpers.wait_for(lambda: _at_least(_dead_letters(app, sp), 3))
    assert f"{bad}-3" in {mid for mid, _ in dead}
    assert _identity_failures("retried") >= retried + ATTEMPTS - 1
    assert _identity_failures("dead_lettered") == dead_lettered + 2

    fake.fail_items = {}  # resolved again: its events are applied
    await helpers.publish_inbound(app.rt.js, _events(helpers, sp, (bad, 4)))
    rows = await helpers.wait_for(_stored_with(app, sp, f"{bad}-4"))
    assert [mid for mid, _ in rows] == [f"{before}-1", f"{after}-1", f"{after}-2", f"{bad}-4"]


async def test_a_contact_contacts_cannot_resolve_for_a_passing_reason_waits_without_using_up_its_attempts(
    ingest: Any, helpers: Any
) -> None:
    app, fake = ingest
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    bad, before, after, others = _layout(sp)
    fake.fail_items = {bad: grpc.StatusCode.ABORTED}  # contacts' answer for a deadlock on that person's row
    transient, retried = _identity_failures("transient"), _identity_failures("retried")
    with _deliveries(app, lambda e: e.provider_message_id == f"{bad}-1") as delivered:
        batch = _events(helpers, sp, (before, 1), (bad, 1), (after, 1), *((o, 1) for o in others))
        await helpers.publish_inbound(app.rt.js, batch)
        # As many failed deliveries as would dead-letter an identity failing on its own.
        await helpers.wait_for(lambda: max(delivered, default=0) >= ATTEMPTS, timeout=60)
    rows = await helpers.wait_for(_stored_with(app, sp, f"{before}-1", *(f"{o}-1" for o in others)))
    assert not {f"{bad}-1", f"{after}-1"} & {mid for mid, _ in rows}  # its partition waits from it
    assert await _dead_letters(app, sp) == []
    assert _identity_failures("transient") >= transient + ATTEMPTS and _identity_failures("retried") == retried
    home = app.ingest.workers[cg.inbound_partition(sp, _channel(sp), bad)]
    assert (sp, _channel(sp), bad) not in home.identity_failures

    fake.fail_items = {}
    # Its next redelivery is 30 s away; a new event on its partition brings it in now, first.
    await helpers.publish_inbound(app.rt.js, _events(helpers, sp, (before, 2)))
    rows = await helpers.wait_for(_stored_with(app, sp, f"{before}-2"))
    assert _of(rows, before, bad, after) == [f"{before}-1", f"{bad}-1", f"{after}-1", f"{before}-2"]
    assert await _dead_letters(app, sp) == []


async def test_the_owner_counts_a_bounded_number_of_identities_and_starts_over_after_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest_module, "MAX_COUNTED_IDENTITIES", 2)
    owner = InboundIngest(js=None, engine=None, repo=None, service=None, contacts=None, identity_attempts=3)  # type: ignore[arg-type]
    worker = PartitionWorker(owner, 0)
    sequence = 0

    def fail(external_id: str, *, passing: bool = False) -> tuple[bool, bool]:
        """One delivery on which contacts fails the identity: (partition stopped, events set aside)."""
        nonlocal sequence
        sequence += 1
        item = InboundItem(uuid.uuid4().hex, "sp", "ch", "messenger", InboundKind.MESSAGE, external_id, NOW)
        delivery = Delivery(None, b"", {}, "", "", "", 1, sequence, Context())
        unit = ingest_module._Unit(sequence, None, delivery)
        pending = ingest_module._Pending(worker, [unit], asyncio.get_running_loop().create_future())
        reason = {item.contact_key: "contacts said no"}
        resolution = Resolution(transient=reason) if passing else Resolution(failed=reason)
        stops = owner._isolate([(pending, unit, item)], resolution)
        return pending in stops, bool(unit.error)

    def counted() -> dict[str, int]:
        return {key[2]: n for key, n in worker.identity_failures.items()}

    assert [fail("x"), fail("x")] == [(True, False)] * 2
    assert fail("x") == (False, True)  # its third delivery in a row: set aside
    assert counted() == {}  # and no longer counted: a fresh failure starts over
    assert fail("x") == (True, False) and counted() == {"x": 1}
    assert fail("x", passing=True) == (True, False) and counted() == {"x": 1}  # a passing failure is not counted
    fail("y")
    fail("z")  # a third identity: the one that failed least recently (x) is forgotten
    assert counted() == {"y": 1, "z": 1}
    fail("y")
    fail("x")
    assert counted() == {"y": 2, "x": 1}


async def test_a_contacts_outage_holds_every_partition_back_and_dead_letters_nothing(ingest: Any, helpers: Any) -> None:
    app, fake = ingest
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    bad, before, after, others = _layout(sp)
    fake.fail_with = grpc.StatusCode.UNAVAILABLE
    with _deliveries(app, lambda e: e.space_id == sp) as delivered:
        batch = _events(helpers, sp, (before, 1), (bad, 1), (after, 1), *((o, 1) for o in others))
        await helpers.publish_inbound(app.rt.js, batch)
        # As many failed deliveries as an identity failing on its own is given: none counts against one.
        await helpers.wait_for(lambda: max(delivered, default=0) >= ATTEMPTS, timeout=60)
    assert await _stored(app, sp) == []
    fake.fail_with = None
    # Their next redelivery is 30 s away; new events on their partitions bring them in now, first.
    nudges = _events(helpers, sp, (before, 2), *((o, 2) for o in others))
    await helpers.publish_inbound(app.rt.js, nudges)
    rows = await helpers.wait_for(_stored_with(app, sp, *(e.provider_message_id for e in batch + nudges)))
    assert _of(rows, before, bad, after) == [f"{before}-1", f"{bad}-1", f"{after}-1", f"{before}-2"]
    assert await _dead_letters(app, sp) == []


def test_the_runner_never_dead_letters_an_inbound_event_for_its_delivery_count_before_the_stream_drops_it() -> None:
    spec = events.inbound_consumer(0)
    waited = sum(spec.retry_delay(n) or 0 for n in range(1, spec.max_deliver))
    assert waited >= cg.MAX_AGE.total_seconds()


@contextlib.contextmanager
def _deliveries(app: Conversations, matches: Callable[[gw.InboundEvent], bool]) -> Iterator[list[int]]:
    """The delivery counts of the events `matches` picks, each recorded once an attempt to apply it is over."""
    assert app.ingest is not None
    delivered: list[int] = []
    apply = app.ingest.apply

    async def spy(conn, group):  # type: ignore[no-untyped-def]
        try:
            return await apply(conn, group)
        finally:
            delivered.extend(
                u.delivery.num_delivered
                for p in group
                for u in p.units
                if u.delivery is not None and u.event is not None and matches(u.event)
            )

    app.ingest.apply = spy  # type: ignore[method-assign]
    try:
        yield delivered
    finally:
        del app.ingest.apply


def _partitions(sp: str, *contacts: str) -> set[int]:
    return {cg.inbound_partition(sp, _channel(sp), c) for c in contacts}


def _applier_waiting(app: Conversations) -> bool:
    """The applier has taken every pending batch into a group and waits (for the lock connection)."""
    assert app.ingest is not None
    applier = app.ingest._applier
    return applier is not None and not applier.done() and not app.ingest._pending


def _pending(app: Conversations) -> set[str]:
    """Provider message ids of the batches waiting for the next group."""
    assert app.ingest is not None
    return {u.event.provider_message_id for p in app.ingest._pending for u in p.units if u.event is not None}


async def _at_least(found: Any, n: int) -> Any:
    got = await found
    return got if len(got) >= n else None
