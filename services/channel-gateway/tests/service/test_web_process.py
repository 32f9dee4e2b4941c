"""`python -m parley_channel_gateway web`: gunicorn on PARLEY_HTTP_PORT serving the webhook app, with
metrics aggregated across its workers, and a clean exit on SIGTERM."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from parley_kit.local.servers import free_port


def test_web_process_serves_signed_webhooks_through_gunicorn(
    migrated: str, make_settings: Callable[..., Any], gw: Any, tmp_path: Any
) -> None:
    settings = make_settings()
    page = str(uuid.uuid4().int)[:15]
    space = f"space-{uuid.uuid4().hex[:8]}"
    channel = gw.run(gw.connect_channel(settings, space, "messenger", page_id=page, page_access_token=gw.META_TOKEN))
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": settings.database_url,
        "PARLEY_NATS_URL": settings.nats_url,
        "PARLEY_HTTP_PORT": str(port),
        "PARLEY_METRICS_PORT": str(metrics_port),
        "PARLEY_CHANNEL_GATEWAY_HTTP_WORKERS": "2",
        "PARLEY_CHANNEL_GATEWAY_ENCRYPTION_KEY": settings.channel_gateway_encryption_key,
        "PARLEY_CHANNEL_GATEWAY_META_APP_SECRET": gw.APP_SECRET,
        "PARLEY_SHUTDOWN_GRACE_SECONDS": "3",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "web.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley_channel_gateway", "web"], env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        gw.wait_until(ready, timeout=30)
        mid = f"m_{uuid.uuid4().hex}"
        item = {
            "sender": {"id": "42"},
            "recipient": {"id": page},
            "timestamp": 1,
            "message": {"mid": mid, "text": "hi"},
        }
        body = json.dumps({"object": "page", "entry": [{"id": page, "messaging": [item]}]}).encode()
        signature = "sha256=" + hmac.new(gw.APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
        for _ in range(4):  # reaches both workers, most likely
            response = httpx.post(
                f"{base}/webhooks/messenger",
                content=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
            )
            assert response.status_code == 200, response.text
        events = gw.run(gw.inbound_events(settings.nats_url, channel_id=channel.channel.id))
        assert [e.event.provider_message_id for e in events] == [mid]
        # Summed over the workers, on the HTTP port and on PARLEY_METRICS_PORT (where the chart scrapes).
        for url in (f"{base}/metrics", f"http://127.0.0.1:{metrics_port}/metrics"):
            metrics = httpx.get(url).text
            line = next(
                ln
                for ln in metrics.splitlines()
                if ln.startswith("parley_http_requests_total")
                and 'route="/webhooks/messenger"' in ln
                and 'status="200"' in ln
            )
            assert float(line.rsplit(" ", 1)[1]) == 4.0, url
            # Serving (connected to NATS): one series for the process, as the gRPC processes export it.
            serving = [ln for ln in metrics.splitlines() if ln.startswith("parley_service_serving{")]
            assert serving == ['parley_service_serving{service="channel-gateway"} 1.0'], url
        # The master's port also has the CPU and memory of the master and workers together.
        summed = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        cpu = next(ln for ln in summed.splitlines() if ln.startswith("process_cpu_seconds_total "))
        rss = next(ln for ln in summed.splitlines() if ln.startswith("process_resident_memory_bytes "))
        assert float(cpu.split()[1]) > 0 and float(rss.split()[1]) > 3 * 10_000_000  # master + 2 workers
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log.read_text()[-2000:]
