"""gRPC client factory: deadlines, retries on UNAVAILABLE, bearer token, trace context.

Retries are gRPC's own (a service config retry policy), so they apply per attempt with
exponential backoff and never retry a call whose deadline has passed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from parley_kit import telemetry


def _service_config(max_attempts: int) -> str:
    """gRPC requires 2 to 5 attempts in a retry policy; 1 means no retry policy at all."""
    if max_attempts < 2:
        return json.dumps({"methodConfig": [{"name": [{}]}]})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": min(max_attempts, 5),
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


class _ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Adds `authorization` and `traceparent` metadata and a default deadline."""

    def __init__(self, token: Callable[[], str] | None, timeout: float) -> None:
        self._token = token
        self._timeout = timeout

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
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


def create_channel(
    target: str,
    *,
    token: str | Callable[[], str] | None = None,
    timeout: float = 10.0,
    max_attempts: int = 4,
) -> grpc.aio.Channel:
    """An insecure (in-cluster, mTLS by the mesh) channel to `target` ("host:port")."""
    token_fn = (lambda: token) if isinstance(token, str) else token
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.service_config", _service_config(max_attempts)), ("grpc.enable_retries", 1)],
        interceptors=[_ClientInterceptor(token_fn, timeout)],
    )
