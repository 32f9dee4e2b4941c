"""The platform booted once for the cross-service tests: `make run`'s launcher on free ports (real nats-server,
PostgreSQL and every service process), the gateway pointed at a local fake Graph API, and every process writing
its finished spans to one JSON-lines file (PARLEY_TRACE_FILE)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from parley_e2e import FakeGraph, Platform


@pytest.fixture(scope="session")
def fake_graph() -> Iterator[FakeGraph]:
    # With PARLEY_E2E_ATTACH, the running platform was started with this fake's fixed port.
    with FakeGraph(port=int(os.environ.get("PARLEY_E2E_GRAPH_PORT", "0"))) as graph:
        yield graph


@pytest.fixture(scope="session")
def platform(parley_tmp: Path, fake_graph: FakeGraph) -> Iterator[Platform]:
    attach = os.environ.get("PARLEY_E2E_ATTACH")  # a platform already running (faster iterations)
    if attach:
        yield Platform.attach(Path(attach))
        return
    # parley_tmp, not pytest's tmp_path: pytest keeps that 0700, and PostgreSQL runs as another user.
    data = parley_tmp / "platform"
    env = {**fake_graph.env(), "PARLEY_TRACE_FILE": str(data / "spans.jsonl")}
    booted = Platform.start(data, env=env)
    try:
        yield booted
    finally:
        code = booted.stop()
    assert code == 0, booted.launcher_log()
    assert "Parley stopped." in booted.launcher_log()
