"""The trace checker the end-to-end test uses, on spans made the way the services make them: one
tracer provider per process, W3C context carried in plain header dicts (HTTP, NATS, gRPC metadata,
outbox row) with the kit's inject/extract."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from parley_deploy import traces
from parley_kit import telemetry

ROOT = Path(__file__).resolve().parents[2]


def process(name: str, exporter: InMemorySpanExporter, console: io.StringIO) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=console)))
    return provider


def simulate(exporter: InMemorySpanExporter, console: io.StringIO, *, break_nats_hop: bool = False) -> None:
    gateway = process("channel-gateway", exporter, console).get_tracer("t")
    conversations = process("conversations", exporter, console).get_tracer("t")
    contacts = process("contacts", exporter, console).get_tracer("t")
    worker = process("channel-gateway", exporter, console).get_tracer("t")

    nats_headers: dict[str, str] = {}
    with (
        gateway.start_as_current_span("POST /webhooks/meta", kind=SpanKind.SERVER),
        gateway.start_as_current_span("publish channel_gateway.inbound.07", kind=SpanKind.PRODUCER),
    ):
        telemetry.inject(nats_headers)
    if break_nats_hop:
        nats_headers = {}
    outbox_row: dict[str, str] = {}
    with conversations.start_as_current_span(
        "process channel_gateway.inbound.07", context=telemetry.extract(nats_headers), kind=SpanKind.CONSUMER
    ):
        metadata: dict[str, str] = {}
        with conversations.start_as_current_span(
            "parley.contacts.v1.ContactsService/UpsertByIdentities", kind=SpanKind.CLIENT
        ):
            telemetry.inject(metadata)
        with contacts.start_as_current_span(
            "parley.contacts.v1.ContactsService/UpsertByIdentities",
            context=telemetry.extract(metadata),
            kind=SpanKind.SERVER,
        ):
            pass
        with conversations.start_as_current_span("store message"):
            telemetry.inject(outbox_row)  # enqueue() stores the current traceparent with the row
    token = otel_context.attach(otel_context.Context())  # the relay runs later, in no request's context
    try:
        outbound_headers: dict[str, str] = {}
        with conversations.start_as_current_span(
            "publish channel_gateway.outbound.requested", context=telemetry.extract(outbox_row), kind=SpanKind.PRODUCER
        ):
            telemetry.inject(outbound_headers)
        with worker.start_as_current_span(
            "process channel_gateway.outbound.requested",
            context=telemetry.extract(outbound_headers),
            kind=SpanKind.CONSUMER,
        ):
            with worker.start_as_current_span("send whatsapp", kind=SpanKind.CLIENT):
                pass
            with worker.start_as_current_span("publish channel_gateway.outbound.status", kind=SpanKind.PRODUCER):
                pass
    finally:
        otel_context.detach(token)


def test_a_trace_from_webhook_to_provider_call_passes_the_checker() -> None:
    exporter, console = InMemorySpanExporter(), io.StringIO()
    simulate(exporter, console)
    found = traces.assert_edges(traces.from_otel(exporter.get_finished_spans()))
    assert found["provider_call"].trace_id == found["webhook"].trace_id
    assert found["upsert_contact"].service == "contacts"
    # the same spans read back from ConsoleSpanExporter output (the file exporter of a real process)
    traces.assert_edges(traces.from_json_lines(console.getvalue()))


def test_a_lost_nats_hop_fails_the_checker() -> None:
    exporter, console = InMemorySpanExporter(), io.StringIO()
    simulate(exporter, console, break_nats_hop=True)
    with pytest.raises(AssertionError, match="process channel_gateway"):
        traces.assert_edges(traces.from_otel(exporter.get_finished_spans()))


def test_every_step_of_the_checked_trace_is_documented() -> None:
    doc = (ROOT / "docs" / "telemetry.md").read_text()
    rows = re.findall(r"^\| (\d+s?) \| `([^`]+)`.*?\| (SERVER|CLIENT|PRODUCER|CONSUMER|INTERNAL) \|", doc, re.M)
    documented = {(name, kind) for _, name, kind in rows}
    for step in traces.STEPS.values():
        assert any(
            re.fullmatch(step.name, name.replace("{provider}", "whatsapp").replace("<NN>", "07")) and kind == step.kind
            for name, kind in documented
        ), f"{step.key} is not in docs/telemetry.md's trace table"
