"""How `make run` starts the contacts service (after workspace, before conversations)."""

from __future__ import annotations

from parley_kit.local.spec import PORTS, LocalService

LOCAL = LocalService(
    name="contacts",
    package="parley_contacts",
    grpc_port=PORTS["contacts"][0],
    metrics_port=PORTS["contacts"][1],
    order=20,
)
