"""The server interceptor: authentication, error mapping, caller context, health and RED metrics; the client's
span and the server's as its child."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from parley_kit import errors, metrics
from parley_kit.auth import SigningKey, TokenIssuer, TokenVerifier, current_caller, jwks
from parley_kit.grpc_client import create_channel
from parley_kit.grpc_server import GrpcServer, JwtAuthenticator, status_for
from parley_kit.permissions import Permission
from parley_kit.telemetry import configure_tracing

# A tiny service built from generic handlers, reusing health messages as payloads:
# the request's `service` field carries the space the caller wants to touch.
Req, Resp = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
ATTEMPTS: Counter[str] = Counter()


async def touch(request: Req, context: grpc.aio.ServicerContext) -> Resp:
    caller = current_caller()
    ATTEMPTS[request.service] += 1
    if request.service == "boom":
        raise RuntimeError("unexpected")
    if request.service == "missing":
        raise errors.NotFound("contact c1 not found")
    if request.service.startswith("deadlock") and ATTEMPTS[request.service] == 1:
        raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")  # as the inbound fast path sees it
    if request.service.startswith("long:"):
        raise errors.InvalidArgument(f"id '{request.service}' is not a valid id")
    caller.require(Permission.CONTACTS_DELETE, space_id=request.service)
    return Resp(status=Resp.SERVING)


async def whoami_public(request: Req, context: grpc.aio.ServicerContext) -> Resp:
    return Resp(status=Resp.SERVICE_UNKNOWN)


def _handlers() -> grpc.GenericRpcHandler:
    def h(fn: Callable[..., object]) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=Req.FromString, response_serializer=Resp.SerializeToString
        )

    return grpc.method_handlers_generic_handler("test.Spaces", {"Touch": h(touch), "Public": h(whoami_public)})


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("k")


@pytest.fixture(scope="module")
async def target(key: SigningKey) -> AsyncIterator[str]:
    server = GrpcServer(
        "testsvc",
        authenticator=JwtAuthenticator(TokenVerifier.from_jwks(jwks(key))),
        public_methods={"/test.Spaces/Public"},
    )
    server.server.add_generic_rpc_handlers((_handlers(),))
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    yield f"127.0.0.1:{port}"
    await server.stop(1)


async def call(
    target: str, service: str, token: str | None, method: str = "Touch", retry_aborted: tuple[str, ...] = ()
) -> Resp:
    async with create_channel(target, token=token, timeout=5, retry_aborted=retry_aborted) as channel:
        rpc = channel.unary_unary(
            f"/test.Spaces/{method}", request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString
        )
        return await rpc(Req(service=service))


async def code_of(target: str, service: str, token: str | None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(target, service, token)
    return info.value.code(), info.value.details() or ""


async def test_manager_token_for_its_space_is_served(target: str, key: SigningKey) -> None:
    token = TokenIssuer(key).issue(space_id="A", role="manager")
    assert (await call(target, "A", token)).status == Resp.SERVING


async def test_missing_token_is_unauthenticated(target: str) -> None:
    code, details = await code_of(target, "A", None)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization" in details


async def test_expired_and_foreign_tokens_are_unauthenticated(target: str, key: SigningKey) -> None:
    expired = TokenIssuer(key).issue(space_id="A", role="owner", ttl=-30)
    assert (await code_of(target, "A", expired))[0] == grpc.StatusCode.UNAUTHENTICATED
    forged = TokenIssuer(SigningKey.generate("k")).issue(space_id="A", role="owner")
    assert (await code_of(target, "A", forged))[0] == grpc.StatusCode.UNAUTHENTICATED
    header, payload, _ = expired.split(".")
    assert (await code_of(target, "A", f"{header}.{payload}.AAAA"))[0] == grpc.StatusCode.UNAUTHENTICATED


async def test_other_space_and_low_role_are_permission_denied(target: str, key: SigningKey) -> None:
    manager_a = TokenIssuer(key).issue(space_id="A", role="manager")
    code, details = await code_of(target, "B", manager_a)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "space" in details
    agent_a = TokenIssuer(key).issue(space_id="A", role="agent")
    code, details = await code_of(target, "A", agent_a)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "contacts.delete" in details


async def test_domain_errors_map_to_status_and_crashes_to_internal(target: str, key: SigningKey) -> None:
    token = TokenIssuer(key).issue(space_id="A", role="owner")
    assert await code_of(target, "missing", token) == (grpc.StatusCode.NOT_FOUND, "contact c1 not found")
    code, details = await code_of(target, "boom", token)
    assert code == grpc.StatusCode.INTERNAL and "unexpected" not in details


async def test_a_database_deadlock_is_aborted_and_retried_only_for_the_methods_named(
    target: str, key: SigningKey
) -> None:
    token = TokenIssuer(key).issue(space_id="deadlock-1", role="owner")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(target, "deadlock-1", token)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "deadlocked with a concurrent change" in (info.value.details() or "") and "retry" in info.value.details()
    assert ATTEMPTS["deadlock-1"] == 1
    token = TokenIssuer(key).issue(space_id="deadlock-2", role="owner")
    assert (await call(target, "deadlock-2", token, retry_aborted=("test.Spaces/Touch",))).status == Resp.SERVING
    assert ATTEMPTS["deadlock-2"] == 2


def test_every_domain_error_has_its_own_status_code() -> None:
    classes = errors.DomainError.__subclasses__()
    codes = {status_for(cls("x")) for cls in classes}
    assert len(codes) == len(classes) and grpc.StatusCode.UNKNOWN not in codes
    assert status_for(errors.Internal("x")) == grpc.StatusCode.INTERNAL


async def test_a_message_quoting_a_long_input_is_cut_and_keeps_its_status(target: str, key: SigningKey) -> None:
    token = TokenIssuer(key).issue(space_id="A", role="owner")
    code, details = await code_of(target, "long:" + "é" * 50_000, token)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("id 'long:éé") and details.endswith("...") and len(details.encode()) <= 1024


async def test_public_method_needs_no_token_and_rpcs_are_counted(target: str) -> None:
    before = metrics.RPC_REQUESTS.labels("testsvc", "Public", "OK")._value.get()
    assert (await call(target, "", None, method="Public")).status == Resp.SERVICE_UNKNOWN
    assert metrics.RPC_REQUESTS.labels("testsvc", "Public", "OK")._value.get() == before + 1


async def test_health_reports_serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_client_without_retries_still_calls(target: str, key: SigningKey) -> None:
    token = TokenIssuer(key).issue(space_id="A", role="manager")
    async with create_channel(target, token=token, timeout=5, max_attempts=1) as channel:
        rpc = channel.unary_unary(
            "/test.Spaces/Touch", request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString
        )
        assert (await rpc(Req(service="A"))).status == Resp.SERVING


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    configure_tracing("parley-kit-tests")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "tracing is disabled (OTEL_SDK_DISABLED?)"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_a_client_call_opens_a_client_span_that_parents_the_server_span(
    target: str, key: SigningKey, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    token = TokenIssuer(key).issue(space_id="A", role="owner")
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        await call(target, "A", token)
        assert (await code_of(target, "missing", token))[0] == grpc.StatusCode.NOT_FOUND
    spans = exporter.get_finished_spans()
    clients = [s for s in spans if s.kind == SpanKind.CLIENT]
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert [s.name for s in clients] == ["test.Spaces/Touch"] * 2
    assert [s.name for s in servers] == ["test.Spaces/Touch"] * 2
    for client, server in zip(clients, servers, strict=True):
        assert client.parent is not None and client.parent.span_id == caller.get_span_context().span_id
        assert server.parent is not None and server.parent.span_id == client.context.span_id
        assert server.context.trace_id == caller.get_span_context().trace_id
        assert client.attributes["rpc.service"] == "test.Spaces"
        assert client.attributes["rpc.method"] == "Touch"
        assert client.attributes["server.address"] == "127.0.0.1"
    assert [c.attributes["rpc.grpc.status_code"] for c in clients] == [0, grpc.StatusCode.NOT_FOUND.value[0]]
    assert clients[0].status.status_code == StatusCode.UNSET
    assert clients[1].status.status_code == StatusCode.ERROR
    assert clients[1].attributes["error.type"] == "NOT_FOUND"
