"""Three replicas of the ingest on one set of durables: per-contact order and one open conversation
per contact, while a replica leaves mid-stream and its partitions move to the others."""

from __future__ import annotations

import asyncio
import random
import uuid
from contextlib import AsyncExitStack

import nats
from parley_kit.testing.service import running
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

CONTACTS = 100
PER_CONTACT = 12


async def test_three_replicas_keep_per_contact_order_and_one_open_conversation(make_settings, helpers) -> None:
    from parley_conversations.app import build_app

    sp = f"sp-{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    queues = {
        c: [
            helpers.inbound(sp, "ch-r", f"c{c:03d}", f"c{c:03d}-{i:02d}", text=f"{i}", seq=i)
            for i in range(PER_CONTACT)
        ]
        for c in range(CONTACTS)
    }
    interleaved = []
    while queues:  # a random interleaving across contacts, each contact's own order kept
        c = rng.choice(list(queues))
        interleaved.append(queues[c].pop(0))
        if not queues[c]:
            del queues[c]
    half = len(interleaved) // 2

    settings = make_settings(ingest_batch_size=50)
    async with AsyncExitStack() as stack:
        apps = []
        for _ in range(3):
            app = await build_app(settings)
            await stack.enter_async_context(running(app.rt))
            apps.append(app)
        nc = await nats.connect(settings.nats_url)
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        # Every replica takes a share of the 16 partitions.
        await helpers.wait_for(lambda: _balanced(apps, 16, 6), timeout=20)
        await helpers.publish_inbound(js, interleaved[:half])
        await asyncio.sleep(0.3)
        # One replica leaves mid-stream; the other two take its partitions over.
        apps[0].rt.request_stop()
        await helpers.publish_inbound(js, interleaved[half:])
        await helpers.wait_for(lambda: _balanced(apps[1:], 16, 8), timeout=20)
        engine = create_async_engine(settings.database_url.replace("postgresql://", "postgresql+asyncpg://"))
        try:

            async def stored() -> int:
                async with engine.connect() as conn:
                    return int(await conn.scalar(text("SELECT count(*) FROM messages WHERE space_id = :s"), {"s": sp}))

            await helpers.wait_for(lambda: _at_least(stored(), len(interleaved)), timeout=60)
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT c.contact_external_id, m.text, m.conversation_id, c.status FROM messages m "
                            "JOIN conversations c ON c.id = m.conversation_id WHERE m.space_id = :s ORDER BY m.seq"
                        ),
                        {"s": sp},
                    )
                ).all()
                open_per_contact = (
                    await conn.execute(
                        text(
                            "SELECT contact_external_id, count(*) FROM conversations WHERE space_id = :s "
                            "GROUP BY contact_external_id"
                        ),
                        {"s": sp},
                    )
                ).all()
        finally:
            await engine.dispose()

    assert len(rows) == CONTACTS * PER_CONTACT  # none lost, none twice
    by_contact: dict[str, list[int]] = {}
    conversations: dict[str, set[str]] = {}
    for contact, body, conversation_id, status in rows:
        by_contact.setdefault(contact, []).append(int(body))
        conversations.setdefault(contact, set()).add(conversation_id)
        assert status == "open"
    assert len(by_contact) == CONTACTS
    for contact, order in by_contact.items():
        assert order == list(range(PER_CONTACT)), f"{contact} stored out of provider order: {order}"
        assert len(conversations[contact]) == 1
    assert sorted(n for _, n in open_per_contact) == [1] * CONTACTS


async def _at_least(coro, n: int) -> bool:
    return (await coro) >= n


def _balanced(apps, partitions: int, share: int) -> bool:
    """Every partition owned once, no replica above its share, none idle."""
    owned = [p for a in apps for p in a.ingest.workers]
    return sorted(owned) == list(range(partitions)) and all(1 <= len(a.ingest.workers) <= share for a in apps)


async def test_events_held_by_a_dead_owner_are_applied_before_newer_ones(make_settings, helpers) -> None:
    """A replica died holding a fetched, unacknowledged batch (JetStream redelivers it only after
    ack_wait). The next owner must not apply newer events of those contacts first: it reads the
    held ones from the stream and applies them in order, without waiting for the redelivery."""
    from parley_conversations.events import inbound_consumer
    from parley_kit.contracts import channel_gateway as cg
    from parley_kit.nats.streams import provision

    sp = f"sp-{uuid.uuid4().hex[:8]}"
    contact = "held-1"
    partition = cg.inbound_partition(sp, "ch-h", contact)
    settings = make_settings(ingest_ack_wait_seconds=60.0)
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    try:
        spec = inbound_consumer(partition, ack_wait=60.0, batch_size=settings.ingest_batch_size)
        await provision(js, [cg.stream_spec()], [spec])
        events = [helpers.inbound(sp, "ch-h", contact, f"h-{i}", text=str(i), seq=i) for i in range(6)]
        await helpers.publish_inbound(js, events[:3])
        dead_owner = await js.pull_subscribe_bind(durable=spec.durable, stream=cg.STREAM)
        held = await dead_owner.fetch(3, timeout=2)  # never acknowledged: "the process died"
        assert len(held) == 3
        await dead_owner.unsubscribe()
        await helpers.publish_inbound(js, events[3:])
        async with helpers.serve(settings):
            engine = create_async_engine(settings.database_url.replace("postgresql://", "postgresql+asyncpg://"))
            try:

                async def texts() -> list[str]:
                    async with engine.connect() as conn:
                        rows = await conn.execute(
                            text("SELECT text FROM messages WHERE space_id = :s ORDER BY seq"), {"s": sp}
                        )
                        return [r[0] for r in rows]

                stored = await helpers.wait_for(lambda: _when_len(texts(), 6), timeout=15)
            finally:
                await engine.dispose()
        assert stored == [str(i) for i in range(6)]
    finally:
        await nc.close()


async def _when_len(coro, n: int):
    value = await coro
    return value if len(value) >= n else None
