"""The inbound-to-provider trace of docs/telemetry.md, as data, and a checker for captured spans.

    from parley_deploy import traces
    spans = traces.from_otel(in_memory_exporter.get_finished_spans())    # or from_json_lines(console output)
    spans = traces.from_span_file(path.read_text())                      # PARLEY_TRACE_FILE of running processes
    traces.assert_edges(spans, traces.INBOUND_TO_PROVIDER)               # raises AssertionError

An edge says which span must be the parent (direct) or an ancestor of which, all in one trace. The
end-to-end test of the running platform (tests/integration/test_trace.py) has every process append its
spans to one file (the kit's PARLEY_TRACE_FILE) and checks INBOUND_TO_PROVIDER and AGENT_REPLY_TO_PROVIDER.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SpanRecord:
    name: str
    kind: str  # SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL
    trace_id: str
    span_id: str
    parent_id: str | None
    service: str = ""


@dataclass(frozen=True)
class Step:
    key: str
    name: str  # regex on the span name
    kind: str


@dataclass(frozen=True)
class Edge:
    child: str
    parent: str
    direct: bool  # parent_id == parent's span id; otherwise the parent is any ancestor


STEPS = {
    s.key: s
    for s in (
        Step("webhook", r"POST /webhooks/.+", "SERVER"),
        Step("publish_inbound", r"publish channel_gateway\.inbound(\.[a-z0-9_]+)*", "PRODUCER"),
        Step("process_inbound", r"process channel_gateway\.inbound(\.[a-z0-9_]+)*", "CONSUMER"),
        Step("upsert_contact_call", r"parley\.contacts\.v1\.ContactsService/UpsertByIdentities", "CLIENT"),
        Step("upsert_contact", r"parley\.contacts\.v1\.ContactsService/UpsertByIdentities", "SERVER"),
        Step("store_message", r"store message", "INTERNAL"),
        Step("publish_outbound", r"publish channel_gateway\.outbound\.requested", "PRODUCER"),
        Step("process_outbound", r"process channel_gateway\.outbound\.requested", "CONSUMER"),
        Step("provider_call", r"send (messenger|instagram|whatsapp|telegram|custom)", "CLIENT"),
        Step("publish_status", r"publish channel_gateway\.outbound\.status", "PRODUCER"),
        Step("send_message_rpc", r"parley\.conversations\.v1\.ConversationsService/SendMessage", "SERVER"),
    )
}

# Webhook -> JetStream -> stored message -> outbound send -> provider call (docs/telemetry.md).
INBOUND_TO_PROVIDER = (
    Edge("publish_inbound", "webhook", direct=True),
    Edge("process_inbound", "publish_inbound", direct=True),
    Edge("upsert_contact_call", "process_inbound", direct=True),
    Edge("upsert_contact", "upsert_contact_call", direct=True),
    Edge("store_message", "process_inbound", direct=True),
    Edge("publish_outbound", "process_inbound", direct=False),
    Edge("process_outbound", "publish_outbound", direct=True),
    Edge("provider_call", "process_outbound", direct=True),
    Edge("publish_status", "process_outbound", direct=False),
)

# An agent's reply starts its own trace at its RPC and follows the same path from the outbound publish.
AGENT_REPLY_TO_PROVIDER = (
    Edge("publish_outbound", "send_message_rpc", direct=False),
    Edge("process_outbound", "publish_outbound", direct=True),
    Edge("provider_call", "process_outbound", direct=True),
    Edge("publish_status", "process_outbound", direct=False),
)


def from_otel(spans: Iterable[object]) -> list[SpanRecord]:
    """Records from OpenTelemetry SDK ReadableSpans (e.g. InMemorySpanExporter)."""
    out = []
    for span in spans:
        ctx = span.context  # type: ignore[attr-defined]
        parent = span.parent  # type: ignore[attr-defined]
        resource = getattr(span, "resource", None)
        out.append(
            SpanRecord(
                name=span.name,  # type: ignore[attr-defined]
                kind=span.kind.name,  # type: ignore[attr-defined]
                trace_id=f"{ctx.trace_id:032x}",
                span_id=f"{ctx.span_id:016x}",
                parent_id=f"{parent.span_id:016x}" if parent is not None else None,
                service=str(resource.attributes.get("service.name", "")) if resource is not None else "",
            )
        )
    return out


def from_json_lines(text: str) -> list[SpanRecord]:
    """Records from ConsoleSpanExporter output (`span.to_json()` objects, one after another)."""
    decoder = json.JSONDecoder()
    out: list[SpanRecord] = []
    pos = 0
    while True:
        match = re.compile(r"\S").search(text, pos)
        if not match:
            return out
        obj, pos = decoder.raw_decode(text, match.start())
        parent = obj.get("parent_id")
        out.append(
            SpanRecord(
                name=obj["name"],
                kind=str(obj["kind"]).removeprefix("SpanKind."),
                trace_id=obj["context"]["trace_id"].removeprefix("0x"),
                span_id=obj["context"]["span_id"].removeprefix("0x"),
                parent_id=parent.removeprefix("0x") if parent else None,
                service=obj.get("resource", {}).get("attributes", {}).get("service.name", ""),
            )
        )


def from_span_file(text: str) -> list[SpanRecord]:
    """Records from the kit's PARLEY_TRACE_FILE (`telemetry.SpanFileExporter`: one JSON object per line)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        out.append(
            SpanRecord(
                name=obj["name"],
                kind=obj["kind"],
                trace_id=obj["trace_id"],
                span_id=obj["span_id"],
                parent_id=obj["parent_id"],
                service=obj.get("service", ""),
            )
        )
    return out


def _matches(span: SpanRecord, step: Step) -> bool:
    return span.kind == step.kind and re.fullmatch(step.name, span.name) is not None


def assert_edges(spans: Sequence[SpanRecord], edges: Sequence[Edge] = INBOUND_TO_PROVIDER) -> dict[str, SpanRecord]:
    """Find one span per step, all in one trace, with the given parent/ancestor edges; return them.
    The trace is the one of the first span matching the first edge's parent step."""
    by_id = {s.span_id: s for s in spans}
    root_step = STEPS[edges[0].parent]
    roots = [s for s in spans if _matches(s, root_step)]
    assert roots, f"no span {root_step.name!r} ({root_step.kind}) among {sorted({s.name for s in spans})}"
    trace_id = roots[0].trace_id
    in_trace = [s for s in spans if s.trace_id == trace_id]

    def ancestors(span: SpanRecord) -> Iterable[SpanRecord]:
        seen = set()
        while span.parent_id and span.parent_id in by_id and span.parent_id not in seen:
            seen.add(span.parent_id)
            span = by_id[span.parent_id]
            yield span

    found: dict[str, SpanRecord] = {edges[0].parent: roots[0]}
    for edge in edges:
        parent = found.get(edge.parent)
        assert parent is not None, f"step {edge.parent} must come before {edge.child} in the edge list"
        step = STEPS[edge.child]
        candidates = [s for s in in_trace if _matches(s, step)]
        assert candidates, (
            f"trace {trace_id} has no span {step.name!r} ({step.kind}); it has "
            f"{sorted((s.name, s.kind) for s in in_trace)}"
        )
        if edge.direct:
            linked = [s for s in candidates if s.parent_id == parent.span_id]
        else:
            linked = [s for s in candidates if any(a.span_id == parent.span_id for a in ancestors(s))]
        assert linked, (
            f"{step.name!r} is not a {'child' if edge.direct else 'descendant'} of {parent.name!r} "
            f"(span {parent.span_id}); its parents: {[s.parent_id for s in candidates]}"
        )
        found[edge.child] = linked[0]
    return found
