"""The running platform for cross-service tests and benchmarks: the launcher of `make run` started as a
subprocess on free ports, a fake Graph API recording what the gateway sends, signed Messenger webhooks and
gRPC stubs with a bearer token.

    with FakeGraph() as graph, Platform.start(data_dir, env={...graph.env()}) as platform:
        owner = platform.bootstrap("Acme", "Support", "owner@acme.test")
        channel = owner.connect_messenger(page_id="1001")
        platform.post_webhook("/webhooks/messenger", messenger_message("1001", "42", "m_1", "hi"))

Used by tests/integration/ (pytest has `pythonpath = ["tools"]`) and bench/e2e_bench.py.
"""

from __future__ import annotations

from parley_e2e.graph import FakeGraph, Recorded
from parley_e2e.messenger import messenger_delivery, messenger_message, sign_meta
from parley_e2e.platform import Platform, SpaceClient
from parley_e2e.wait import eventually

__all__ = [
    "FakeGraph",
    "Platform",
    "Recorded",
    "SpaceClient",
    "eventually",
    "messenger_delivery",
    "messenger_message",
    "sign_meta",
]
