"""Prometheus metrics shared by every process. Names are listed in docs/telemetry.md.

Label values are bounded: RPC methods, HTTP route templates, event types, consumer names
and outcomes — never ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_REQUESTS = Counter(
    "parley_rpc_requests_total",
    "gRPC requests handled, by method and status code",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "parley_rpc_duration_seconds", "gRPC handling time", ["service", "method"], buckets=LATENCY_BUCKETS
)
HTTP_REQUESTS = Counter(
    "parley_http_requests_total",
    "HTTP requests handled, by route and status",
    ["service", "route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "parley_http_request_duration_seconds",
    "HTTP handling time",
    ["service", "route", "method"],
    buckets=LATENCY_BUCKETS,
)
EVENTS_PUBLISHED = Counter(
    "parley_events_published_total",
    "Events published to JetStream; outcome is ok, duplicate or error",
    ["service", "event_type", "outcome"],
)
EVENTS_PROCESSED = Counter(
    "parley_events_processed_total",
    "Events handled by a consumer; outcome is ack, nak, dead_letter or term",
    ["service", "consumer", "event_type", "outcome"],
)
EVENT_PROCESSING = Histogram(
    "parley_event_processing_seconds",
    "Consumer handler time",
    ["service", "consumer"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_PENDING = Gauge(
    "parley_consumer_pending_messages",
    "Messages in the stream not yet delivered to the consumer",
    ["service", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "parley_consumer_ack_pending_messages",
    "Messages delivered but not yet acknowledged",
    ["service", "consumer"],
)
DIRECTORY_LOOKUPS = Counter(
    "parley_directory_lookups_total",
    "Workspace directory lookups (assignee checks, names); outcome is cached, yes, no or error",
    ["service", "kind", "outcome"],
)
OUTBOX_PENDING = Gauge("parley_outbox_pending_events", "Outbox rows not yet published", ["service"])
OUTBOX_RELAYED = Counter("parley_outbox_relayed_total", "Outbox rows published to JetStream", ["service"])
SERVICE_UP = Gauge(
    "parley_service_serving",
    "1 while the process reports SERVING",
    ["service"],
    multiprocess_mode="livemin",  # gunicorn (PROMETHEUS_MULTIPROC_DIR): 1 while every live worker serves, no pid label
)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics on `port` (0 leaves it off)."""
    if port:
        start_http_server(port, addr=host)
