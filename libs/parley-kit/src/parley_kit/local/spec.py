"""How a service declares itself to the local launcher (`make run`).

Each service package exposes a `LocalService` through the entry point group
`parley.services`, e.g. in its pyproject.toml:

    [project.entry-points."parley.services"]
    contacts = "parley_contacts.local:LOCAL"
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LocalProcess:
    """One process of a service: `python -m <package> <command>`, with extra environment."""

    command: str = "serve"
    env: dict[str, str] = field(default_factory=dict)
    # A port the process listens on besides gRPC (e.g. the gateway's HTTP), printed at start.
    http_port: int | None = None


@dataclass(frozen=True)
class LocalService:
    """A service as `make run` starts it."""

    name: str  # "contacts": also its database name and the PARLEY_<NAME>_ADDR variable
    package: str  # "parley_contacts"
    grpc_port: int  # its fixed local port (others reach it at 127.0.0.1:<port>)
    metrics_port: int
    processes: tuple[LocalProcess, ...] = (LocalProcess(),)
    # Start order: lower first (workspace before those that call it).
    order: int = 50
    # Environment for migrate and every process of the service.
    env: dict[str, str] = field(default_factory=dict)
    # Variables the launcher fills with a random key made once per installation (kept in .parley/secrets.json);
    # each value is a url-safe base64 32-byte key, which is also a valid Fernet key.
    secrets: tuple[str, ...] = ()


# Local port plan, one place for every service (gRPC, metrics).
PORTS = {
    "workspace": (50051, 9101),
    "contacts": (50052, 9102),
    "conversations": (50053, 9103),
    "channel-gateway": (50054, 9104),
    "automation": (50055, 9105),
    "broadcast": (50056, 9106),
}
GATEWAY_HTTP_PORT = 8080


def addr_env_name(service: str) -> str:
    """PARLEY_CONTACTS_ADDR, PARLEY_CHANNEL_GATEWAY_ADDR, ..."""
    return f"PARLEY_{service.upper().replace('-', '_')}_ADDR"
