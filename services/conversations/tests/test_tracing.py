"""The conversations part of the inbound-to-provider trace (docs/telemetry.md): one `process` span per
inbound event, child of its producer span; the contacts call, `store message` and the events it causes
descend from it; and the time-to-visibility histogram."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley_kit import telemetry
from parley_kit.contracts import channel_gateway as cg
from parley_kit.nats.publisher import Publisher
from prometheus_client import REGISTRY


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    telemetry.configure_tracing("conversations-tests")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "tracing is disabled (OTEL_SDK_DISABLED?)"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="module")
async def service(make_settings, fake_contacts, exporter, helpers) -> AsyncIterator:
    """This module's service calls the contacts test double (to see the trace context it propagates)."""
    async with helpers.serve(make_settings(contacts_addr=fake_contacts[1])) as running_app:
        yield running_app


def _by_id(spans):
    return {s.context.span_id: s for s in spans}


def _ancestors(span, index):
    out = []
    while span.parent is not None and span.parent.span_id in index:
        span = index[span.parent.span_id]
        out.append(span)
    return out


async def test_each_inbound_event_is_processed_in_its_own_span_under_its_producer(
    service, stub_for, helpers, exporter, fake_contacts
) -> None:
    app, _ = service
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    before = (
        REGISTRY.get_sample_value(
            "parley_conversations_time_to_visibility_seconds_count", {"channel_type": "messenger"}
        )
        or 0
    )
    tracer = trace.get_tracer("test")
    publisher = Publisher(app.rt.js, "channel-gateway")
    events = [helpers.inbound(sp, f"ch-{sp}", f"c{i}", f"{sp}-{i}") for i in range(3)]
    webhook_spans = {}
    for ev in events:
        with tracer.start_as_current_span("POST /webhooks/meta", kind=SpanKind.SERVER) as span:
            webhook_spans[ev.event_id] = span.get_span_context()
            await publisher.publish(
                cg.inbound_subject(ev.space_id, ev.channel_id, ev.contact_external_id), ev, msg_id=ev.event_id
            )
    stub = stub_for(sp)

    async def three():
        r = await stub.ListConversations(pb.ListConversationsRequest())
        return r.conversations if len(r.conversations) == 3 else None

    await helpers.wait_for(three)

    ours = {c.trace_id for c in webhook_spans.values()}

    def relayed():
        return [
            s
            for s in exporter.get_finished_spans()
            if s.name == "publish conversations.message.received" and s.context.trace_id in ours
        ]

    await helpers.wait_for(lambda: len(relayed()) >= 3)
    spans = exporter.get_finished_spans()
    index = _by_id(spans)
    for ev in events:
        trace_id = webhook_spans[ev.event_id].trace_id
        mine = [s for s in spans if s.context.trace_id == trace_id]
        (produce,) = [s for s in mine if s.name.startswith("publish channel_gateway.inbound.")]
        (process,) = [s for s in mine if s.name.startswith("process channel_gateway.inbound.")]
        assert process.kind == SpanKind.CONSUMER and process.parent.span_id == produce.context.span_id
        assert process.attributes["messaging.consumer.group.name"].startswith("conversations--inbound-")
        (store,) = [s for s in mine if s.name == "store message"]
        assert process in _ancestors(store, index)
        assert store.attributes["parley.conversation.opened"] is True and store.attributes["parley.message_id"]
        (received,) = [s for s in mine if s.name == "publish conversations.message.received"]
        assert process in _ancestors(received, index)
    # each contacts call (one per batch of identities) carried the context of a gRPC client span opened
    # under the process span of an event of its batch
    process_ids = {s.context.span_id for s in spans if s.name.startswith("process channel_gateway.inbound.")}
    client_ids = {
        f"{s.context.span_id:016x}"
        for s in spans
        if s.kind == SpanKind.CLIENT and s.parent is not None and s.parent.span_id in process_ids
    }
    calls = fake_contacts[0].traceparents
    assert calls and all(tp.split("-")[2] in client_ids for tp in calls)
    after = REGISTRY.get_sample_value(
        "parley_conversations_time_to_visibility_seconds_count", {"channel_type": "messenger"}
    )
    assert after - before == 3


async def test_a_known_contacts_interaction_is_reported_at_most_once_a_minute(
    service, stub_for, helpers, fake_contacts
) -> None:
    app, _ = service
    fake, _ = fake_contacts
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    stub = stub_for(sp)

    async def messages(n: int):
        r = await stub.ListConversations(pb.ListConversationsRequest())
        return r.conversations if r.conversations and r.conversations[0].metrics.incoming_messages == n else None

    for i in range(3):  # three separate batches from one contact within a minute
        await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, f"ch-{sp}", "known", f"{sp}-k{i}")])
        await helpers.wait_for(lambda i=i: messages(i + 1))
    calls = [c for c in fake.calls if c.space_id == sp]
    assert len(calls) == 1 and calls[0].external_id == "known"
