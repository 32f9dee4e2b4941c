"""gRPC client factory: deadlines, retries on UNAVAILABLE, bearer token, trace context.

Retries are gRPC's own (a service config retry policy), so they apply per attempt with
exponential backoff and never retry a call whose deadline has passed. ABORTED (a concurrent
change won, e.g. a database deadlock) is retried only for the methods a caller names: a server
may have committed part of a multi-transaction call before it aborted, and only the caller knows
which calls are safe to repeat.

Every unary call runs in a CLIENT span named after the full method without its leading slash
(`parley.contacts.v1.ContactsService/UpsertByIdentity`, as the server's span), whose
`traceparent` goes out in the metadata: the server's span is its child.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from parley_kit import telemetry

_tracer = telemetry.tracer("parley.grpc.client")


def _service_config(max_attempts: int, retry_aborted: Iterable[str] = ()) -> str:
    """gRPC requires 2 to 5 attempts in a retry policy; 1 means no retry policy at all."""
    if max_attempts < 2:
        return json.dumps({"methodConfig": [{"name": [{}]}]})

    def policy(codes: list[str]) -> dict[str, Any]:
        return {
            "maxAttempts": min(max_attempts, 5),
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": codes,
        }

    configs: list[dict[str, Any]] = [{"name": [{}], "retryPolicy": policy(["UNAVAILABLE"])}]
    names = [dict(zip(("service", "method"), m.lstrip("/").split("/", 1), strict=True)) for m in retry_aborted]
    if names:
        configs.append({"name": names, "retryPolicy": policy(["UNAVAILABLE", "ABORTED"])})
    return json.dumps({"methodConfig": configs})


class _ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Adds `authorization` and `traceparent` metadata and a default deadline."""

    def __init__(self, token: Callable[[], str] | None, timeout: float, target: str = "") -> None:
        self._token = token
        self._timeout = timeout
        self._server_address = target.rsplit(":", 1)[0] if ":" in target else target

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ())))
        if self._token is not None and "authorization" not in metadata:
            token = self._token()
            if token:
                metadata.add("authorization", f"Bearer {token}")
        carrier: dict[str, str] = {}
        telemetry.inject(carrier)
        for key, value in carrier.items():
            metadata.add(key, value)
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else self._timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        method = client_call_details.method
        method = (method.decode() if isinstance(method, bytes) else str(method)).lstrip("/")
        service, _, name = method.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        if self._server_address:
            attributes["server.address"] = self._server_address
        with _tracer.start_as_current_span(method, kind=SpanKind.CLIENT, attributes=attributes) as span:
            call = await continuation(self._details(client_call_details), request)  # traceparent: this span
            code = grpc.StatusCode.OK
            try:
                await call
            except grpc.aio.AioRpcError as exc:  # the caller gets it when it awaits the call
                code = exc.code()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
                span.set_attribute("error.type", code.name)
            return call

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


def create_channel(
    target: str,
    *,
    token: str | Callable[[], str] | None = None,
    timeout: float = 10.0,
    max_attempts: int = 4,
    retry_aborted: Iterable[str] = (),
) -> grpc.aio.Channel:
    """An insecure (in-cluster, mTLS by the mesh) channel to `target` ("host:port").

    Every call is retried on UNAVAILABLE; the methods named in `retry_aborted` ("pkg.Service/Method") also on
    ABORTED. Name only methods that are safe to call again once one of their transactions was rolled back: a
    method that commits once (an aborted call changed nothing) or that is idempotent. Not, for example, a bulk
    import that commits row by row.
    """
    token_fn = (lambda: token) if isinstance(token, str) else token
    config = _service_config(max_attempts, retry_aborted)
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.service_config", config), ("grpc.enable_retries", 1)],
        interceptors=[_ClientInterceptor(token_fn, timeout, target)],
    )
