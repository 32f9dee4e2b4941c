"""How `make run` starts the conversations service."""

from parley_kit.local.spec import PORTS, LocalService

LOCAL = LocalService(
    name="conversations",
    package="parley_conversations",
    grpc_port=PORTS["conversations"][0],
    metrics_port=PORTS["conversations"][1],
    order=30,
)
