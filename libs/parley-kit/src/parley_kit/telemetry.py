"""OpenTelemetry tracing, configured only from the standard OTEL_* variables.

Tracing exports over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
variable) is set and `OTEL_SDK_DISABLED` is not true; otherwise spans are still created
(so trace ids reach logs and NATS headers) but not exported. W3C trace context is
propagated through `inject()` / `extract()` on plain header mappings: HTTP headers, gRPC
metadata and NATS headers alike.

For tests only, `PARLEY_TRACE_FILE=<path>` also appends every finished span to `<path>` as one JSON
line (`SpanFileExporter`), synchronously, so a test can read the spans of every process of a
running platform from one file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

_configured = False


def configure_tracing(service_name: str, extra_processor: SpanProcessor | None = None) -> None:
    """Install the global tracer provider once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp" if endpoint else "none")
    if exporter_name == "otlp" and endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace_file = os.environ.get("PARLEY_TRACE_FILE")
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(SpanFileExporter(trace_file)))
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    trace.set_tracer_provider(provider)


class SpanFileExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line, for tests (PARLEY_TRACE_FILE).

    Each line is written with one `write()` on a file opened with O_APPEND, so the processes of a
    platform (and the forked workers of one) can share the file without interleaving. A line holds
    `trace_id`, `span_id`, `parent_id` (hex, null for a root), `name`, `kind` (SERVER, CLIENT,
    PRODUCER, CONSUMER, INTERNAL), `service` (the resource's service.name), `pid`, `start`/`end`
    (ns since the epoch), `status` (UNSET, OK, ERROR) and `attributes`.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span), separators=(",", ":"), default=str) + "\n" for span in spans)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def span_record(span: ReadableSpan) -> dict[str, object]:
    """The JSON-able summary of a finished span that SpanFileExporter writes."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "trace_id": f"{ctx.trace_id:032x}" if ctx else "",
        "span_id": f"{ctx.span_id:016x}" if ctx else "",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": str(span.resource.attributes.get("service.name", "")),
        "pid": os.getpid(),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(carrier: MutableMapping[str, str], context: Context | None = None) -> MutableMapping[str, str]:
    """Write `traceparent`/`tracestate` of the current (or given) context into `carrier`."""
    propagate.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> Context:
    """The trace context carried by `carrier` (a new root context if none)."""
    return propagate.extract(dict(carrier or {}))
