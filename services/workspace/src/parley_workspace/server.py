"""Wiring: settings -> runtime with the workspace's servicers, authenticator and outbox."""

from __future__ import annotations

import json
from typing import Any

from parley_kit.auth import SigningKey
from parley_kit.runtime import ServiceRuntime, verifier_from_settings

from parley_workspace.config import Settings
from parley_workspace.events import stream_spec, write_event
from parley_workspace.grpc_api import PUBLIC_METHODS, LocalAuthenticator, servicers
from parley_workspace.models import outbox
from parley_workspace.repository import Store
from parley_workspace.security import PasswordHasher
from parley_workspace.service import Config, WorkspaceService


def _verification_jwks(settings: Settings) -> dict[str, Any]:
    if settings.auth_jwks_file is not None and settings.auth_jwks_file.exists():
        return dict(json.loads(settings.auth_jwks_file.read_text()))
    if settings.auth_jwks:
        return dict(json.loads(settings.auth_jwks))
    return {"keys": []}


def domain_config(settings: Settings) -> Config:
    return Config(
        access_ttl=settings.access_token_ttl_seconds,
        refresh_ttl=settings.refresh_token_ttl_seconds,
        invite_ttl=settings.invite_ttl_seconds,
        lockout_threshold=settings.login_lockout_threshold,
        lockout_base_seconds=settings.login_lockout_base_seconds,
        lockout_max_seconds=settings.login_lockout_max_seconds,
        operator_secret=settings.workspace_operator_secret,
    )


async def build(settings: Settings) -> ServiceRuntime:
    """A connected runtime serving every workspace gRPC service."""
    key = SigningKey.from_pem(settings.signing_key_id, settings.signing_key_pem())
    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    authenticator = LocalAuthenticator(verifier_from_settings(settings))
    rt = ServiceRuntime(
        settings,
        streams=[stream_spec(settings.stream_replicas)],
        public_methods=PUBLIC_METHODS,
        authenticator=authenticator,
        outbox=outbox,
    )
    await rt.connect()
    service = WorkspaceService(
        Store(rt.sessions, write_event),
        signing_key=key,
        hasher=hasher,
        config=domain_config(settings),
        verification_jwks=_verification_jwks(settings),
    )
    authenticator.bind(service)
    for register, servicer, name in servicers(service):
        rt.add_servicer(register, servicer, name)
    return rt


async def serve(settings: Settings) -> None:
    await (await build(settings)).run()
