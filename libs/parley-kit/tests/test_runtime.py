"""The service runtime: SERVING only once ready, liveness apart from readiness, and a graceful stop finishes
in-flight work."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.common.v1 import common_pb2
from parley_kit.auth import SigningKey, jwks
from parley_kit.grpc_server import LIVENESS
from parley_kit.local.servers import NatsServer
from parley_kit.nats.consumer import Delivery
from parley_kit.nats.streams import ConsumerSpec, StreamSpec, dead_letter_subject
from parley_kit.runtime import ServiceRuntime
from parley_kit.settings import ServiceSettings
from parley_kit.testing.service import running


async def health(target: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return reply.status


async def wait_for_health(target: str, status: int, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await health(target) != status:
        assert asyncio.get_running_loop().time() < deadline, f"readiness never became {status}"
        await asyncio.sleep(0.1)


def settings_for(service: str, database_url: str, nats_url: str) -> ServiceSettings:
    return ServiceSettings(
        service_name=service, database_url=database_url, nats_url=nats_url, grpc_host="127.0.0.1",
        grpc_port=0, metrics_port=0, auth_jwks=json.dumps(jwks(SigningKey.generate())), shutdown_grace_seconds=10,
    )  # fmt: skip


async def test_nats_outage_turns_readiness_not_serving_while_liveness_stays_serving(
    database_url: str, nats_server: NatsServer, unique_name: str
) -> None:
    runtime = ServiceRuntime(settings_for(f"live{unique_name.lower()}", database_url, nats_server.url))
    await runtime.connect()
    async with running(runtime) as target:
        assert await health(target) == health_pb2.HealthCheckResponse.SERVING
        assert await health(target, LIVENESS) == health_pb2.HealthCheckResponse.SERVING
        await asyncio.to_thread(nats_server.stop)
        try:
            await wait_for_health(target, health_pb2.HealthCheckResponse.NOT_SERVING)
            assert await health(target, LIVENESS) == health_pb2.HealthCheckResponse.SERVING
        finally:
            await asyncio.to_thread(nats_server.start)
        await wait_for_health(target, health_pb2.HealthCheckResponse.SERVING)
        assert await health(target, LIVENESS) == health_pb2.HealthCheckResponse.SERVING


async def test_stop_mid_message_finishes_and_acks_it(database_url: str, nats_url: str, unique_name: str) -> None:
    service = f"rt{unique_name.lower()}"
    stream = StreamSpec(name=f"RT_{unique_name}", subjects=(f"{service}.>",), max_age=timedelta(hours=1))
    spec = ConsumerSpec(
        stream=stream.name,
        durable=f"{service}--work",
        filter_subjects=(f"{service}.work",),
        ack_wait=timedelta(seconds=5),
        max_deliver=3,
        backoff=(timedelta(seconds=1),),
        max_ack_pending=10,
        dead_letter_subject=dead_letter_subject(service, f"{service}--work"),
    )
    settings = settings_for(service, database_url, nats_url)
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(1.5)
        finished.set()

    runtime = ServiceRuntime(settings, streams=[stream], consumers=[spec])
    await runtime.connect()
    runtime.add_consumer(spec, slow, message_type=common_pb2.EventMeta)
    async with running(runtime) as target:
        assert await health(target) == health_pb2.HealthCheckResponse.SERVING
        nc = await nats.connect(nats_url)
        await nc.jetstream().publish(f"{service}.work", common_pb2.EventMeta(event_id="e1").SerializeToString())
        await asyncio.wait_for(started.wait(), 10)
        runtime.request_stop()  # leaves `running`'s finally to await the shutdown
    assert finished.is_set(), "the in-flight message was dropped instead of finished"
    info = await nc.jetstream().consumer_info(stream.name, spec.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0
    await nc.close()


async def test_closers_run_at_shutdown_in_order_after_the_background_tasks_even_when_one_fails(
    database_url: str, nats_url: str, unique_name: str
) -> None:
    runtime = ServiceRuntime(settings_for(f"close{unique_name.lower()}", database_url, nats_url))
    await runtime.connect()
    seen: list[str] = []

    async def background() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            seen.append("background")

    async def failing() -> None:
        seen.append("first")
        raise RuntimeError("already closed")

    async def second() -> None:
        seen.append("second")

    runtime.add_background(background())
    runtime.add_closer(failing)
    runtime.add_closer(second)
    async with running(runtime):
        await asyncio.sleep(0.1)
        assert seen == []
    assert seen == ["background", "first", "second"]
