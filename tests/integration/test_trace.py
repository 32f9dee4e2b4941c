"""One trace across the running platform (docs/telemetry.md, "The inbound-to-provider trace"): every process
appends its finished spans to one file (PARLEY_TRACE_FILE), and the parent/child chain is checked with
`parley_deploy.traces`.

- Inbound to provider: a signed webhook → JetStream → the conversations consumer → UpsertByIdentities → the stored
  message → `conversations.message.received`, whose headers carry the trace to an automation that replies with
  `SendMessage` (a service token, the event's `traceparent`) → outbox → outbound publish → the gateway worker →
  the provider call → the status event. (The automation service is not built yet; the test plays its part, as
  a consumer of the event would.)
- An agent's reply: its own trace from the SendMessage RPC to the provider call.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import events_pb2 as ev
from parley_deploy import traces
from parley_e2e import FakeGraph, Platform, SpaceClient, eventually, messenger_message

PAGE_ID = str(105_000_000_000_000 + uuid.uuid4().int % 10**12)


@pytest.fixture(scope="module")
def owner(platform: Platform) -> SpaceClient:
    client = platform.bootstrap(f"Trace Co {uuid.uuid4().hex[:6]}", "Support", "tess@trace.example.com", force=True)
    client.connect_messenger(PAGE_ID)
    return client


def _spans(platform: Platform) -> list[traces.SpanRecord]:
    path = platform.data / "spans.jsonl"
    return traces.from_span_file(path.read_text()) if path.exists() else []


async def _message_received(nats_url: str, provider_message_id: str, timeout: float = 20.0) -> tuple[Any, dict]:
    """The `conversations.message.received` event of a provider message, with its NATS headers."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=10)
        sub = await js.pull_subscribe("conversations.message.received", stream="CONVERSATIONS", config=config)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for m in msgs:
                event = ev.MessageReceived.FromString(m.data)
                if event.message.provider_message_id == provider_message_id:
                    return event, dict(m.headers or {})
        raise AssertionError(f"no conversations.message.received for {provider_message_id} in {timeout}s")
    finally:
        await nc.close()


def _chain(platform: Platform, trace_id: str, edges: tuple[traces.Edge, ...]) -> dict[str, traces.SpanRecord]:
    """assert_edges on the spans of one trace, waiting for late spans (outbox relays, the worker)."""
    found: Callable[[], dict[str, traces.SpanRecord]] = lambda: traces.assert_edges(  # noqa: E731
        [s for s in _spans(platform) if s.trace_id == trace_id], edges
    )
    return eventually(found, timeout=20, interval=0.3)


def test_one_trace_runs_from_the_webhook_to_the_provider_call_of_the_reply_it_caused(
    platform: Platform, owner: SpaceClient, fake_graph: FakeGraph
) -> None:
    psid = str(7_300_000_000_000_000 + uuid.uuid4().int % 10**15)
    mid = f"m_trace_{psid}"
    status, _ = platform.post_webhook("/webhooks/messenger", messenger_message(PAGE_ID, psid, mid, "Trace me"))
    assert status == 200

    # The automation's part: the event carries the inbound trace; the reply continues it.
    received, headers = asyncio.run(_message_received(platform.nats_url, mid))
    traceparent = headers["traceparent"]
    trace_id = traceparent.split("-")[1]
    workflow = platform.system_client(owner.space_id)
    reply = workflow.conversations.SendMessage(
        pb.SendMessageRequest(
            space_id=owner.space_id, conversation_id=received.message.conversation_id, text="Automatic reply"
        ),
        metadata=(("traceparent", traceparent),),
    ).message
    fake_graph.wait_for(lambda r: r.json.get("recipient", {}).get("id") == psid)

    found = _chain(platform, trace_id, traces.INBOUND_TO_PROVIDER)
    services = {step: span.service for step, span in found.items()}
    assert services == {
        "webhook": "channel-gateway",
        "publish_inbound": "channel-gateway",
        "process_inbound": "conversations",
        "upsert_contact_call": "conversations",
        "upsert_contact": "contacts",
        "store_message": "conversations",
        "publish_outbound": "conversations",
        "process_outbound": "channel-gateway",
        "provider_call": "channel-gateway",
        "publish_status": "channel-gateway",
    }
    # The reply's RPC sits on the path between the stored message and the outbound publish.
    (rpc,) = [
        s for s in _spans(platform)
        if s.trace_id == trace_id and re_name(s, "SendMessage") and s.kind == "SERVER"
    ]  # fmt: skip
    assert rpc.parent_id is not None
    assert _is_ancestor(platform, rpc.span_id, found["publish_outbound"])
    assert reply.message_id


def test_an_agent_reply_is_one_trace_from_its_rpc_to_the_provider_call(
    platform: Platform, owner: SpaceClient, fake_graph: FakeGraph
) -> None:
    psid = str(7_400_000_000_000_000 + uuid.uuid4().int % 10**15)
    mid = f"m_agent_{psid}"
    assert platform.post_webhook("/webhooks/messenger", messenger_message(PAGE_ID, psid, mid, "Agent?"))[0] == 200
    received, _ = asyncio.run(_message_received(platform.nats_url, mid))
    reply = owner.conversations.SendMessage(
        pb.SendMessageRequest(space_id=owner.space_id, conversation_id=received.message.conversation_id, text="Hi!")
    ).message
    fake_graph.wait_for(lambda r: r.json.get("recipient", {}).get("id") == psid)

    def rpc_trace() -> str:
        # The worker's span names the request (= the reply's message id); its trace is the reply's.
        path = platform.data / "spans.jsonl"
        for line in path.read_text().splitlines():
            if f'"parley.request_id":"{reply.message_id}"' in line:
                return line.split('"trace_id":"', 1)[1].split('"', 1)[0]
        raise AssertionError("the worker has not processed the reply yet")

    trace_id = eventually(rpc_trace)
    found = _chain(platform, trace_id, traces.AGENT_REPLY_TO_PROVIDER)
    assert found["send_message_rpc"].parent_id is None  # the agent's client sent no traceparent: a new trace
    assert found["send_message_rpc"].service == "conversations"
    assert found["provider_call"].service == "channel-gateway"


def re_name(span: traces.SpanRecord, method: str) -> bool:
    return span.name == f"parley.conversations.v1.ConversationsService/{method}"


def _is_ancestor(platform: Platform, ancestor_id: str, span: traces.SpanRecord) -> bool:
    by_id = {s.span_id: s for s in _spans(platform)}
    current: traces.SpanRecord | None = span
    while current is not None and current.parent_id:
        if current.parent_id == ancestor_id:
            return True
        current = by_id.get(current.parent_id)
    return False
