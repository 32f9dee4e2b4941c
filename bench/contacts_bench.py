"""Contacts benchmark: N contacts in one space (20 tags, 10 custom fields of mixed types).

Reports p50/p95 of the first page (with total count) of typical views and of search, the
UpsertByIdentity rate for existing and for new identities, and EXPLAIN ANALYZE of the slowest
view. Runs against an embedded PostgreSQL it starts (or PARLEY_BENCH_DATABASE_URL's server),
through the service layer (no gRPC hop).

    python -m bench.contacts_bench --contacts 100000
    python -m bench contacts            # default: 1,000,000 contacts
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from parley_contacts.domain import (
    AssigneeCond,
    AssigneeMatch,
    FieldCond,
    FieldOp,
    Group,
    TagCond,
    TagMatch,
    TimeCond,
    TimeOp,
    TimeTarget,
    new_id,
    resolve_criteria,
)
from parley_contacts.repository import DomainEvent, Repository
from parley_contacts.service import TAG_DELETION_CHUNK, Actor, ContactsService, IdentityInput, UpsertItem
from parley_kit.db import create_engine, run_migrations, session_factory

SPACE = "bench-space"
ACTOR = Actor(subject="user:u1", user_id="u1")
FIELDS = [
    ("score", "number", []),
    ("revenue", "number", []),
    ("birthday", "date", []),
    ("signed_up", "datetime", []),
    ("newsletter", "checkbox", []),
    ("plan", "list", ["free", "starter", "pro", "enterprise"]),
    ("city", "text", []),
    ("company", "text", []),
    ("work_email", "email", []),
    ("website", "url", []),
]
SYLLABLES = ["an", "bel", "car", "da", "el", "fi", "go", "ha", "is", "jo", "ka", "li", "mo", "na", "ol", "pe", "ra",
             "si", "ta", "vi", "xu", "yo", "ze", "qui", "ur"]  # fmt: skip
CITIES = ["Paris", "Lisbon", "Madrid", "Berlin", "Rome", "Austin", "Lagos", "Lima", "Pune", "Osaka"]
CHANNELS = [("ch-messenger", 1), ("ch-instagram", 2), ("ch-whatsapp", 3)]
NOW = datetime.now(UTC)


async def _discard(session: Any, event: DomainEvent) -> None:
    """Events are not what this benchmark measures; the outbox insert is one row per change."""


def _pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def seed(url: str, service: ContactsService, n: int, rng: random.Random) -> dict[str, Any]:
    tags = [await service.create_tag(SPACE, f"tag-{i:02d}") for i in range(20)]
    fields = {k: await service.create_field(SPACE, k, k.title(), t, options=o) for k, t, o in FIELDS}
    # Tag popularity falls off: tag-00 on ~25% of contacts, tag-19 on ~1%.
    weights = [0.25 / (1 + i * 0.6) for i in range(20)]
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    started = time.perf_counter()
    sample: list[IdentityInput] = []
    contact_ids: list[str] = []
    sample_tags: list[set[uuid.UUID]] = []  # the tags of each sampled contact, as seeded
    searches: list[str] = []
    # Realistic diversity: thousands of first and last names, not a handful.
    firsts = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).title() for _ in range(4000)})
    lasts = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).title() for _ in range(20000)})
    chunk = 50_000
    try:
        for start in range(0, n, chunk):
            contacts, identities, values, tag_rows = [], [], [], []
            for i in range(start, min(n, start + chunk)):
                created = NOW - timedelta(seconds=(n - i) * (2 * 365 * 86400 / n))
                cid = new_id(created)  # as the service makes them: time-ordered
                last = NOW - timedelta(seconds=rng.randrange(0, 90 * 86400)) if rng.random() < 0.9 else None
                channel, ctype = rng.choice(CHANNELS)
                first, lastname = rng.choice(firsts), rng.choice(lasts)
                user = f"u{rng.randrange(1, 41)}" if rng.random() < 0.7 else None
                team = f"t{rng.randrange(1, 6)}" if rng.random() < 0.3 else None
                tagged = sorted(t.id for t, w in zip(tags, weights, strict=True) if rng.random() < w)
                tag_rows += [(cid, t, SPACE) for t in tagged]
                contacts.append((
                    cid, SPACE, first, lastname, f"{first.lower()}.{lastname.lower()}{i}@example.com",
                    f"+3361{i:07d}", rng.choice(["FR", "PT", "ES", "DE", "US"]), rng.choice(["en", "fr", "pt-BR"]),
                    None, user, team, created, created, last, channel if last else None, ctype if last else 0, tagged,
                ))  # fmt: skip
                identities.append((uuid.uuid4(), SPACE, cid, channel, ctype, f"ext-{i}", created))
                if i % 97 == 0:
                    sample.append(IdentityInput(channel, ctype, f"ext-{i}"))
                    contact_ids.append(str(cid))
                    sample_tags.append(set(tagged))
                if i % 9973 == 0:  # what people type: a name and a bit, an email start, phone digits, an id
                    searches += [f"{first} {lastname[:2]}", f"{first.lower()}.{lastname.lower()[:3]}",
                                 f"+3361{i:07d}"[:9], f"ext-{i}", lastname[:4]]  # fmt: skip
                for key, kind, options in FIELDS:
                    if rng.random() < 0.5:
                        continue
                    row: list[Any] = [cid, fields[key].id, SPACE, None, None, None, None, None, tagged]
                    if kind == "number":
                        row[4] = Decimal(rng.randrange(0, 100_000)) / 100
                    elif kind == "date":
                        row[5] = date(1960, 1, 1) + timedelta(days=rng.randrange(0, 20_000))
                    elif kind == "datetime":
                        row[6] = created
                    elif kind == "checkbox":
                        row[7] = rng.random() < 0.5
                    elif kind == "list":
                        row[3] = rng.choice(options)
                    elif kind == "text":
                        row[3] = rng.choice(CITIES) if key == "city" else f"Company {rng.randrange(5000)}"
                    elif kind == "email":
                        row[3] = f"w{i}@corp.example"
                    else:
                        row[3] = f"https://site{i}.example"
                    values.append(tuple(row))
            await conn.copy_records_to_table("contacts", records=contacts, columns=[
                "id", "space_id", "first_name", "last_name", "email", "phone", "country", "language", "avatar_url",
                "assignee_user_id", "assignee_team_id", "created_at", "updated_at", "last_interaction_at",
                "last_interaction_channel_id", "last_interaction_channel_type", "tag_ids"])  # fmt: skip
            await conn.copy_records_to_table(
                "contact_tags", records=tag_rows, columns=["contact_id", "tag_id", "space_id"]
            )
            await conn.copy_records_to_table("contact_identities", records=identities, columns=[
                "id", "space_id", "contact_id", "channel_id", "channel_type", "external_id", "created_at"])  # fmt: skip
            await conn.copy_records_to_table("field_values", records=values, columns=[
                "contact_id", "field_id", "space_id", "value_text", "value_number", "value_date", "value_datetime",
                "value_bool", "tag_ids"])  # fmt: skip
            done = min(n, start + chunk)
            print(f"  seeded {done:>9,} contacts ({done / (time.perf_counter() - started):,.0f}/s)", flush=True)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return {
        "tags": tags,
        "fields": fields,
        "identities": sample,
        "sample_tags": sample_tags,
        "searches": searches,
        "contact_ids": contact_ids,
    }


async def timed(fn: Callable[[], Awaitable[Any]], runs: int) -> list[float]:
    await fn()  # warm-up
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def upsert_rate(service: ContactsService, idents: list[IdentityInput], concurrency: int) -> float:
    queue = list(idents)
    at = NOW

    async def worker() -> None:
        while queue:
            ident = queue.pop()
            await service.upsert_by_identity(SPACE, ACTOR, ident, {"first_name": "X"}, at)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(idents) / (time.perf_counter() - t0)


async def batch_rate(service: ContactsService, idents: list[IdentityInput], concurrency: int, size: int) -> float:
    """Identities per second through UpsertByIdentities, `size` per call, `concurrency` calls in flight."""
    batches = [idents[i : i + size] for i in range(0, len(idents), size)]
    at = NOW

    async def worker() -> None:
        while batches:
            batch = batches.pop()
            items = [UpsertItem(SPACE, ident, {"first_name": "X"}, at) for ident in batch]
            await service.upsert_by_identities(ACTOR, items)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(idents) / (time.perf_counter() - t0)


async def tag_deletion(service: ContactsService, tag: Any, holders: list[IdentityInput], chunk: int) -> None:
    """DeleteTag, then its contacts untagged `chunk` per transaction, while one caller keeps upserting the
    identities of sampled holders (what the inbound path does): how long the deletion takes and how long an
    upsert of a contact being untagged waits behind it (no probe when no sampled contact carries the tag, as
    with a small seed)."""
    t0 = time.perf_counter()
    carried_by = await service.delete_tag(SPACE, ACTOR, str(tag.id))
    answered = (time.perf_counter() - t0) * 1000
    waits: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        k = 0
        while holders and not done.is_set():
            t = time.perf_counter()
            # A later interaction each time, so the upsert writes (and waits for) the contact's row.
            await service.upsert_by_identity(SPACE, ACTOR, holders[k % len(holders)], {}, datetime.now(UTC))
            waits.append((time.perf_counter() - t) * 1000)
            k += 1

    prober = asyncio.create_task(probe())
    t0 = time.perf_counter()
    untagged = await service.finish_tag_deletions(chunk)
    took = time.perf_counter() - t0
    done.set()
    await prober
    per = "one transaction" if chunk >= carried_by else f"{chunk:,} per transaction"
    probed = "no sampled holder to upsert"
    if waits:
        probed = (
            f"a holder's UpsertByIdentity ({len(waits):,} calls) p50 {_pct(waits, 50):.1f} ms, max {max(waits):.0f} ms"
        )
    print(
        f"  {tag.name} on {carried_by:,} contacts, {per:<22}: DeleteTag answered in {answered:.0f} ms; "
        f"{untagged:,} untagged in {took:.1f} s; {probed}"
    )


async def bench(url: str, n: int, runs: int, concurrency: int) -> None:
    await run_migrations("parley_contacts", url)
    # As the service makes its pool (server.py): no pre-ping, whose three extra round trips per checkout
    # would otherwise be most of what an existing-identity upsert costs.
    engine = create_engine(url, pool_size=concurrency, pre_ping=False, pool_recycle=300)
    repo = Repository(session_factory(engine), _discard)
    service = ContactsService(repo)
    rng = random.Random(7)
    print(f"seeding {n:,} contacts into one space ...", flush=True)
    t0 = time.perf_counter()
    world = await seed(url, service, n, rng)
    print(f"seeded in {time.perf_counter() - t0:.1f}s", flush=True)
    tags = world["tags"]
    views: dict[str, Group] = {
        "tag": Group(False, (TagCond(TagMatch.ANY, (tags[3].id,)),)),
        "tag + field range": Group(False, (
            TagCond(TagMatch.ANY, (tags[1].id,)),
            FieldCond("score", FieldOp.BETWEEN, ("100", "300")),
        )),
        "assignee + recent interaction": Group(False, (
            AssigneeCond(AssigneeMatch.USER, "u7"),
            TimeCond(TimeTarget.LAST_INTERACTION, TimeOp.WITHIN, seconds=7 * 86400),
        )),
        "me + has none of 2 tags": Group(False, (
            AssigneeCond(AssigneeMatch.ME),
            TagCond(TagMatch.NONE, (tags[0].id, tags[2].id)),
        )),
        "plan is pro or city starts with pa": Group(True, (
            FieldCond("plan", FieldOp.EQUALS, ("pro",)),
            FieldCond("city", FieldOp.STARTS_WITH, ("pa",)),
        )),
    }  # fmt: skip
    capped = ContactsService(repo, count_limit=10_000)
    results: list[tuple[str, float, float, int]] = []
    print(f"\nfirst page (50 contacts) of typical views, {runs} runs each, ms (load average {os.getloadavg()[0]:.1f}):")
    print(f"  {'view':<36} {'matches':>9} | {'exact total':>15} | {'total capped 10k':>16} | {'no total':>15}")
    print(f"  {'':<36} {'':>9} | {'p50':>7} {'p95':>7} | {'p50':>7} {'p95':>8} | {'p50':>7} {'p95':>7}")
    for name, group in views.items():
        total = (await service.list_contacts(SPACE, ACTOR, criteria=group)).total or 0
        exact = await timed(lambda g=group: service.list_contacts(SPACE, ACTOR, criteria=g), runs)
        cap = await timed(lambda g=group: capped.list_contacts(SPACE, ACTOR, criteria=g), runs)
        bare = await timed(lambda g=group: service.list_contacts(SPACE, ACTOR, criteria=g, with_total=False), runs)
        results.append((name, _pct(exact, 50), _pct(exact, 95), total))
        print(
            f"  {name:<36} {total:>9,} | {_pct(exact, 50):7.1f} {_pct(exact, 95):7.1f} | {_pct(cap, 50):7.1f} "
            f"{_pct(cap, 95):8.1f} | {_pct(bare, 50):7.1f} {_pct(bare, 95):7.1f}",
            flush=True,
        )
    queries = world["searches"]
    print(f"  (search queries are prefixes people type, e.g. {queries[:5]})")
    counter = iter(range(10**9))

    async def search() -> None:
        await service.list_contacts(SPACE, ACTOR, search=queries[next(counter) % len(queries)])

    async def search_nototal() -> None:
        await service.list_contacts(SPACE, ACTOR, search=queries[next(counter) % len(queries)], with_total=False)

    with_total = await timed(search, max(runs, len(queries) * 3))
    bare = await timed(search_nototal, max(runs, len(queries) * 3))
    print(
        f"\nsearch, first page, ms: with total p50 {_pct(with_total, 50):.1f} p95 {_pct(with_total, 95):.1f}; "
        f"no total p50 {_pct(bare, 50):.1f} p95 {_pct(bare, 95):.1f}"
    )

    sample = world["identities"]
    existing = [sample[rng.randrange(len(sample))] for _ in range(4000)]
    rate_existing = await upsert_rate(service, existing, concurrency)
    new = [IdentityInput("ch-telegram", 4, f"new-{uuid.uuid4().hex}") for _ in range(2000)]
    rate_new = await upsert_rate(service, new, concurrency)
    print(f"\nUpsertByIdentity, one identity per call ({concurrency} concurrent callers):")
    print(f"  existing identities: {rate_existing:,.0f}/s")
    print(f"  new identities:      {rate_new:,.0f}/s")
    existing = [sample[rng.randrange(len(sample))] for _ in range(20_000)]
    batched = await batch_rate(service, existing, 4, 100)
    new = [IdentityInput("ch-telegram", 4, f"new-{uuid.uuid4().hex}") for _ in range(2000)]
    batched_new = await batch_rate(service, new, 4, 100)
    print("UpsertByIdentities, 100 identities per call (4 concurrent callers):")
    print(f"  existing identities: {batched:,.0f}/s")
    print(f"  new identities:      {batched_new:,.0f}/s")

    # Bulk tagging at the per-call maximum: each changed contact's custom values get its new tags too.
    ids, tag = world["contact_ids"], str(tags[19].id)
    size = min(1000, len(ids) // 6)  # the bulk maximum, or less for a small seed; 6 calls: warm-up + 5 runs
    batches = [ids[k * size : (k + 1) * size] for k in range(6)]
    to_add, to_remove = iter(batches), iter(batches)  # removed from the contacts it was added to
    added = await timed(lambda: service.change_tags(SPACE, ACTOR, next(to_add), [tag], []), 5)
    removed = await timed(lambda: service.change_tags(SPACE, ACTOR, next(to_remove), [], [tag]), 5)
    print(
        f"ChangeTags, {size:,} contacts per call, ms: add p50 {_pct(added, 50):.0f} max {max(added):.0f}; "
        f"remove p50 {_pct(removed, 50):.0f} max {max(removed):.0f}"
    )

    # Deleting a popular tag: in chunks (the service's default) against one transaction, on two similar tags.
    print("\nDeleteTag, then untagging its contacts in the background, with inbound upserts of its contacts:")
    for tag, chunk in ((tags[17], TAG_DELETION_CHUNK), (tags[18], 10**9)):
        holders = [i for i, have in zip(sample, world["sample_tags"], strict=True) if tag.id in have]
        await tag_deletion(service, tag, holders, chunk)

    slowest = max(results, key=lambda r: r[2])
    print(f"\nEXPLAIN ANALYZE of the slowest view ('{slowest[0]}'): page query, then count query")
    async with repo.unit() as unit:
        defs = {f.key: f for f in await repo.list_fields(unit.session, SPACE)}
        resolved = resolve_criteria(
            views[slowest[0]], fields=defs, tag_ids={t.id for t in tags}, me=ACTOR.user_id, now=datetime.now(UTC)
        )
        print(await repo.explain_list(unit.session, SPACE, resolved, None, 50))
    await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1_000_000, help="contacts to seed (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per query")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent UpsertByIdentity callers")
    args = parser.parse_args(argv)

    external = os.environ.get("PARLEY_BENCH_DATABASE_URL")
    if external:
        asyncio.run(bench(external, args.contacts, args.runs, args.concurrency))
        return
    from parley_kit.local.servers import PostgresServer

    with tempfile.TemporaryDirectory(prefix="parley-contacts-bench-") as tmp:
        os.chmod(tmp, 0o755)
        pg = PostgresServer(Path(tmp) / "pg", durable=False).start()
        try:
            url = pg.create_database("contacts_bench")
            asyncio.run(bench(url, args.contacts, args.runs, args.concurrency))
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
