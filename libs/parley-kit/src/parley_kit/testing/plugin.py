"""Pytest plugin: real PostgreSQL and NATS JetStream started by the fixtures themselves.

- `postgres_server` (session): an embedded PostgreSQL on a free port, or the server of
  `PARLEY_TEST_DATABASE_URL` when given.
- `nats_server` (session): a nats-server with JetStream on a free port.
- `database_url` (module): a fresh, empty database for the test module.
- `nats_url`: the NATS URL; `unique_name`: a per-call unique suffix for stream names.
- `signing_key` / `mint_token`: a test Ed25519 key and a token factory for auth.
- `workspace_service` (session): the real workspace service as a process (own database, the test
  signing key), with `.admin` to make spaces, members and teams; for services that check assignees.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from parley_kit.local.servers import NatsServer, PostgresServer

if TYPE_CHECKING:
    from parley_kit.auth import SigningKey
    from parley_kit.testing.processes import WorkspaceProcess


class ExternalPostgres:
    """An already-running server given by PARLEY_TEST_DATABASE_URL (any database on it)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        self._url = make_url(url).set(drivername="postgresql+asyncpg")

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        return self._url.set(database=database, drivername=driver).render_as_string(hide_password=False)

    def create_database(self, name: str, *, exist_ok: bool = True) -> str:
        import psycopg

        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def parley_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="parley-test-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


@pytest.fixture(scope="session")
def postgres_server(parley_tmp: Path) -> Iterator[PostgresServer | ExternalPostgres]:
    external = os.environ.get("PARLEY_TEST_DATABASE_URL")
    if external:
        yield ExternalPostgres(external)
        return
    server = PostgresServer(parley_tmp / "pg", durable=False).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(parley_tmp: Path) -> Iterator[NatsServer]:
    server = NatsServer(parley_tmp / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture(scope="module")
def database_url(postgres_server: PostgresServer | ExternalPostgres, request: pytest.FixtureRequest) -> str:
    """A fresh database for this test module."""
    stem = Path(str(request.node.path)).stem.replace("-", "_")[:40]
    return postgres_server.create_database(f"t_{stem}_{uuid.uuid4().hex[:8]}")


@pytest.fixture
def unique_name() -> str:
    """A short unique token for stream, consumer and subject names."""
    return uuid.uuid4().hex[:10].upper()


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    from parley_kit.auth import SigningKey

    return SigningKey.generate(kid="test-key")


@pytest.fixture(scope="session")
def mint_token(signing_key: SigningKey) -> Callable[..., str]:
    """mint_token(space_id=..., role="agent", subject="user:u1", ttl=300) -> bearer token."""
    from parley_kit.auth import TokenIssuer

    return TokenIssuer(signing_key).issue


@pytest.fixture(scope="session")
def workspace_service(
    postgres_server: PostgresServer | ExternalPostgres, nats_url: str, signing_key: SigningKey, parley_tmp: Path
) -> Iterator[WorkspaceProcess]:
    """The real workspace service (`python -m parley_workspace serve`) for the whole session."""
    from parley_kit.testing.processes import WorkspaceProcess

    database_url = postgres_server.create_database(f"workspace_{uuid.uuid4().hex[:8]}")
    process = WorkspaceProcess(database_url, nats_url, signing_key, parley_tmp / "workspace.log").migrate()
    try:
        yield process.start().bootstrap()
    finally:
        process.stop()
