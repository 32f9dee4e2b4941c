"""Traces through the batched ingest: each inbound event continues its producer's trace (its own CONSUMER span,
its contact's UpsertByIdentity call, a `store message` span), and the events it emits carry that trace on."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import events_pb2 as ev
from parley_kit import telemetry
from parley_kit.contracts import channel_gateway as cg
from prometheus_client import REGISTRY

UPSERT = "parley.contacts.v1.ContactsService/UpsertByIdentity"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    telemetry.configure_tracing("conversations-tests")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "tracing is disabled (OTEL_SDK_DISABLED?)"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _visible_count() -> float:
    labels = {"channel_type": "messenger"}
    return REGISTRY.get_sample_value("parley_conversations_time_to_visibility_seconds_count", labels) or 0.0


async def _received_headers(js: Any, space_id: str) -> dict[str, dict[str, str]]:
    """conversations.message.received of `space_id`: provider message id -> NATS headers."""
    sub = await js.pull_subscribe("conversations.message.received", stream="CONVERSATIONS")
    out: dict[str, dict[str, str]] = {}
    try:
        while True:
            try:
                msgs = await sub.fetch(256, timeout=0.3)
            except TimeoutError:
                break
            for m in msgs:
                event = ev.MessageReceived()
                event.ParseFromString(m.data)
                if event.meta.space_id == space_id:
                    out[event.message.provider_message_id] = dict(m.headers or {})
                await m.ack()
    finally:
        await sub.unsubscribe()
    return out


async def test_each_event_of_a_batch_continues_its_own_trace_to_the_stored_message_and_its_events(
    service: Any, stub_for: Any, helpers: Any, exporter: InMemorySpanExporter
) -> None:
    app, _ = service
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    events = [
        helpers.inbound(sp, "ch-t", "psid-1", "mid.t1", text="one"),
        helpers.inbound(sp, "ch-t", "psid-1", "mid.t2", text="two"),
        helpers.inbound(sp, "ch-t", "psid-2", "mid.t3", text="three"),
    ]
    resent = events[0]  # the provider sends mid.t1 again after JetStream's duplicate window: a new stream message
    gateway = trace.get_tracer("gateway")
    producers: list[trace.SpanContext] = []
    acks = []
    visible_before = _visible_count()
    exporter.clear()
    for n, event in enumerate([*events, resent]):
        subject = cg.inbound_subject(event.space_id, event.channel_id, event.contact_external_id)
        with gateway.start_as_current_span(f"publish {subject}", kind=SpanKind.PRODUCER) as producer:
            headers = telemetry.inject({"Nats-Msg-Id": f"{event.event_id}:{n}"})
            producers.append(producer.get_span_context())
        acks.append(await app.rt.js.publish_async(subject, event.SerializeToString(), headers=dict(headers)))
    await asyncio.gather(*acks)

    stub = stub_for(sp)

    async def stored() -> bool:
        conversations = (await stub.ListConversations(pb.ListConversationsRequest())).conversations
        return sum(c.metrics.incoming_messages for c in conversations) == 3

    await helpers.wait_for(stored)

    def finished() -> list[Any]:
        done = exporter.get_finished_spans()
        consumers = [s for s in done if s.kind == SpanKind.CONSUMER and s.name.startswith("process channel_gateway")]
        return done if len([s for s in consumers if s.context.trace_id in {p.trace_id for p in producers}]) == 4 else []

    spans = await helpers.wait_for(finished)
    by_parent: dict[int, list[Any]] = {}
    for span in spans:
        if span.parent is not None:
            by_parent.setdefault(span.parent.span_id, []).append(span)

    stores = {}
    for n, (event, producer) in enumerate(zip([*events, resent], producers, strict=True)):
        (process,) = [s for s in by_parent.get(producer.span_id, []) if s.kind == SpanKind.CONSUMER]
        partition = cg.inbound_partition(event.space_id, event.channel_id, event.contact_external_id)
        assert process.name == f"process channel_gateway.inbound.{partition:02d}"
        assert process.context.trace_id == producer.trace_id
        assert process.attributes["messaging.consumer.group.name"] == f"conversations--inbound-{partition:02d}"
        assert process.attributes["messaging.message.id"] == f"{event.event_id}:{n}"
        (store,) = [s for s in by_parent.get(process.context.span_id, []) if s.name == "store message"]
        assert store.attributes["parley.message.direction"] == "inbound"
        stores[n] = store

    # The first message of each contact opened its conversation; the re-sent one stored nothing.
    assert [stores[n].attributes["parley.conversation.opened"] for n in range(3)] == [True, False, True]
    assert [stores[n].attributes["parley.duplicate"] for n in range(4)] == [False, False, False, True]
    assert "parley.message_id" not in stores[3].attributes

    # Each contact's UpsertByIdentity call is a child of one of its own events' spans (one call per contact per batch).
    process_of = {s.context.span_id: s for s in spans if s.kind == SpanKind.CONSUMER}
    upserts = [s for s in spans if s.name == UPSERT and s.kind == SpanKind.CLIENT and s.context.trace_id in
               {p.trace_id for p in producers}]  # fmt: skip
    assert upserts
    for upsert in upserts:
        assert upsert.parent is not None and upsert.parent.span_id in process_of

    # The events each stored message emitted carry its trace on, from its `store message` span.
    headers = await helpers.wait_for(lambda: _received_if_three(app.rt.js, sp))
    for n, mid in enumerate(["mid.t1", "mid.t2", "mid.t3"]):
        _, trace_id, parent_id, _ = headers[mid]["traceparent"].split("-")
        # The headers name the relay's publish span, whose parent is the context stored with the outbox row.
        assert trace_id == f"{producers[n].trace_id:032x}"
        publish = next(s for s in exporter.get_finished_spans() if f"{s.context.span_id:016x}" == parent_id)
        assert publish.parent is not None and publish.parent.span_id == stores[n].context.span_id

    assert _visible_count() == visible_before + 3  # once per stored message, not for the duplicate


async def _received_if_three(js: Any, space_id: str) -> dict[str, dict[str, str]] | None:
    headers = await _received_headers(js, space_id)
    return headers if len(headers) == 3 else None
