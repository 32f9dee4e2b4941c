"""Grafana dashboards of the Parley chart, written as code and rendered to helm/parley/dashboards/*.json.

    python -m parley_deploy.dashboards          # rewrite the JSON files
    python -m parley_deploy.dashboards --check  # fail when the committed JSON differs

Every metric named here must be in docs/telemetry.md (tests/deploy checks it). Queries filter on
`namespace=~"$namespace"`: an "All" selection matches series without a namespace label too, so the
dashboards work with PodMonitor scraping and with annotation-based scraping alike.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "helm" / "parley" / "dashboards"

NS = 'namespace=~"$namespace"'
GW = f'{NS},service="channel-gateway"'
WEBHOOKS = f'{GW},route=~"/webhooks/.*"'
RI = "$__rate_interval"
SERVER_FAULT_CODES = "UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS|UNIMPLEMENTED"

# The SLOs the overview shows (docs/operations.md explains them).
SLO_WEBHOOK_AVAILABILITY = 0.999
SLO_WEBHOOK_P99_SECONDS = 1.0
SLO_VISIBILITY_P99_SECONDS = 5.0
SLO_OUTBOUND_SUCCESS = 0.99
SLO_GRPC_AVAILABILITY = 0.999


@dataclass
class Target:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    height: int = 8
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)
    stack: bool = False


@dataclass
class Row:
    title: str
    panels: list[Panel]


def _target(t: Target, ref: str) -> dict[str, Any]:
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": t.expr,
        "legendFormat": t.legend or "__auto",
        "range": True,
        "refId": ref,
    }


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.thresholds:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in p.thresholds],
        }
        defaults["color"] = {"mode": "thresholds"}
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
        }
        options: dict[str, Any] = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value"}
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "targets": [_target(t, chr(ord("A") + i)) for i, t in enumerate(p.targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def _variables(extra: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
            },
            {
                "name": "namespace",
                "label": "Namespace",
                "type": "query",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": {"query": "label_values(parley_service_serving, namespace)", "refId": "namespace"},
                "definition": "label_values(parley_service_serving, namespace)",
                "includeAll": True,
                "allValue": ".*",
                "multi": False,
                "refresh": 2,
                "current": {},
                "hide": 0,
            },
            *extra,
        ]
    }


def dashboard(uid: str, title: str, description: str, rows: list[Row], variables: list[dict[str, Any]]) -> dict:
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for row in rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        pid += 1
        y += 1
        x = 0
        line_height = 0
        for p in row.panels:
            if x + p.width > 24:
                x = 0
                y += line_height
                line_height = 0
            panels.append(_panel(p, pid, x, y))
            pid += 1
            x += p.width
            line_height = max(line_height, p.height)
        y += line_height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["parley"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": _variables(variables),
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def _ratio_thresholds(slo: float) -> list[tuple[float | None, str]]:
    return [(None, "red"), (slo, "green")]


def platform_overview() -> dict:
    p99 = "histogram_quantile(0.99, sum by (le) (rate({metric}{{{sel}}}[$__range])))"
    slos = Row(
        "SLOs (over the selected time range)",
        [
            Panel(
                "Webhook availability",
                [
                    Target(
                        f'1 - (sum(increase(parley_http_requests_total{{{WEBHOOKS},status=~"5.."}}[$__range]))'
                        f" / sum(increase(parley_http_requests_total{{{WEBHOOKS}}}[$__range])))"
                    )
                ],
                unit="percentunit",
                kind="stat",
                width=5,
                height=5,
                thresholds=_ratio_thresholds(SLO_WEBHOOK_AVAILABILITY),
                description=f"SLO {SLO_WEBHOOK_AVAILABILITY:.1%} of webhook requests answered without a 5xx "
                "(a 5xx makes the provider retry; it means events were not durably stored).",
            ),
            Panel(
                "Webhook latency p99",
                [Target(p99.format(metric="parley_http_request_duration_seconds_bucket", sel=WEBHOOKS))],
                unit="s",
                kind="stat",
                width=5,
                height=5,
                thresholds=[(None, "green"), (SLO_WEBHOOK_P99_SECONDS, "red")],
                description=f"SLO p99 < {SLO_WEBHOOK_P99_SECONDS:g} s from request to 2xx "
                "(which comes only after JetStream stored the events).",
            ),
            Panel(
                "Time to visibility p99",
                [Target(p99.format(metric="parley_conversations_time_to_visibility_seconds_bucket", sel=NS))],
                unit="s",
                kind="stat",
                width=5,
                height=5,
                thresholds=[(None, "green"), (SLO_VISIBILITY_P99_SECONDS, "red")],
                description=f"SLO p99 < {SLO_VISIBILITY_P99_SECONDS:g} s from the gateway receiving a message "
                "to the message being stored in its conversation.",
            ),
            Panel(
                "Outbound success",
                [
                    Target(
                        f'sum(increase(parley_channel_gateway_outbound_sends_total{{{NS},status="sent"}}[$__range]))'
                        f' / sum(increase(parley_channel_gateway_outbound_sends_total{{{NS},status=~"sent|failed"}}'
                        "[$__range]))"
                    )
                ],
                unit="percentunit",
                kind="stat",
                width=4,
                height=5,
                thresholds=_ratio_thresholds(SLO_OUTBOUND_SUCCESS),
                description=f"SLO {SLO_OUTBOUND_SUCCESS:.0%} of sends accepted by the provider (sends Parley "
                "rejected by rule, e.g. outside Messenger's 24-hour window, are not counted).",
            ),
            Panel(
                "gRPC availability",
                [
                    Target(
                        f'1 - (sum(increase(parley_rpc_requests_total{{{NS},code=~"{SERVER_FAULT_CODES}"}}[$__range]))'
                        f" / sum(increase(parley_rpc_requests_total{{{NS}}}[$__range])))"
                    )
                ],
                unit="percentunit",
                kind="stat",
                width=5,
                height=5,
                thresholds=_ratio_thresholds(SLO_GRPC_AVAILABILITY),
                description=f"SLO {SLO_GRPC_AVAILABILITY:.1%} of RPCs without a server fault "
                f"({SERVER_FAULT_CODES.replace('|', ', ')}).",
            ),
        ],
    )
    inbound = Row(
        "Inbound",
        [
            Panel(
                "Inbound events per channel",
                [
                    Target(
                        f"sum by (channel_type) (rate(parley_channel_gateway_inbound_events_total{{{NS}}}[{RI}]))",
                        "{{channel_type}}",
                    )
                ],
                unit="ops",
                stack=True,
                description="Canonical inbound events durably published to JetStream, per channel type.",
            ),
            Panel(
                "Inbound events per kind",
                [
                    Target(
                        f"sum by (kind) (rate(parley_channel_gateway_inbound_events_total{{{NS}}}[{RI}]))", "{{kind}}"
                    )
                ],
                unit="ops",
                stack=True,
            ),
            Panel(
                "Webhook requests by status",
                [Target(f"sum by (status) (rate(parley_http_requests_total{{{WEBHOOKS}}}[{RI}]))", "{{status}}")],
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Webhook latency",
                [
                    Target(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(parley_http_request_duration_seconds_bucket{{{WEBHOOKS}}}[{RI}])))",
                        f"p{label}",
                    )
                    for q, label in ((0.5, "50"), (0.95, "95"), (0.99, "99"))
                ],
                unit="s",
            ),
            Panel(
                "End-to-end time to visibility",
                [
                    Target(
                        f"histogram_quantile({q}, sum by (le, channel_type) "
                        f"(rate(parley_conversations_time_to_visibility_seconds_bucket{{{NS}}}[{RI}])))",
                        f"p{label} {{{{channel_type}}}}",
                    )
                    for q, label in ((0.5, "50"), (0.99, "99"))
                ],
                unit="s",
                width=24,
                description="From the gateway receiving a provider's message to the message stored in its "
                "conversation (webhook -> JetStream -> conversations consumer -> commit).",
            ),
        ],
    )
    consumers = Row(
        "Consumers and events",
        [
            Panel(
                "Consumer lag (pending messages)",
                [Target(f"max by (service, consumer) (parley_consumer_pending_messages{{{NS}}})", "{{consumer}}")],
                description="Messages in the stream not yet delivered to the durable consumer. Replicas of a "
                "service share one durable consumer, so the value is the same on every replica (max).",
            ),
            Panel(
                "Ack pending",
                [Target(f"max by (service, consumer) (parley_consumer_ack_pending_messages{{{NS}}})", "{{consumer}}")],
                description="Delivered but not yet acknowledged; near max_ack_pending means handlers are slow.",
            ),
            Panel(
                "Events processed by outcome",
                [
                    Target(
                        f"sum by (consumer, outcome) (rate(parley_events_processed_total{{{NS}}}[{RI}]))",
                        "{{consumer}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Dead letters",
                [
                    Target(
                        f"sum by (service, consumer) (increase(parley_events_processed_total"
                        f'{{{NS},outcome="dead_letter"}}[{RI}]))',
                        "{{consumer}}",
                    )
                ],
                thresholds=[(None, "green"), (1, "red")],
                description="Messages that can never succeed, moved to the dead-letter subject. Each one needs "
                "a look (see the runbook).",
            ),
            Panel(
                "Outbox backlog",
                [Target(f"max by (service) (parley_outbox_pending_events{{{NS}}})", "{{service}}")],
                description="Committed changes whose events are not yet published.",
            ),
            Panel(
                "Events published by outcome",
                [
                    Target(
                        f"sum by (service, outcome) (rate(parley_events_published_total{{{NS}}}[{RI}]))",
                        "{{service}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
        ],
    )
    outbound = Row(
        "Outbound",
        [
            Panel(
                "Outbound sends by provider and status",
                [
                    Target(
                        f"sum by (provider, status) (rate(parley_channel_gateway_outbound_sends_total{{{NS}}}[{RI}]))",
                        "{{provider}} {{status}}",
                    )
                ],
                unit="ops",
                stack=True,
            ),
            Panel(
                "Provider call latency p99",
                [
                    Target(
                        f"histogram_quantile(0.99, sum by (le, provider) "
                        f"(rate(parley_channel_gateway_provider_request_duration_seconds_bucket{{{NS}}}[{RI}])))",
                        "{{provider}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Provider calls by outcome",
                [
                    Target(
                        f"sum by (provider, outcome) "
                        f"(rate(parley_channel_gateway_provider_request_duration_seconds_count{{{NS}}}[{RI}]))",
                        "{{provider}} {{outcome}}",
                    )
                ],
                unit="reqps",
                width=24,
                description="Every HTTP call to a provider API; rate_limited and server_error calls are retried "
                "with backoff.",
            ),
        ],
    )
    services = Row(
        "Services",
        [
            Panel(
                "Serving processes per service",
                [Target(f"sum by (service) (parley_service_serving{{{NS}}})", "{{service}}")],
                description="Processes whose gRPC health says SERVING.",
            ),
            Panel(
                "gRPC server-fault ratio per service",
                [
                    Target(
                        f'sum by (service) (rate(parley_rpc_requests_total{{{NS},code=~"{SERVER_FAULT_CODES}"}}[{RI}]))'
                        f" / sum by (service) (rate(parley_rpc_requests_total{{{NS}}}[{RI}]))",
                        "{{service}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Tag deletions (contacts)",
                [
                    Target(f"max(parley_contacts_tags_pending_deletion{{{NS}}})", "tags pending"),
                    Target(
                        f"sum(rate(parley_contacts_tag_deletion_untagged_total{{{NS}}}[{RI}]))", "contacts untagged/s"
                    ),
                ],
                description="Deleted tags whose contacts the background loop is still untagging, and how fast.",
            ),
            Panel(
                "Oldest pending tag deletion",
                [
                    Target(
                        f"time() - max(parley_contacts_tag_deletion_oldest_timestamp_seconds{{{NS}}} > 0)",
                        "pending for",
                    )
                ],
                unit="s",
                description="How long the oldest deleted tag's contacts have been waiting to be untagged "
                "(ParleyTagDeletionStuck fires past an hour).",
            ),
        ],
    )
    return dashboard(
        "parley-overview",
        "Parley / Platform overview",
        "Inbound rate per channel, webhook latency, time to visibility, consumer lag, outbound sends, dead letters.",
        [slos, inbound, consumers, outbound, services],
        [],
    )


def service_red() -> dict:
    sel = f'{NS},service="$service"'
    quantiles = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
    service_var = {
        "name": "service",
        "label": "Service",
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": "label_values(parley_service_serving, service)", "refId": "service"},
        "definition": "label_values(parley_service_serving, service)",
        "includeAll": False,
        "multi": False,
        "refresh": 2,
        "current": {},
        "hide": 0,
    }
    grpc = Row(
        "gRPC (rate, errors, duration)",
        [
            Panel(
                "RPC rate by method",
                [Target(f"sum by (method) (rate(parley_rpc_requests_total{{{sel}}}[{RI}]))", "{{method}}")],
                unit="reqps",
                width=8,
            ),
            Panel(
                "RPC errors by method and code",
                [
                    Target(
                        f'sum by (method, code) (rate(parley_rpc_requests_total{{{sel},code!="OK"}}[{RI}]))',
                        "{{method}} {{code}}",
                    )
                ],
                unit="reqps",
                width=8,
                description="Every non-OK status; client errors (INVALID_ARGUMENT, NOT_FOUND...) included.",
            ),
            Panel(
                "RPC duration",
                [
                    Target(
                        f"histogram_quantile({q}, sum by (le) (rate(parley_rpc_duration_seconds_bucket"
                        f"{{{sel}}}[{RI}])))",
                        label,
                    )
                    for q, label in quantiles
                ],
                unit="s",
                width=8,
            ),
            Panel(
                "RPC p99 by method",
                [
                    Target(
                        f"histogram_quantile(0.99, sum by (le, method) (rate(parley_rpc_duration_seconds_bucket"
                        f"{{{sel}}}[{RI}])))",
                        "{{method}}",
                    )
                ],
                unit="s",
                width=24,
            ),
        ],
    )
    http = Row(
        "HTTP (rate, errors, duration)",
        [
            Panel(
                "HTTP rate by route and status",
                [
                    Target(
                        f"sum by (route, status) (rate(parley_http_requests_total{{{sel}}}[{RI}]))",
                        "{{route}} {{status}}",
                    )
                ],
                unit="reqps",
                width=8,
            ),
            Panel(
                "HTTP 5xx by route",
                [
                    Target(
                        f'sum by (route) (rate(parley_http_requests_total{{{sel},status=~"5.."}}[{RI}]))', "{{route}}"
                    )
                ],
                unit="reqps",
                width=8,
            ),
            Panel(
                "HTTP p99 by route",
                [
                    Target(
                        f"histogram_quantile(0.99, sum by (le, route) (rate("
                        f"parley_http_request_duration_seconds_bucket{{{sel}}}[{RI}])))",
                        "{{route}}",
                    )
                ],
                unit="s",
                width=8,
            ),
        ],
    )
    events = Row(
        "Events",
        [
            Panel(
                "Events published",
                [
                    Target(
                        f"sum by (event_type, outcome) (rate(parley_events_published_total{{{sel}}}[{RI}]))",
                        "{{event_type}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Events processed",
                [
                    Target(
                        f"sum by (consumer, outcome) (rate(parley_events_processed_total{{{sel}}}[{RI}]))",
                        "{{consumer}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Handler duration p99",
                [
                    Target(
                        f"histogram_quantile(0.99, sum by (le, consumer) (rate(parley_event_processing_seconds_bucket"
                        f"{{{sel}}}[{RI}])))",
                        "{{consumer}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Consumer pending / ack pending",
                [
                    Target(f"max by (consumer) (parley_consumer_pending_messages{{{sel}}})", "pending {{consumer}}"),
                    Target(
                        f"max by (consumer) (parley_consumer_ack_pending_messages{{{sel}}})", "ack pending {{consumer}}"
                    ),
                ],
            ),
            Panel(
                "Outbox",
                [
                    Target(f"max(parley_outbox_pending_events{{{sel}}})", "pending"),
                    Target(f"sum(rate(parley_outbox_relayed_total{{{sel}}}[{RI}]))", "relayed/s"),
                ],
            ),
            Panel("Serving processes", [Target(f"sum(parley_service_serving{{{sel}}})", "serving")]),
        ],
    )
    saturation = Row(
        "Saturation",
        [
            Panel(
                "CPU per process",
                [
                    Target(
                        f"rate(process_cpu_seconds_total{{{NS}}}[{RI}]) * on(namespace, pod) group_left() "
                        f"(max by (namespace, pod) (parley_service_serving{{{sel}}}) * 0 + 1)",
                        "{{pod}}",
                    )
                ],
                unit="percentunit",
                description="The service's pods are found through parley_service_serving (joined on pod).",
            ),
            Panel(
                "Resident memory per process",
                [
                    Target(
                        f"process_resident_memory_bytes{{{NS}}} * on(namespace, pod) group_left() "
                        f"(max by (namespace, pod) (parley_service_serving{{{sel}}}) * 0 + 1)",
                        "{{pod}}",
                    )
                ],
                unit="bytes",
            ),
        ],
    )
    return dashboard(
        "parley-service-red",
        "Parley / Service RED",
        "Rate, errors and duration of one service: RPCs, HTTP routes, event handling, outbox, saturation.",
        [grpc, http, events, saturation],
        [service_var],
    )


DASHBOARDS = {"parley-overview.json": platform_overview, "parley-service-red.json": service_red}


def render_all() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=False) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m parley_deploy.dashboards")
    parser.add_argument("--check", action="store_true", help="fail when the committed JSON differs")
    args = parser.parse_args()
    stale = []
    for name, text in render_all().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        raise SystemExit(f"dashboards out of date: {stale}; run python -m parley_deploy.dashboards")


if __name__ == "__main__":
    main()
