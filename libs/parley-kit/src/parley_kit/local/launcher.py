"""`parley-dev run`: the whole platform on one machine (what `make run` calls).

Starts nats-server with JetStream and PostgreSQL (or uses PARLEY_NATS_URL /
PARLEY_POSTGRES_URL), makes the token signing key once, creates one database per service,
runs every service's migrations, starts every installed service, waits until each reports
SERVING, and prints where each listens. Data lives under .parley/ and survives restarts.
Ctrl-C (or SIGTERM) stops the services first, then NATS and PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from parley_kit.auth import SigningKey, TokenIssuer, jwks
from parley_kit.local.servers import NatsServer, PostgresServer, free_port
from parley_kit.local.spec import LocalService, addr_env_name

SYSTEM_TOKEN_TTL = 30 * 24 * 3600


@dataclass
class Running:
    service: LocalService
    command: str
    proc: subprocess.Popen[bytes]


def installed_services() -> list[LocalService]:
    services = [ep.load() for ep in entry_points(group="parley.services")]
    return sorted(services, key=lambda s: (s.order, s.name))


def signing_key(keys_dir: Path) -> tuple[SigningKey, Path, Path]:
    """The local signing key (made once) and the paths of its PEM and JWKS files."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    pem, meta, jwks_file = keys_dir / "signing-key.pem", keys_dir / "signing-key.kid", keys_dir / "jwks.json"
    if pem.exists() and meta.exists():
        key = SigningKey.from_pem(meta.read_text().strip(), pem.read_text())
    else:
        key = SigningKey.generate()
        pem.write_text(key.private_pem())
        pem.chmod(0o600)
        meta.write_text(key.kid)
    jwks_file.write_text(json.dumps(jwks(key)))
    return key, pem, jwks_file


def local_secrets(path: Path, names: set[str]) -> dict[str, str]:
    """Random keys for `names`, made once and kept in `path` so restarts can read old data."""
    import base64
    import secrets as random

    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = names - set(known)
    if missing:
        known.update({n: base64.urlsafe_b64encode(random.token_bytes(32)).decode() for n in missing})
        path.write_text(json.dumps(known, indent=2))
        path.chmod(0o600)
    return {n: known[n] for n in names}


def _database_url(pg: PostgresServer | None, external: str | None, name: str) -> str:
    db = name.replace("-", "_")
    if pg is not None:
        return pg.create_database(db)
    assert external is not None
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(external)
    with psycopg.connect(base.set(drivername="postgresql").render_as_string(False), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            conn.execute(f'CREATE DATABASE "{db}"')
    return base.set(drivername="postgresql+asyncpg", database=db).render_as_string(False)


def wait_serving(address: str, timeout: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parley-dev", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the platform")
    run.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PARLEY_HOME", ".parley")))
    run.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of the fixed local plan (tests use this)"
    )
    run.add_argument("--startup-timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    return launch(args.data_dir.resolve(), free_ports=args.free_ports, startup_timeout=args.startup_timeout)


def launch(data: Path, *, free_ports: bool, startup_timeout: float) -> int:
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o755)
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    nats = pg = None
    running: list[Running] = []
    try:
        nats_url = os.environ.get("PARLEY_NATS_URL")
        if not nats_url:
            port = 0 if free_ports else int(os.environ.get("PARLEY_LOCAL_NATS_PORT", "4222"))
            nats = NatsServer(data / "nats", port=port).start()
            nats_url = nats.url
        external_pg = os.environ.get("PARLEY_POSTGRES_URL")
        if not external_pg:
            port = 0 if free_ports else int(os.environ.get("PARLEY_LOCAL_POSTGRES_PORT", "55432"))
            pg = PostgresServer(data / "postgres", port=port).start()
        key, pem, jwks_file = signing_key(data / "keys")
        system_token = TokenIssuer(key).issue(
            space_id="*", role="system", subject="service:local", ttl=SYSTEM_TOKEN_TTL
        )

        services = installed_services()
        ports = {
            s.name: (free_port() if free_ports else s.grpc_port, free_port() if free_ports else s.metrics_port)
            for s in services
        }
        addresses = {addr_env_name(s.name): f"127.0.0.1:{ports[s.name][0]}" for s in services}
        common = {
            **os.environ,
            **addresses,
            "PARLEY_NATS_URL": nats_url,
            "PARLEY_AUTH_JWKS_FILE": str(jwks_file),
            "PARLEY_SERVICE_TOKEN": system_token,
            "PYTHONUNBUFFERED": "1",
        }
        listing: list[dict[str, str]] = []
        generated = local_secrets(data / "secrets.json", {n for s in services for n in s.secrets})
        for service in services:
            env = {
                **common,
                **service.env,
                **{n: generated[n] for n in service.secrets},
                "PARLEY_SERVICE_NAME": service.name,
                "PARLEY_DATABASE_URL": _database_url(pg, external_pg, service.name),
                "PARLEY_GRPC_PORT": str(ports[service.name][0]),
                "PARLEY_SIGNING_KEY_FILE": str(pem),
                "PARLEY_SIGNING_KEY_ID": key.kid,
            }
            subprocess.run([sys.executable, "-m", service.package, "migrate"], env=env, check=True)
            for index, process in enumerate(service.processes):
                metrics_port = ports[service.name][1] if index == 0 else free_port()
                proc_env = {**env, **process.env, "PARLEY_METRICS_PORT": str(metrics_port)}
                http = ""
                if process.http_port is not None:
                    http_port = free_port() if free_ports else process.http_port
                    proc_env["PARLEY_HTTP_PORT"] = str(http_port)
                    http = f"http://127.0.0.1:{http_port}"
                log = open(data / f"{service.name}-{process.command}.log", "ab")  # noqa: SIM115
                proc = subprocess.Popen(
                    [sys.executable, "-m", service.package, process.command], env=proc_env, stdout=log, stderr=log
                )
                running.append(Running(service, process.command, proc))
                listing.append(
                    {
                        "service": service.name,
                        "process": process.command,
                        "grpc": addresses[addr_env_name(service.name)] if process.command == "serve" else "",
                        "http": http,
                        "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
                    }
                )
            if not wait_serving(addresses[addr_env_name(service.name)], startup_timeout):
                raise RuntimeError(f"{service.name} did not become SERVING; see {data}/{service.name}-*.log")

        (data / "addresses.json").write_text(json.dumps({"nats": nats_url, **addresses, "processes": listing}))
        (data / "env").write_text("".join(f"export {k}={v}\n" for k, v in addresses.items()))
        print(f"Parley is up. NATS {nats_url}; PostgreSQL {pg.url() if pg else external_pg}; data in {data}")
        for row in listing:
            print(f"  {row['service']:<16} {row['process']:<7} grpc {row['grpc'] or '-':<16} "
                  f"{('http ' + row['http']) if row['http'] else '':<28} metrics {row['metrics']}")  # fmt: skip
        print(f"Try: source {data / 'env'} && parley status   (Ctrl-C stops everything)", flush=True)
        while not stopping:
            for r in running:
                if r.proc.poll() is not None:
                    raise RuntimeError(f"{r.service.name} {r.command} exited with {r.proc.returncode}; see logs")
            time.sleep(0.3)
        return 0
    except RuntimeError as exc:
        print(f"parley-dev: {exc}", file=sys.stderr)
        return 1
    finally:
        for r in reversed(running):
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in running:
            try:
                r.proc.wait(30)
            except subprocess.TimeoutExpired:
                r.proc.kill()
        if nats is not None:
            nats.stop()
        if pg is not None:
            pg.stop()
        print("Parley stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
