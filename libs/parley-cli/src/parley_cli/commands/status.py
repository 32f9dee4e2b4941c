"""`parley status`: ask every service's health endpoint."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley_kit.local.spec import LocalService

from parley_cli.common import address, emit, json_option


def installed_services() -> list[LocalService]:
    """Every service installed in this environment, in start order."""
    found = [ep.load() for ep in entry_points(group="parley.services")]
    return sorted(found, key=lambda s: (s.order, s.name))


async def check(service: str, timeout: float) -> str:
    try:
        async with grpc.aio.insecure_channel(address(service)) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        return (
            "UNREACHABLE"
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            else (exc.code().name)
        )


async def statuses(timeout: float) -> list[dict[str, str]]:
    services = installed_services()
    results = await asyncio.gather(*(check(s.name, timeout) for s in services))
    return [
        {"service": s.name, "address": address(s.name), "status": r} for s, r in zip(services, results, strict=True)
    ]


@click.command()
@click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait for each service.")
@json_option
def status(timeout: float, as_json: bool) -> None:
    """Health of every service (exit 1 unless all are SERVING)."""
    rows = asyncio.run(statuses(timeout))
    emit(rows, as_json, ["service", "address", "status"])
    if any(r["status"] != "SERVING" for r in rows):
        raise SystemExit(1)
