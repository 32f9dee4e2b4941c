"""The per-channel rate limit holds across worker replicas: two `worker` processes share one token bucket
in PostgreSQL, so together they never exceed the channel's rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley_kit.contracts import channel_gateway as contract

RATE = 4.0  # sends per second; the bucket's burst is the same
REQUESTS = 16


@pytest.fixture(scope="module")
def two_workers(
    migrated: str, make_settings: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory, gw: Any
) -> Iterator[tuple[Any, list[Path]]]:
    settings = make_settings()
    env = {
        **os.environ,
        "PARLEY_SERVICE_NAME": "channel-gateway",
        "PARLEY_DATABASE_URL": settings.database_url,
        "PARLEY_NATS_URL": settings.nats_url,
        "PARLEY_GRPC_HOST": "127.0.0.1",
        "PARLEY_GRPC_PORT": "0",
        "PARLEY_METRICS_PORT": "0",
        "PARLEY_AUTH_JWKS": settings.auth_jwks,
        "PARLEY_CHANNEL_GATEWAY_ENCRYPTION_KEY": settings.channel_gateway_encryption_key,
        "PARLEY_CHANNEL_GATEWAY_GRAPH_API_URL": settings.channel_gateway_graph_api_url,
        "PARLEY_CHANNEL_GATEWAY_TELEGRAM_API_URL": settings.channel_gateway_telegram_api_url,
        "PARLEY_CHANNEL_GATEWAY_RATE_LIMITS": json.dumps({"custom": RATE}),
        "PARLEY_CHANNEL_GATEWAY_WORKER_BATCH_SIZE": "2",
        "PARLEY_SHUTDOWN_GRACE_SECONDS": "2",
    }
    logs = [tmp_path_factory.mktemp("worker") / f"worker-{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "parley_channel_gateway", "worker"], env=env, stdout=out, stderr=out
                )
            )
    try:
        gw.wait_until(
            lambda: all(b'"serving"' in log.read_bytes() or b"serving" in log.read_bytes() for log in logs), 30
        )
        yield settings, logs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_two_worker_processes_together_keep_the_channels_rate(
    two_workers: tuple[Any, list[Path]], gw: Any, fake_provider: Any
) -> None:
    settings, logs = two_workers
    space = f"space-{uuid.uuid4().hex[:8]}"
    custom = gw.run(
        gw.connect_channel(settings, space, "custom", outbound_webhook_url=fake_provider.url + "/rate-hook")
    )
    ids = [str(uuid.uuid4()) for _ in range(REQUESTS)]

    async def publish() -> None:
        nc = await nats.connect(settings.nats_url)
        js = nc.jetstream()
        for i, rid in enumerate(ids):
            request = ev.OutboundSendRequest(
                request_id=rid,
                space_id=space,
                channel_id=custom.channel.id,
                contact_external_id=f"user-{i}",
                text=f"n{i}",
            )
            await js.publish(contract.OUTBOUND_REQUESTED, request.SerializeToString(), headers={"Nats-Msg-Id": rid})
        await nc.close()

    gw.run(publish())
    gw.wait_until(lambda: len(fake_provider.received("/rate-hook")) >= REQUESTS, timeout=60)
    time.sleep(0.5)
    calls = fake_provider.received("/rate-hook")
    assert sorted(json.loads(c.body)["delivery_id"] for c in calls) == sorted(ids)  # each sent exactly once
    times = sorted(c.at for c in calls)
    # A shared bucket of RATE/s with burst RATE: the last send comes no sooner than (REQUESTS - RATE) / RATE
    # seconds after the first (two separate buckets would finish in half that time)...
    assert times[-1] - times[0] >= (REQUESTS - RATE) / RATE - 0.35
    # ...and no one-second window holds more than the burst plus one second of refill (+1 for timing jitter).
    for start in times:
        assert sum(1 for t in times if start <= t < start + 1.0) <= 2 * RATE + 1
    # Both replicas did part of the work.
    sent_by = [sum(log.read_text().count(rid) for rid in ids) for log in logs]
    assert all(count > 0 for count in sent_by), sent_by
