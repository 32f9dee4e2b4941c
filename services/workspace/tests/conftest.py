"""Fixtures: a migrated workspace database and the domain service on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from parley_kit.auth import SigningKey
from parley_kit.db import create_engine, run_migrations, session_factory
from parley_workspace.repository import Store
from parley_workspace.security import PasswordHasher
from parley_workspace.service import Config, WorkspaceService

# Cheap argon2 parameters keep the suite fast; production uses the defaults of Settings.
FAST_ARGON2 = {"time_cost": 1, "memory_kib": 64, "parallelism": 1}
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
async def migrated(database_url: str) -> str:
    await run_migrations("parley_workspace", database_url)
    return database_url


class Recorder:
    def __init__(self) -> None:
        self.events: list = []

    async def __call__(self, session, event) -> None:  # type: ignore[no-untyped-def]
        self.events.append(event)


@pytest.fixture(scope="module")
async def domain(migrated: str, signing_key: SigningKey) -> AsyncIterator[tuple[WorkspaceService, Recorder]]:
    engine = create_engine(migrated)
    recorder = Recorder()
    service = WorkspaceService(
        Store(session_factory(engine), recorder),
        signing_key=signing_key,
        hasher=PasswordHasher(**FAST_ARGON2),
        config=Config(operator_secret="op-secret", lockout_threshold=3, lockout_base_seconds=1, lockout_max_seconds=8),
    )
    yield service, recorder
    await engine.dispose()
