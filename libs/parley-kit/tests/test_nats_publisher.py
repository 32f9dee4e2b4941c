"""Publisher: de-duplication by Nats-Msg-Id, and one trace from the producer into the consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from parley.channel_gateway.v1.events_pb2 import TextPart
from parley_kit.nats import (
    ConsumerRunner,
    ConsumerSpec,
    Delivery,
    Publisher,
    RawEvent,
    StreamSpec,
    dead_letter_stream,
    dead_letter_subject,
    provision,
)
from parley_kit.nats import headers as h
from parley_kit.telemetry import configure_tracing
from prometheus_client import REGISTRY


@pytest.fixture(scope="module")
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.drain()


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """Finished spans of this process, recorded by the global tracer provider."""
    configure_tracing("parley-kit-tests")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "tracing is disabled (OTEL_SDK_DISABLED?)"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter


@pytest.fixture
async def stream(js: JetStreamContext, unique_name: str) -> StreamSpec:
    service = f"pub{unique_name.lower()}"
    spec = StreamSpec(name=service.upper(), subjects=(f"{service}.>",), max_age=timedelta(hours=1))
    await provision(js, [spec], [])
    return spec


def _published(service: str, outcome: str) -> float:
    labels = {"service": service, "event_type": TextPart.DESCRIPTOR.full_name, "outcome": outcome}
    return REGISTRY.get_sample_value("parley_events_published_total", labels) or 0


def _one(spans: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    [span] = [s for s in spans.get_finished_spans() if s.kind == kind]
    return span


async def test_repeated_msg_id_is_stored_once_and_reported_duplicate(js: JetStreamContext, stream: StreamSpec) -> None:
    service = stream.name.lower()
    publisher = Publisher(js, service)
    subject = f"{service}.contact.created"

    first = await publisher.publish(subject, TextPart(text="hi"), msg_id="contact-1:created")
    again = await publisher.publish(subject, TextPart(text="hi"), msg_id="contact-1:created")

    assert (first.duplicate, again.duplicate) == (None, True)
    assert again.seq == first.seq
    assert (await js.stream_info(stream.name)).state.messages == 1
    assert (_published(service, "ok"), _published(service, "duplicate")) == (1, 1)


async def test_published_message_carries_msg_id_event_type_and_the_producer_span_as_traceparent(
    js: JetStreamContext, stream: StreamSpec, spans: InMemorySpanExporter
) -> None:
    service = stream.name.lower()
    subject = f"{service}.contact.created"
    with trace.get_tracer("test").start_as_current_span("request") as request:
        await Publisher(js, service).publish(subject, TextPart(text="hi"), msg_id="m-1", headers={"X-Space": "s1"})

    stored = await js.get_last_msg(stream.name, subject)
    assert stored.headers is not None
    producer = _one(spans, SpanKind.PRODUCER)
    assert producer.parent is not None and producer.parent.span_id == request.get_span_context().span_id
    _, trace_id, span_id, _ = stored.headers[h.TRACEPARENT].split("-")
    assert (trace_id, span_id) == (f"{producer.context.trace_id:032x}", f"{producer.context.span_id:016x}")
    assert stored.headers[h.MSG_ID] == "m-1"
    assert stored.headers[h.EVENT_TYPE] == "parley.channel_gateway.v1.TextPart"
    assert stored.headers["X-Space"] == "s1"


async def test_consumer_span_is_a_child_of_the_producer_span(
    js: JetStreamContext, stream: StreamSpec, spans: InMemorySpanExporter
) -> None:
    service = stream.name.lower()
    durable = f"{service}--trace"
    consumer = ConsumerSpec(
        stream=stream.name,
        durable=durable,
        filter_subjects=(f"{service}.>",),
        ack_wait=timedelta(seconds=5),
        max_deliver=3,
        backoff=(),
        max_ack_pending=10,
        dead_letter_subject=dead_letter_subject(service, durable),
    )
    await provision(js, [dead_letter_stream(service)], [consumer])
    handled: asyncio.Future[trace.SpanContext] = asyncio.get_running_loop().create_future()

    async def handler(delivery: Delivery) -> None:
        handled.set_result(trace.get_current_span().get_span_context())

    runner = ConsumerRunner(js, consumer, handler, service=service, message_type=TextPart, fetch_timeout=0.5)
    await runner.start()
    try:
        await Publisher(js, service).publish(f"{service}.contact.created", TextPart(text="hi"), msg_id="m-1")
        current_in_handler = await asyncio.wait_for(handled, 5)
    finally:
        await runner.stop()

    producer, consumed = _one(spans, SpanKind.PRODUCER), _one(spans, SpanKind.CONSUMER)
    assert consumed.parent is not None and consumed.parent.span_id == producer.context.span_id
    assert consumed.context.trace_id == producer.context.trace_id
    assert current_in_handler.span_id == consumed.context.span_id


async def test_publish_without_a_stream_fails_and_is_counted_as_error(js: JetStreamContext, unique_name: str) -> None:
    service = f"nostream{unique_name.lower()}"
    with pytest.raises(NoStreamResponseError):
        await Publisher(js, service).publish(f"{service}.x.y", TextPart(text="lost?"), msg_id="m-1")
    assert _published(service, "error") == 1


async def test_publish_many_stores_a_batch_in_order_with_one_producer_span_per_event(
    js: JetStreamContext, stream: StreamSpec, spans: InMemorySpanExporter
) -> None:
    service = stream.name.lower()
    event_type = TextPart.DESCRIPTOR.full_name
    with trace.get_tracer("test").start_as_current_span("request") as request:
        parent = trace.set_span_in_context(request)
    events = [
        RawEvent(f"{service}.e.{n % 7}", TextPart(text=str(n)).SerializeToString(), f"m-{n}", event_type, None, parent)
        for n in range(600)
    ]

    results = await Publisher(js, service).publish_many(events)

    assert [r.seq for r in results] == list(range(1, 601))  # type: ignore[union-attr]
    stored = [(await js.get_msg(stream.name, seq)).headers[h.MSG_ID] for seq in range(1, 601)]  # type: ignore[index]
    assert stored == [f"m-{n}" for n in range(600)]
    producers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert len(producers) == 600
    assert {s.parent.span_id for s in producers if s.parent} == {request.get_span_context().span_id}
    last = await js.get_msg(stream.name, 600)
    assert last.headers is not None
    assert last.headers[h.TRACEPARENT].split("-")[2] == f"{producers[-1].context.span_id:016x}"
    assert _published(service, "ok") == 600


async def test_publish_many_reports_each_event_s_own_outcome(js: JetStreamContext, unique_name: str) -> None:
    service = f"many{unique_name.lower()}"
    await provision(
        js, [StreamSpec(name=service.upper(), subjects=(f"{service}.>",), max_age=None, max_msg_size=400)], []
    )
    event_type = TextPart.DESCRIPTOR.full_name
    publisher = Publisher(js, service)
    await publisher.publish(f"{service}.x", TextPart(text="first"), msg_id="m-0")
    events = [
        RawEvent(f"{service}.x", TextPart(text="first").SerializeToString(), "m-0", event_type),  # a repeat
        RawEvent(f"{service}.x", TextPart(text="too big" * 100).SerializeToString(), "m-1", event_type),
        RawEvent(f"{service}.x", TextPart(text="fits").SerializeToString(), "m-2", event_type),
        RawEvent(f"other{service}.x", TextPart(text="no stream").SerializeToString(), "m-3", event_type),
    ]

    duplicate, refused, ok, unrouted = await publisher.publish_many(events)

    assert duplicate.duplicate is True  # type: ignore[union-attr]
    assert isinstance(refused, APIError)
    assert ok.seq == 2 and not ok.duplicate  # type: ignore[union-attr]
    assert isinstance(unrouted, NoStreamResponseError)
    assert (_published(service, "ok"), _published(service, "duplicate"), _published(service, "error")) == (2, 1, 2)
