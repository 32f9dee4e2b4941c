"""SIGKILL the conversations process in the middle of an inbound stream, restart it: every message
stored exactly once, each contact's messages in provider order.

The short form (500 messages) always runs; PARLEY_SOAK=1 runs the 5,000-message soak too."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import pytest
from parley_kit.contracts import channel_gateway as cg
from parley_kit.nats.streams import provision
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

SOAK = os.environ.get("PARLEY_SOAK") == "1"


def _start(settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PARLEY_SERVICE_NAME": "conversations",
        "PARLEY_DATABASE_URL": settings.database_url,
        "PARLEY_NATS_URL": settings.nats_url,
        "PARLEY_GRPC_HOST": "127.0.0.1",
        "PARLEY_GRPC_PORT": "0",
        "PARLEY_METRICS_PORT": "0",
        "PARLEY_AUTH_JWKS": settings.auth_jwks,
        "PARLEY_CONTACTS_ADDR": settings.contacts_addr,
        "PARLEY_WORKSPACE_ADDR": settings.workspace_addr,
        "PARLEY_SERVICE_TOKEN": settings.service_token,
        "PARLEY_INGEST_BATCH_SIZE": "25",
        "PARLEY_INGEST_ACK_WAIT_SECONDS": "5",
        "PARLEY_INGEST_FETCH_TIMEOUT_SECONDS": "0.5",
    }
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "parley_conversations", "serve"], env=env, stdout=out, stderr=out)


async def _sigkill_mid_stream(make_settings, helpers, tmp_path: Path, total: int) -> None:
    settings = make_settings()
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    contacts = 50
    channel = f"ch-{sp}"  # channel ids are global: a provider message id is unique per channel
    events = [
        helpers.inbound(sp, channel, f"k{i % contacts:02d}", f"k-{i:05d}", text=f"{i // contacts}", seq=i // contacts)
        for i in range(total)
    ]
    engine = create_async_engine(settings.database_url.replace("postgresql://", "postgresql+asyncpg://"))
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    log = tmp_path / "conversations.log"

    async def stored() -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT count(*) FROM messages WHERE space_id = :s"), {"s": sp}))

    await provision(js, [cg.stream_spec()], [])  # the gateway's stream, as the gateway provisions it
    proc = _start(settings, log)
    try:
        await helpers.publish_inbound(js, events[: total // 2])
        await helpers.wait_for(lambda: _at_least(stored(), total // 10), timeout=60, interval=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = await stored()
        assert killed_at < total // 2, "the kill landed after the first half was stored; nothing was in flight"
        await helpers.publish_inbound(js, events[total // 2 :])  # the gateway keeps accepting meanwhile
        proc = _start(settings, log)
        try:
            await helpers.wait_for(lambda: _at_least(stored(), total), timeout=120, interval=0.2)
        except TimeoutError:
            raise AssertionError(await _diagnose(engine, js, sp, killed_at)) from None
        await asyncio.sleep(1.0)  # anything still in flight would show up as a duplicate now
        async with engine.connect() as conn:
            rows, distinct = (
                await conn.execute(
                    text("SELECT count(*), count(DISTINCT provider_message_id) FROM messages WHERE space_id = :s"),
                    {"s": sp},
                )
            ).one()
            ordered = (
                await conn.execute(
                    text("SELECT contact_id, text FROM messages WHERE space_id = :s ORDER BY seq"), {"s": sp}
                )
            ).all()
            open_conversations = await conn.scalar(
                text("SELECT count(*) FROM conversations WHERE space_id = :s AND status = 'open'"), {"s": sp}
            )
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await nc.close()
        await engine.dispose()
    assert (rows, distinct) == (total, total), f"stored {rows} rows for {distinct} messages (killed at {killed_at})"
    per_contact: dict[str, list[int]] = {}
    for contact, body in ordered:
        per_contact.setdefault(contact, []).append(int(body))
    assert all(v == sorted(v) == list(range(total // contacts)) for v in per_contact.values())
    assert open_conversations == contacts


async def _diagnose(engine, js, sp: str, killed_at: int) -> str:
    """What the ingest looks like when messages are missing: offsets, durables, subjects, dead letters."""
    lines = [f"killed at {killed_at}"]
    async with engine.connect() as conn:
        lines.append(
            f"stored {await conn.scalar(text('SELECT count(*) FROM messages WHERE space_id = :s'), {'s': sp})}"
        )
        lines += [f"offset {r}" for r in (await conn.execute(text("SELECT * FROM ingest_offsets ORDER BY 1"))).all()]
        locks = await conn.execute(
            text("SELECT classid::bigint, objid FROM pg_locks WHERE locktype = 'advisory' ORDER BY 1, 2")
        )
        lines.append(f"locks {locks.all()}")
    for p in range(cg.INBOUND_PARTITIONS):
        info = await js.consumer_info(cg.STREAM, f"conversations--inbound-{p:02d}")
        lines.append(
            f"durable {p}: pending={info.num_pending} ack_pending={info.num_ack_pending} "
            f"redelivered={info.num_redelivered} delivered={info.delivered.stream_seq} "
            f"ack_floor={info.ack_floor.stream_seq}"
        )
    state = (await js.stream_info(cg.STREAM, subjects_filter=f"{cg.INBOUND_PREFIX}.*")).state
    lines.append(f"stream last_seq={state.last_seq} subjects={state.subjects}")
    return "\n".join(lines)


async def _at_least(coro, n: int) -> bool:
    return (await coro) >= n


async def test_sigkill_mid_ingest_then_restart_stores_every_message_exactly_once(
    make_settings, helpers, tmp_path
) -> None:
    await _sigkill_mid_stream(make_settings, helpers, tmp_path, 500)


@pytest.mark.slow
@pytest.mark.skipif(not SOAK, reason="soak: set PARLEY_SOAK=1 to run 5,000 messages")
async def test_sigkill_mid_ingest_soak_5000_messages(make_settings, helpers, tmp_path) -> None:
    await _sigkill_mid_stream(make_settings, helpers, tmp_path, 5000)
