"""Conversations ingest benchmark: canonical inbound events on JetStream -> stored messages.

Starts nats-server, PostgreSQL, the real contacts service and the conversations service (each as its
own process, as in production) on free ports, then:

1. publishes a backlog of N inbound events (M contacts, interleaved) and reports the raw JetStream
   publish rate beside the rate at which conversations drains the backlog into the database;
2. publishes at a fixed rate (default 250/s, then 500/s) and reports the time to visibility (event
   published -> message committed) p50/p99 and whether the backlog stayed flat;
3. says where the time goes: the ingest's stage split (contacts calls vs database transaction) and
   batch sizes, from the service's own metrics.

The gateway is not in this loop (events are published as the gateway publishes them); the end-to-end
webhook benchmark belongs with the gateway. Traffic goes only to 127.0.0.1.
Run: `python -m bench conversations` (or `python -m bench.conversations_bench --events 20000`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path


def _wait_serving(target: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited ({proc.returncode}); see {log}")
        try:
            with grpc.insecure_channel(target) as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"not SERVING in time; see {log}")


def _event(space: str, channel: str, contact: str, mid: str, text: str):  # type: ignore[no-untyped-def]
    from google.protobuf.timestamp_pb2 import Timestamp
    from parley.channel_gateway.v1 import events_pb2 as gw
    from parley.common.v1 import common_pb2 as common

    now = Timestamp()
    now.GetCurrentTime()
    return gw.InboundEvent(
        event_id=f"{channel}:{mid}",
        space_id=space,
        channel_id=channel,
        channel_type=common.CHANNEL_TYPE_MESSENGER,
        kind=gw.INBOUND_KIND_MESSAGE,
        contact_external_id=contact,
        provider_message_id=mid,
        provider_timestamp=now,
        received_at=now,
        parts=[gw.ContentPart(text=gw.TextPart(text=text))],
    )


async def _publish(js, events) -> float:  # type: ignore[no-untyped-def]
    """Publish pipelined; the publish+ack rate."""
    from parley_kit.contracts import channel_gateway as cg

    started = time.perf_counter()
    acks = []
    for ev in events:
        subject = cg.inbound_subject(ev.space_id, ev.channel_id, ev.contact_external_id)
        acks.append(await js.publish_async(subject, ev.SerializeToString(), headers={"Nats-Msg-Id": ev.event_id}))
    await asyncio.gather(*acks)
    return len(events) / (time.perf_counter() - started)


async def _stored(conn, space: str) -> int:  # type: ignore[no-untyped-def]
    return int(await conn.fetchval("SELECT count(*) FROM messages WHERE space_id = $1", space))


async def _backlog(nats_url: str, db_url: str, space: str, channel: str, events: int, contacts: int) -> None:
    import asyncpg
    import nats

    batch = [_event(space, channel, f"c{i % contacts}", f"m{i}", "hi") for i in range(events)]
    nc = await nats.connect(nats_url)
    conn = await asyncpg.connect(db_url)
    try:
        rate = await _publish(nc.jetstream(), batch)
        started = time.perf_counter()
        while (n := await _stored(conn, space)) < events:  # noqa: ASYNC110 - polling another process's database
            await asyncio.sleep(0.1)
        drained = n / (time.perf_counter() - started - 0.05)
    finally:
        await conn.close()
        await nc.close()
    print(f"backlog of {events:,} events from {contacts:,} new contacts (each created through contacts):")
    print(f"  raw JetStream publish+ack     {rate:10,.0f} events/s")
    print(f"  conversations ingest (drain)  {drained:10,.0f} messages/s stored")


async def _fixed_rate(
    nats_url: str, db_url: str, space: str, channel: str, rate: float, seconds: float, contacts: int
) -> None:
    """Known contacts (those of the backlog), as in steady state."""
    import asyncpg
    import nats
    from parley_kit.contracts import channel_gateway as cg

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    conn = await asyncpg.connect(db_url)
    total = int(rate * seconds)
    pending_samples: list[int] = []
    base = await _stored(conn, space)
    try:
        started = time.perf_counter()
        for i in range(total):
            due = started + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            ev = _event(space, channel, f"c{i % contacts}", f"f{rate:.0f}-{i}", f"{time.time():.6f}")
            subject = cg.inbound_subject(ev.space_id, ev.channel_id, ev.contact_external_id)
            await js.publish_async(subject, ev.SerializeToString(), headers={"Nats-Msg-Id": ev.event_id})
            if i % int(rate) == 0:
                pending_samples.append(i + base - await _stored(conn, space))
        await js.publish_async_completed()
        achieved = total / (time.perf_counter() - started)
        deadline = time.monotonic() + 60
        while await _stored(conn, space) < base + total and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        rows = await conn.fetch(
            "SELECT text, extract(epoch FROM created_at) AS stored FROM messages "
            "WHERE space_id = $1 AND provider_message_id LIKE $2",
            space,
            f"f{rate:.0f}-%",
        )
    finally:
        await conn.close()
        await nc.close()
    latencies = sorted(max(float(r["stored"]) - float(r["text"]), 0.0) for r in rows)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    growing = len(pending_samples) > 4 and pending_samples[-1] > 2 * max(pending_samples[1:4]) + rate
    print(
        f"fixed rate {rate:,.0f}/s for {seconds:.0f}s (achieved {achieved:,.0f}/s): stored {len(rows):,}/{total:,}, "
        f"time to visibility p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms, "
        f"backlog {'GROWING' if growing else 'flat'} (unstored per second: {pending_samples[-5:]})"
    )


def _metrics(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("parley_conversations_ingest_batch"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


def main(argv: list[str]) -> None:
    from parley_kit.auth import SigningKey, TokenIssuer, jwks
    from parley_kit.local.servers import NatsServer, PostgresServer, free_port

    parser = argparse.ArgumentParser(prog="python -m bench conversations")
    parser.add_argument("--events", type=int, default=20_000, help="backlog size")
    parser.add_argument("--contacts", type=int, default=2_000, help="distinct contacts")
    parser.add_argument("--rates", default="250,500", help="fixed rates, events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per fixed rate")
    args = parser.parse_args(argv)

    data = Path(tempfile.mkdtemp(prefix="parley-conversations-bench-"))
    os.chmod(data, 0o755)
    nats_server = NatsServer(data / "nats").start()
    pg = PostgresServer(data / "pg", durable=False).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        key = SigningKey.generate("bench")
        token = TokenIssuer(key).issue(space_id="*", role="system", subject="service:conversations", ttl=3600)
        contacts_port, conv_port, metrics_port = free_port(), free_port(), free_port()
        base = {
            **os.environ,
            "PARLEY_NATS_URL": nats_server.url,
            "PARLEY_GRPC_HOST": "127.0.0.1",
            "PARLEY_AUTH_JWKS": json.dumps(jwks(key)),
            "PARLEY_LOG_LEVEL": "WARNING",
            # No workspace service here and nothing is assigned: say so (the services refuse to start otherwise).
            "PARLEY_ASSIGNEE_CHECK": "off",
        }
        contacts_env = {
            **base,
            "PARLEY_SERVICE_NAME": "contacts",
            "PARLEY_DATABASE_URL": pg.create_database("contacts_bench"),
            "PARLEY_GRPC_PORT": str(contacts_port),
            "PARLEY_METRICS_PORT": "0",
            "PARLEY_CONTACTS_MIGRATE_ON_START": "true",
        }
        conv_db = pg.create_database("conversations_bench")
        conv_env = {
            **base,
            "PARLEY_SERVICE_NAME": "conversations",
            "PARLEY_DATABASE_URL": conv_db,
            "PARLEY_GRPC_PORT": str(conv_port),
            "PARLEY_METRICS_PORT": str(metrics_port),
            "PARLEY_CONTACTS_ADDR": f"127.0.0.1:{contacts_port}",
            "PARLEY_SERVICE_TOKEN": token,
        }
        for name, env, port in (("contacts", contacts_env, contacts_port), ("conversations", conv_env, conv_port)):
            log = data / f"{name}.log"
            if name == "conversations":
                subprocess.run([sys.executable, "-m", "parley_conversations", "migrate"], env=env, check=True)
            out = log.open("ab")
            procs.append(subprocess.Popen([sys.executable, "-m", f"parley_{name}", "serve"], env=env, stdout=out,
                                          stderr=out))  # fmt: skip
            _wait_serving(f"127.0.0.1:{port}", procs[-1], log)
        db_url = conv_db.replace("postgresql+asyncpg://", "postgresql://")
        print(
            f"conversations and contacts as processes; nats-server, PostgreSQL and this client on the same machine "
            f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}), {datetime.now(UTC):%Y-%m-%d %H:%M}Z"
        )
        space, channel = f"bench-{uuid.uuid4().hex[:6]}", f"ch-{uuid.uuid4().hex[:6]}"
        asyncio.run(_backlog(nats_server.url, db_url, space, channel, args.events, args.contacts))
        for rate in [float(r) for r in args.rates.split(",")]:
            asyncio.run(_fixed_rate(nats_server.url, db_url, space, channel, rate, args.seconds, args.contacts))
        m = _metrics(metrics_port)
        batches = m.get("parley_conversations_ingest_batch_events_count", 0) or 1
        contacts_s = m.get('parley_conversations_ingest_batch_seconds_sum{stage="contacts"}', 0.0)
        database_s = m.get('parley_conversations_ingest_batch_seconds_sum{stage="database"}', 0.0)
        per_batch = m.get("parley_conversations_ingest_batch_events_sum", 0) / batches
        print(
            f"where the time goes: {batches:,.0f} batches, {per_batch:.0f} "
            f"events per batch on average; per batch {contacts_s / batches * 1000:.1f} ms resolving contacts "
            f"(UpsertByIdentity for new contacts, and for known ones at most once a minute) and "
            f"{database_s / batches * 1000:.1f} ms in the database transaction"
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()
        nats_server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
