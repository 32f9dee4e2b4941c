"""The gateway's own Prometheus metrics (the kit's RED, event and outbox metrics come on top)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INBOUND_EVENTS = Counter(
    "parley_channel_gateway_inbound_events_total",
    "Inbound events published to JetStream, by channel type and canonical kind",
    ["channel_type", "kind"],
)
UNKNOWN_CHANNEL = Counter(
    "parley_channel_gateway_unknown_channel_total",
    "Webhook items for a Page, account, number or channel no active channel matches (answered 200, not published)",
    ["channel_type"],
)
WEBHOOK_REJECTED = Counter(
    "parley_channel_gateway_webhook_rejected_total",
    "Webhooks refused before publishing, by channel type and reason",
    ["channel_type", "reason"],
)
OUTBOUND_SENDS = Counter(
    "parley_channel_gateway_outbound_sends_total",
    "Send requests finished, by provider and final status: sent (provider accepted), failed (provider refused, or "
    "retries exhausted), rejected (refused by Parley's rules before calling the provider)",
    ["provider", "status"],
)
PROVIDER_REQUEST_DURATION = Histogram(
    "parley_channel_gateway_provider_request_duration_seconds",
    "Every HTTP call to a provider API, by provider and outcome (ok, rate_limited, client_error, server_error, "
    "network_error)",
    ["provider", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_RETRIES = Counter(
    "parley_channel_gateway_provider_retries_total",
    "Retryable provider errors (timeouts, 5xx, rate limits), by channel type and provider code",
    ["channel_type", "code"],
)
RATE_LIMITED = Counter(
    "parley_channel_gateway_rate_limited_total",
    "Sends given back to JetStream because the channel's token bucket was empty",
    ["channel_type"],
)
