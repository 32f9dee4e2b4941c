"""Dashboards and alerts use only registered metrics, the registry matches the kit, alerts carry
runbooks, and the PromQL name extraction (reused by the platform scrape test) reads PromQL right."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from parley_deploy import chart, dashboards, telemetry
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REQUIRED_ALERTS = {
    "ParleyWebhook5xxRateHigh",
    "ParleyWebhookLatencyHigh",
    "ParleyConsumerLagGrowing",
    "ParleyMessagesDeadLettered",
    "ParleyOutboundFailureRateHigh",
    "ParleyGrpcErrorRateHigh",
    "ParleyPodsNotReady",
    "ParleyTagDeletionStuck",
}
# Labels the scrape adds (PodMonitor relabelling, Prometheus itself) and the histogram bucket label.
TARGET_LABELS = {"namespace", "pod", "container", "component", "process", "job", "instance", "endpoint", "le"}


@pytest.fixture(scope="module")
def registry() -> dict[str, telemetry.Metric]:
    return telemetry.load_registry()


@pytest.fixture(scope="module")
def chart_objects(
    default_objects: list[dict[str, Any]], operator_objects: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Dashboards and both forms of the alert rules (rule-file ConfigMap and PrometheusRule)."""
    return default_objects + [o for o in operator_objects if o["kind"] == "PrometheusRule"]


def test_every_metric_in_dashboards_and_alert_rules_is_in_the_registry(
    chart_objects: list[dict[str, Any]], registry: dict[str, telemetry.Metric]
) -> None:
    used = telemetry.chart_metric_names(chart_objects, registry)
    assert len(used) >= 15
    unknown = used - set(registry)
    assert not unknown, f"not in docs/telemetry.md: {sorted(unknown)}"


def test_label_matchers_use_only_registered_labels(
    chart_objects: list[dict[str, Any]], registry: dict[str, telemetry.Metric]
) -> None:
    problems = []
    for where, expr in telemetry.chart_exprs(chart_objects):
        for metric, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^{}]*)\}", expr):
            base = telemetry.base_name(metric, registry)
            if base not in registry:
                continue
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
                if label not in registry[base].labels and label not in TARGET_LABELS:
                    problems.append(f"{where}: {metric} has no label {label!r}")
    assert not problems, "\n".join(problems)


# Every module that defines Prometheus metrics, with what the registry names as their exporter.
METRIC_MODULES = {
    "parley_kit.metrics": "kit",
    "parley_channel_gateway.metrics": "channel-gateway",
    "parley_contacts.metrics": "contacts",
    "parley_conversations.metrics": "conversations",
    "parley_workspace.metrics": "workspace",
}
METRIC_CLASSES = re.compile(r"from prometheus_client import [^\n]*\b(Counter|Gauge|Histogram|Summary)\b")


def test_metrics_are_defined_only_in_the_modules_this_test_reads() -> None:
    sources = [*telemetry.ROOT.glob("services/*/src/**/*.py"), *telemetry.ROOT.glob("libs/*/src/**/*.py")]
    defining = {_module(path) for path in sources if METRIC_CLASSES.search(path.read_text())}
    assert defining == set(METRIC_MODULES), "a module defining metrics is missing from METRIC_MODULES"


def _module(path: Path) -> str:
    src = next(parent for parent in path.parents if parent.name == "src")
    return ".".join(path.relative_to(src).with_suffix("").parts)


@pytest.mark.parametrize("module", sorted(METRIC_MODULES))
def test_the_registry_lists_every_metric_with_its_type_labels_and_exporter(
    registry: dict[str, telemetry.Metric], module: str
) -> None:
    defined = importlib.import_module(module)
    found = 0
    for value in vars(defined).values():
        if not isinstance(value, Counter | Gauge | Histogram):
            continue
        found += 1
        kind = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[type(value)]
        name = value._name + ("_total" if kind == "counter" else "")
        assert name in registry, f"{module} exports {name}; list it in docs/telemetry.md"
        entry = registry[name]
        assert entry.type == kind, name
        assert set(entry.labels) == set(value._labelnames), name
        assert entry.from_parley and entry.exporter.startswith(METRIC_MODULES[module]), name
    assert found >= (12 if module == "parley_kit.metrics" else 1)


def test_the_registry_names_what_services_must_add(registry: dict[str, telemetry.Metric]) -> None:
    required = {m.name: m for m in registry.values() if m.status == "required"}
    assert required["parley_channel_gateway_inbound_events_total"].labels == ("channel_type", "kind")
    assert required["parley_channel_gateway_outbound_sends_total"].labels == ("provider", "status")
    assert required["parley_conversations_time_to_visibility_seconds"].type == "histogram"
    for name, metric in required.items():
        service = metric.exporter.split()[0]
        assert name.startswith("parley_" + service.replace("-", "_") + "_"), f"{name} is not named after {service}"


def test_alert_rules_cover_the_issue_and_each_carries_a_runbook(operator_objects: list[dict[str, Any]]) -> None:
    rule = chart.by_kind(operator_objects, "PrometheusRule")["parley"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) >= REQUIRED_ALERTS
    operations = (chart.ROOT / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", operations, re.M)
    }
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert re.search(r"1\).+2\)", annotations["runbook"], re.S), f"{name}: the runbook gives steps"
        anchor = annotations["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"{name}: docs/operations.md has no section #{anchor}"
        assert "{{ $labels" in annotations["summary"] or "{{ $value" in annotations["summary"], name


def test_both_rule_forms_hold_the_same_alerts(
    default_objects: list[dict[str, Any]], operator_objects: list[dict[str, Any]]
) -> None:
    import yaml

    file_rules = yaml.safe_load(
        chart.by_kind(default_objects, "ConfigMap")["parley-alert-rules"]["data"]["parley.rules.yaml"]
    )
    operator_rules = chart.by_kind(operator_objects, "PrometheusRule")["parley"]["spec"]
    assert file_rules == operator_rules


def test_dashboards_are_rendered_from_their_code() -> None:
    for name, text in dashboards.render_all().items():
        assert (dashboards.OUT / name).read_text() == text, (
            f"{name} differs from tools/parley_deploy/dashboards.py: run python -m parley_deploy.dashboards"
        )


def test_the_overview_dashboard_shows_what_sres_watch() -> None:
    board = json.loads((dashboards.OUT / "parley-overview.json").read_text())
    panels = {p["title"]: p for p in board["panels"] if p["type"] != "row"}
    wanted = {
        "Inbound events per channel": "parley_channel_gateway_inbound_events_total",
        "Webhook latency": "parley_http_request_duration_seconds_bucket",
        "End-to-end time to visibility": "parley_conversations_time_to_visibility_seconds_bucket",
        "Consumer lag (pending messages)": "parley_consumer_pending_messages",
        "Ack pending": "parley_consumer_ack_pending_messages",
        "Outbound sends by provider and status": "parley_channel_gateway_outbound_sends_total",
        "Dead letters": "parley_events_processed_total",
    }
    for title, metric in wanted.items():
        assert title in panels, title
        assert any(metric in t["expr"] for t in panels[title]["targets"]), title
    assert "sum by (channel_type)" in panels["Inbound events per channel"]["targets"][0]["expr"]
    assert "sum by (provider, status)" in panels["Outbound sends by provider and status"]["targets"][0]["expr"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_the_red_dashboard_is_per_service() -> None:
    board = json.loads((dashboards.OUT / "parley-service-red.json").read_text())
    assert "service" in {v["name"] for v in board["templating"]["list"]}
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert all('service="$service"' in e for e in exprs if "parley_" in e)
    for metric in ("parley_rpc_requests_total", "parley_rpc_duration_seconds_bucket", "parley_http_requests_total"):
        assert any(metric in e for e in exprs), metric


# ---- the extractor itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (route) (rate(a_total{route=~"/webhooks/(meta|tg)",x="by (y)"}[5m]))', {"a_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))", {"h_bucket"}),
        ("a > 1 and on (service) deriv(b[15m]) > 0 unless ignoring(pod) c offset 5m", {"a", "b", "c"}),
        ("x * on(namespace, pod) group_left(node) (max by (namespace, pod) (y) * 0 + 1)", {"x", "y"}),
        ("max_over_time(rate(z_total[5m])[1h:1m])", {"z_total"}),
        ("sum without (instance) (m) / bool 2", {"m"}),
        ("label_values(parley_service_serving, namespace)", {"parley_service_serving"}),
        ("vector(1) + scalar(time())", set()),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert telemetry.metric_names(expr) == names


def test_histogram_series_map_to_their_histogram(registry: dict[str, telemetry.Metric]) -> None:
    assert telemetry.base_name("parley_rpc_duration_seconds_bucket", registry) == "parley_rpc_duration_seconds"
    assert telemetry.base_name("parley_rpc_duration_seconds_count", registry) == "parley_rpc_duration_seconds"
    assert telemetry.base_name("parley_outbox_relayed_total", registry) == "parley_outbox_relayed_total"


def test_a_scrape_is_compared_by_metric_family() -> None:
    reg = CollectorRegistry()
    Counter("demo_sends_total", "d", ["provider"], registry=reg)
    Histogram("demo_seconds", "d", registry=reg)
    Gauge("demo_pending", "d", ["consumer"], registry=reg)
    scraped = telemetry.scraped_names(generate_latest(reg).decode())
    for name in ("demo_sends_total", "demo_seconds", "demo_pending"):
        assert telemetry.exported_family(name, scraped), name
    assert not telemetry.exported_family("demo_missing_total", scraped)
