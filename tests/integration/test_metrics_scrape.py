"""Scrape-and-compare: after a message went in, was answered and delivered, every process of the running platform
serves /metrics where addresses.json says, and every metric the Helm chart's dashboards and alert rules use (and
every Parley metric docs/telemetry.md registers) is exported by a running process, with the registered labels."""

from __future__ import annotations

import re
import urllib.request
import uuid
from typing import Any

import pytest
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley_deploy import chart, telemetry
from parley_e2e import FakeGraph, Platform, eventually, messenger_delivery, messenger_message

PAGE_ID = str(106_000_000_000_000 + uuid.uuid4().int % 10**12)
# Labels the scrape itself adds, and the histogram bucket label.
SCRAPE_LABELS = {"le"}


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200, url
        return response.read().decode()


@pytest.fixture(scope="module")
def scrapes(platform: Platform, fake_graph: FakeGraph) -> dict[str, str]:
    """(service process) -> its /metrics text, after one message went in, was answered, sent and delivered, and
    the web process refused a forged webhook and took one for a Page no channel has."""
    owner = platform.bootstrap(f"Metrics Co {uuid.uuid4().hex[:6]}", "Ops", "mo@metrics.example.com", force=True)
    owner.connect_messenger(PAGE_ID)
    psid = str(7_500_000_000_000_000 + uuid.uuid4().int % 10**15)
    assert platform.post_webhook("/webhooks/messenger", messenger_message(PAGE_ID, psid, f"m_{psid}", "hi"))[0] == 200

    def conversation() -> Any:
        found = owner.conversations.ListConversations(pb.ListConversationsRequest()).conversations
        assert len(found) == 1, found
        return found[0]

    conv = eventually(conversation)
    sent = owner.conversations.SendMessage(
        pb.SendMessageRequest(conversation_id=conv.conversation_id, text="hello")
    ).message

    def provider_id() -> str:
        request = pb.ListMessagesRequest(conversation_id=conv.conversation_id)
        (reply,) = [m for m in owner.conversations.ListMessages(request).messages if m.message_id == sent.message_id]
        return reply.provider_message_id

    mid = eventually(provider_id)
    assert platform.post_webhook("/webhooks/messenger", messenger_delivery(PAGE_ID, psid, [mid]))[0] == 200
    # What the web process counts only when it happens: a forged signature, and a Page no channel has.
    forged = messenger_message(PAGE_ID, psid, f"m_forged_{psid}", "forged")
    assert platform.post_webhook("/webhooks/messenger", forged, signature="sha256=" + "0" * 64)[0] == 403
    stranger = messenger_message(str(int(PAGE_ID) + 1), psid, f"m_stranger_{psid}", "to nobody")
    assert platform.post_webhook("/webhooks/messenger", stranger)[0] == 200
    return {f"{p['service']} {p['process']}": _scrape(p["metrics"]) for p in platform.processes}


@pytest.fixture(scope="module")
def registry() -> dict[str, telemetry.Metric]:
    return telemetry.load_registry()


@pytest.fixture(scope="module")
def chart_names(registry: dict[str, telemetry.Metric]) -> set[str]:
    """Metric names in the rendered dashboards, the alert-rule ConfigMap and the PrometheusRule."""
    objects = chart.render() + [
        o for o in chart.render(api_versions=chart.OPERATOR_APIS) if o["kind"] == "PrometheusRule"
    ]
    names = telemetry.chart_metric_names(objects, registry)
    assert len(names) >= 15
    return names


def _exporters(name: str, scrapes: dict[str, str]) -> list[str]:
    return [proc for proc, text in scrapes.items() if telemetry.exported_family(name, telemetry.scraped_names(text))]


def test_every_process_serves_metrics_where_the_launcher_says(platform: Platform, scrapes: dict[str, str]) -> None:
    expected = {f"{p['service']} {p['process']}" for p in platform.processes}
    assert set(scrapes) == expected
    assert {"channel-gateway web", "channel-gateway worker", "conversations serve", "contacts serve"} <= expected
    for proc, text in scrapes.items():
        assert "parley_" in text and "process_cpu_seconds_total" in text, proc


def test_every_metric_in_the_dashboards_and_alert_rules_is_exported_by_a_running_process(
    chart_names: set[str], registry: dict[str, telemetry.Metric], scrapes: dict[str, str]
) -> None:
    external = {name for name in chart_names if name in registry and registry[name].status == "external"}
    missing = sorted(name for name in chart_names - external if not _exporters(name, scrapes))
    assert not missing, f"used by the chart but exported by no running process: {missing}"


def test_every_registered_parley_metric_is_exported_by_the_process_the_registry_names(
    registry: dict[str, telemetry.Metric], scrapes: dict[str, str]
) -> None:
    problems = []
    for name in sorted(telemetry.parley_exported(registry)):
        exporter = registry[name].exporter
        found = _exporters(name, scrapes)
        if not found:
            problems.append(f"{name}: exported by no process")
            continue
        # "channel-gateway (web)", "conversations (inbound consumer)": that service (and process, when named).
        service = exporter.split()[0]
        if service not in ("kit", "prometheus_client"):
            process = re.search(r"\((web|worker|serve)\)", exporter)
            want = f"{service} {process.group(1)}" if process else service
            if not any(p == want or p.startswith(want + " ") for p in found):
                problems.append(f"{name}: registry says {exporter!r}, exported by {found}")
    assert not problems, "\n".join(problems)


def test_required_metrics_have_samples_with_exactly_the_registered_labels(
    registry: dict[str, telemetry.Metric], scrapes: dict[str, str]
) -> None:
    """The metrics the dashboards were built on carry data after the main path, labelled as registered."""
    required = {name: m for name, m in registry.items() if m.status == "required"}
    assert set(required) >= {
        "parley_channel_gateway_inbound_events_total",
        "parley_channel_gateway_outbound_sends_total",
        "parley_channel_gateway_provider_request_duration_seconds",
        "parley_conversations_time_to_visibility_seconds",
    }
    for name, metric in required.items():
        series = name if metric.type != "histogram" else f"{name}_count"
        samples = [
            labels
            for text in scrapes.values()
            for labels in re.findall(rf"^{re.escape(series)}\{{([^}}]*)\}} ", text, re.M)
        ]
        assert samples, f"{name}: no samples after the main path"
        for labels in samples:
            keys = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', labels)) - SCRAPE_LABELS
            assert keys == set(metric.labels), f"{name}: labels {sorted(keys)}, registered {list(metric.labels)}"
    text = "\n".join(scrapes.values())
    assert 'parley_channel_gateway_inbound_events_total{channel_type="messenger",kind="message"}' in text
    assert 'parley_channel_gateway_inbound_events_total{channel_type="messenger",kind="delivery"}' in text
    assert 'parley_channel_gateway_outbound_sends_total{provider="messenger",status="sent"}' in text
    assert 'parley_channel_gateway_provider_request_duration_seconds_count{outcome="ok",provider="messenger"}' in text
    assert 'parley_conversations_time_to_visibility_seconds_count{channel_type="messenger"}' in text
