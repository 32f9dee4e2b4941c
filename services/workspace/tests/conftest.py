"""Fixtures: a migrated workspace database, the domain service on it, and the gRPC service."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from parley.workspace.v1 import (
    api_key_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    availability_service_pb2_grpc,
    organization_service_pb2_grpc,
    resources_pb2,
    space_service_pb2_grpc,
    team_service_pb2_grpc,
    user_service_pb2_grpc,
)
from parley_kit.auth import SigningKey, TokenVerifier, jwks
from parley_kit.db import create_engine, run_migrations, session_factory
from parley_kit.grpc_client import create_channel
from parley_kit.runtime import ServiceRuntime
from parley_kit.testing.service import running
from parley_workspace.config import Settings
from parley_workspace.repository import Store
from parley_workspace.security import PasswordHasher
from parley_workspace.server import build
from parley_workspace.service import Config, WorkspaceService

# Cheap argon2 parameters keep the suite fast; production uses the defaults of Settings.
FAST_ARGON2 = {"time_cost": 1, "memory_kib": 64, "parallelism": 1}
PASSWORD = "correct horse battery staple"
OPERATOR_SECRET = "operator-secret-for-tests"

STUBS = {
    "auth": auth_service_pb2_grpc.AuthServiceStub,
    "orgs": organization_service_pb2_grpc.OrganizationServiceStub,
    "spaces": space_service_pb2_grpc.SpaceServiceStub,
    "users": user_service_pb2_grpc.UserServiceStub,
    "teams": team_service_pb2_grpc.TeamServiceStub,
    "keys": api_key_service_pb2_grpc.ApiKeyServiceStub,
    "availability": availability_service_pb2_grpc.AvailabilityServiceStub,
}
ROLE = {
    "agent": resources_pb2.SPACE_ROLE_AGENT,
    "manager": resources_pb2.SPACE_ROLE_MANAGER,
    "owner": resources_pb2.SPACE_ROLE_OWNER,
}


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def migrated(database_url: str) -> str:
    await run_migrations("parley_workspace", database_url)
    return database_url


def make_service(engine: Any, key: SigningKey, writer: Any = None, **config: Any) -> WorkspaceService:
    defaults: dict[str, Any] = {
        "operator_secret": OPERATOR_SECRET,
        "lockout_threshold": 3,
        "lockout_base_seconds": 1,
        "lockout_max_seconds": 8,
    }
    return WorkspaceService(
        Store(session_factory(engine), writer),
        signing_key=key,
        hasher=PasswordHasher(**FAST_ARGON2),
        config=Config(**{**defaults, **config}),
        verification_jwks=jwks(key),
    )


@dataclass
class Workspace:
    """A running workspace gRPC service and a client for it."""

    target: str
    runtime: ServiceRuntime
    key: SigningKey
    engine: Any

    def stub(self, name: str, token: str | None = None) -> Any:
        channel = create_channel(self.target, token=token, timeout=10, max_attempts=2)
        return STUBS[name](channel)

    async def call(self, name: str, method: str, request: Any, token: str | None = None) -> Any:
        async with create_channel(self.target, token=token, timeout=10, max_attempts=2) as channel:
            return await getattr(STUBS[name](channel), method)(request)

    async def error(self, name: str, method: str, request: Any, token: str | None = None) -> tuple[Any, str]:
        """The status code and message of a call that must fail."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.call(name, method, request, token)
        return info.value.code(), info.value.details() or ""

    async def bootstrap(self, **overrides: Any) -> auth_service_pb2.BootstrapResponse:
        request = auth_service_pb2.BootstrapRequest(
            operator_secret=OPERATOR_SECRET,
            organization_name=unique("Org"),
            space_name="Support",
            email=unique_email("owner"),
            password=PASSWORD,
            force=True,
        )
        for k, v in overrides.items():
            setattr(request, k, v)
        return await self.call("auth", "Bootstrap", request)

    def verify(self, token: str) -> Any:
        return TokenVerifier.from_jwks(jwks(self.key)).verify(token)


def settings_for(database_url: str, nats_url: str, key: SigningKey, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "service_name": "workspace",
        "database_url": database_url,
        "nats_url": nats_url,
        "grpc_port": 0,
        "metrics_port": 0,
        "auth_jwks": json.dumps(jwks(key)),
        "signing_key": key.private_pem(),
        "signing_key_id": key.kid,
        "workspace_operator_secret": OPERATOR_SECRET,
        "login_lockout_threshold": 3,
        "login_lockout_base_seconds": 1,
        "login_lockout_max_seconds": 8,
        "argon2_time_cost": FAST_ARGON2["time_cost"],
        "argon2_memory_kib": FAST_ARGON2["memory_kib"],
        "argon2_parallelism": FAST_ARGON2["parallelism"],
        "shutdown_grace_seconds": 1,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
async def workspace(migrated: str, nats_url: str, signing_key: SigningKey) -> AsyncIterator[Workspace]:
    """The real workspace process wiring (runtime, NATS, outbox relay) in the test's event loop."""
    runtime = await build(settings_for(migrated, nats_url, signing_key))
    async with running(runtime) as target:
        yield Workspace(target, runtime, signing_key, runtime.engine)


Factory = Callable[..., Any]


class Recorder:
    """Collects the events the domain emits (the outbox writer's place in these domain-level tests)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def __call__(self, session: Any, event: Any) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
async def domain(migrated: str, signing_key: SigningKey) -> AsyncIterator[tuple[WorkspaceService, Recorder]]:
    engine = create_engine(migrated)
    recorder = Recorder()
    yield make_service(engine, signing_key, recorder), recorder
    await engine.dispose()
