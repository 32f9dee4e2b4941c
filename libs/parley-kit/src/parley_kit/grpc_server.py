"""`grpc.aio` server bootstrap: interceptors, health, reflection.

One interceptor wraps every handler and, in order: opens a server span (trace context
from the metadata), authenticates the bearer token (except for public methods), runs the
handler with the caller in a context variable, maps domain errors to status codes (and a
database deadlock or serialization failure to ABORTED, never INTERNAL), and records RED
metrics. Health says SERVING only when the runtime says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from parley_kit import errors, metrics, telemetry
from parley_kit.auth import Caller, TokenVerifier, reset_current_caller, set_current_caller

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

# Methods that never need a token: health, reflection, and whatever a service declares public.
ALWAYS_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# UTF-8 bytes of a status message. It travels percent-encoded in a trailer, and a client refuses trailers
# over 8 KiB by default: a message quoting a long input would turn INVALID_ARGUMENT into RESOURCE_EXHAUSTED.
MAX_DETAILS_BYTES = 1024


def details(message: str) -> str:
    """`message` cut to MAX_DETAILS_BYTES (on a character boundary), so the status reaches the caller."""
    raw = message.encode()
    if len(raw) <= MAX_DETAILS_BYTES:
        return message
    return raw[: MAX_DETAILS_BYTES - 3].decode(errors="ignore") + "..."


def status_for(exc: errors.DomainError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]  # type: ignore[index]
    return grpc.StatusCode.UNKNOWN


def _status(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """What the caller of `method` sees for `exc`: a domain error's status and message; ABORTED for a database
    deadlock or serialization failure (logged as a warning); INTERNAL for anything else (logged with its
    traceback, its message withheld)."""
    error = exc if isinstance(exc, errors.DomainError) else errors.database_conflict(exc)
    if error is None:
        log.exception("unhandled error in %s", method)
        return grpc.StatusCode.INTERNAL, "internal error; the failure was logged"
    if error is not exc:
        log.warning("%s aborted: %s", method, exc)
    return status_for(error), details(error.message)


class Authenticator(Protocol):
    """Turns a bearer token into a Caller, or raises errors.Unauthenticated."""

    async def authenticate(self, token: str) -> Caller: ...


class JwtAuthenticator:
    """Verifies Parley JWTs with the configured public keys."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, token: str) -> Caller:
        return self._verifier.verify(token)


def bearer_token(metadata: Iterable[tuple[str, Any]]) -> str:
    for key, value in metadata:
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise errors.Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return token.strip()
    raise errors.Unauthenticated("missing 'authorization: Bearer <token>' metadata")


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Tracing, authentication, error mapping and RED metrics around every handler."""

    def __init__(self, service: str, authenticator: Authenticator | None, public_methods: Iterable[str] = ()) -> None:
        self._service = service
        self._auth = authenticator
        self._public = frozenset(public_methods)
        self._tracer = trace.get_tracer("parley.grpc")

    def _is_public(self, method: str) -> bool:
        return method in self._public or method.startswith(ALWAYS_PUBLIC_PREFIXES)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if method.startswith(ALWAYS_PUBLIC_PREFIXES):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _enter(self, method: str, context: grpc.aio.ServicerContext) -> Any:
        metadata = context.invocation_metadata() or ()
        if self._is_public(method) or self._auth is None:
            return None
        caller = await self._auth.authenticate(bearer_token(metadata))
        return set_current_caller(caller)

    def _wrap_unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            parent = telemetry.extract(dict(context.invocation_metadata() or ()))
            with self._tracer.start_as_current_span(method.lstrip("/"), context=parent, kind=SpanKind.SERVER) as span:
                span.set_attribute("rpc.system", "grpc")
                span.set_attribute("rpc.method", method)
                token = None
                try:
                    token = await self._enter(method, context)
                    return await behavior(request, context)
                except (grpc.aio.AbortError, grpc.RpcError):
                    code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                    raise
                except Exception as exc:
                    code, message = _status(exc, method)
                    span.set_status(Status(StatusCode.ERROR, message))
                    await context.abort(code, message)
                finally:
                    if token is not None:
                        reset_current_caller(token)
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    self._observe(method, code, start)

        return wrapper

    def _wrap_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            token = None
            try:
                token = await self._enter(method, context)
                async for item in behavior(request, context):
                    yield item
            except Exception as exc:
                code, message = _status(exc, method)
                await context.abort(code, message)
            finally:
                if token is not None:
                    reset_current_caller(token)
                self._observe(method, code, start)

        return wrapper

    def _observe(self, method: str, code: grpc.StatusCode, start: float) -> None:
        name = method.rsplit("/", 1)[-1]
        metrics.RPC_REQUESTS.labels(self._service, name, code.name).inc()
        metrics.RPC_DURATION.labels(self._service, name).observe(time.perf_counter() - start)


LIVENESS = "liveness"
"""Health service name that answers SERVING while the process's event loop runs (the liveness probe's)."""


class GrpcServer:
    """A grpc.aio server with the Parley interceptor, health service and reflection.

    Health: "" and every registered service name are readiness (`set_serving`, tied to the dependencies by
    the runtime); `LIVENESS` is SERVING from start to stop, answered by the event loop itself, so it fails
    only when the loop is stuck or gone, the one case a restart mends.
    """

    def __init__(
        self,
        service: str,
        *,
        authenticator: Authenticator | None,
        public_methods: Iterable[str] = (),
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.service = service
        self.server = grpc.aio.server(
            interceptors=[ServiceInterceptor(service, authenticator, public_methods)],
            options=[("grpc.max_receive_message_length", 8 * 1024 * 1024), *options],
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self.port = 0

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        """Register a servicer, e.g. add(add_ContactsServiceServicer_to_server, api, 'parley.contacts.v1....')."""
        register(servicer, self.server)
        self._service_names.append(full_name)

    async def start(self, host: str, port: int) -> int:
        reflection.enable_server_reflection([*self._service_names, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.set_serving(False)
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Readiness: "" and the registered services (never LIVENESS)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._service_names[1:]]:
            await self.health.set(name, status)
        metrics.SERVICE_UP.labels(self.service).set(1 if serving else 0)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING for readiness (liveness stays SERVING while in-flight work finishes), then stop."""
        await self.set_serving(False)
        await self.server.stop(grace)
