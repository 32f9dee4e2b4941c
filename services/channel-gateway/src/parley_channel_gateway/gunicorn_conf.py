"""gunicorn configuration of the webhook process (`python -m parley_channel_gateway web`).

Reads PARLEY_HTTP_PORT (default 8080) and PARLEY_CHANNEL_GATEWAY_HTTP_WORKERS. The worker class is
`web_worker.WebhookWorker`: each worker is one thread running one uvloop event loop, which parses HTTP, runs the
Flask app in a greenlet per request and awaits the JetStream acks, so many webhooks wait for their acks at once
without any thread hand-off. Prometheus metrics are aggregated across workers through PROMETHEUS_MULTIPROC_DIR,
and served summed on PARLEY_METRICS_PORT by the master (where every other process serves them, and where the
chart's scrape config looks) as well as on the HTTP port's /metrics.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from parley_kit.settings import load_settings

from parley_channel_gateway.config import Settings

_settings = load_settings(Settings)

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="parley-gateway-metrics-")

# Import the app's modules once in the master (forked workers share them); each worker still builds its own
# app, NATS connection and event loop after the fork (preload_app stays off). PROMETHEUS_MULTIPROC_DIR is set
# above, before prometheus_client creates the kit's metrics.
import parley_channel_gateway.webapp  # noqa: E402, F401

bind = [f"0.0.0.0:{_settings.http_port}"]
workers = _settings.channel_gateway_http_workers
worker_class = "parley_channel_gateway.web_worker.WebhookWorker"
backlog = 2048
keepalive = 5
timeout = 30
graceful_timeout = max(1, round(_settings.shutdown_grace_seconds))
preload_app = False  # each worker builds its own app and NATS connection on its loop after the fork
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "parley-channel-gateway-web"


def when_ready(server: Any) -> None:
    """In the master, once it listens: /metrics on PARLEY_METRICS_PORT (0: off), the workers' metrics summed, plus
    the CPU time and resident memory of the master and its workers together (what every other process exports
    for itself, and what the RED dashboard's saturation panels read)."""
    if _settings.metrics_port:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_ProcessTreeCollector(server))
        start_http_server(_settings.metrics_port, registry=registry)


class _ProcessTreeCollector:
    """process_cpu_seconds_total and process_resident_memory_bytes of the gunicorn master and its live workers."""

    def __init__(self, arbiter: Any) -> None:
        self._arbiter = arbiter

    def collect(self) -> Any:
        from prometheus_client import ProcessCollector
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        totals = {"process_cpu_seconds": 0.0, "process_resident_memory_bytes": 0.0}
        for pid in [os.getpid(), *list(self._arbiter.WORKERS)]:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                if family.name in totals and family.samples:
                    totals[family.name] += family.samples[0].value
        yield CounterMetricFamily(
            "process_cpu_seconds", "Total user and system CPU time of the master and workers in seconds.",
            value=totals["process_cpu_seconds"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the master and workers in bytes.",
            value=totals["process_resident_memory_bytes"],
        )  # fmt: skip


def post_fork(server: Any, worker: Any) -> None:
    from parley_kit import telemetry
    from parley_kit.logs import configure_logging

    configure_logging(_settings.service_name, _settings.log_level)
    telemetry.configure_tracing(_settings.service_name)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
