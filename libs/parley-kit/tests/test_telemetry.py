"""PARLEY_TRACE_FILE: every process of a platform appends its finished spans to one JSON-lines file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from parley_kit import telemetry

CHILD = """
import sys
from opentelemetry.trace import SpanKind
from parley_kit import telemetry
telemetry.configure_tracing(sys.argv[1])
tracer = telemetry.tracer("t")
carrier = {}
with tracer.start_as_current_span("parent", context=telemetry.extract({"traceparent": sys.argv[2]})):
    for i in range(50):
        with tracer.start_as_current_span(f"publish {i}", kind=SpanKind.PRODUCER, attributes={"n": i}):
            pass
"""


def test_spans_of_several_processes_land_in_one_file_as_whole_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    env = {**os.environ, "PARLEY_TRACE_FILE": str(path)}
    env.pop("OTEL_SDK_DISABLED", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, name, traceparent], env=env)
        for name in ("conversations", "contacts")
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2 * 51
    assert {r["service"] for r in records} == {"conversations", "contacts"}
    assert {r["trace_id"] for r in records} == {trace_id}
    by_id = {r["span_id"]: r for r in records}
    for record in records:
        if record["name"] == "parent":
            assert record["parent_id"] == "00f067aa0ba902b7"  # the remote parent from the traceparent
            assert record["kind"] == "INTERNAL"
        else:
            parent = by_id[record["parent_id"]]
            assert parent["name"] == "parent" and parent["pid"] == record["pid"]
            assert record["kind"] == "PRODUCER" and record["name"] == f"publish {record['attributes']['n']}"
            assert record["start"] <= record["end"]


def test_the_file_exporter_writes_a_root_span_with_a_null_parent(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "workspace"}))
    provider.add_span_processor(SimpleSpanProcessor(telemetry.SpanFileExporter(str(path))))
    with provider.get_tracer("t").start_as_current_span("GET /x", kind=SpanKind.SERVER):
        pass
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["parent_id"] is None
    assert (record["name"], record["kind"], record["service"], record["status"]) == (
        "GET /x",
        "SERVER",
        "workspace",
        "UNSET",
    )
