"""Authenticators that accept both Parley JWTs and API keys.

JWTs ("user:", "service:" tokens) are verified locally with the public keys. API keys
("pk_<id>_<secret>", issued per space by the workspace service) cannot be: only the workspace
knows their hashes and whether they were revoked. `WorkspaceAuthenticator` asks the workspace's
`AuthService/VerifyApiKey` on every request that carries one, with this service's own token, and
keeps no cache, so a revoked key is refused by every service at once.
"""

from __future__ import annotations

import grpc
from parley.workspace.v1 import auth_service_pb2, auth_service_pb2_grpc, resources_pb2

from parley_kit.auth import Caller, TokenVerifier
from parley_kit.errors import Unauthenticated, Unavailable
from parley_kit.grpc_client import create_channel

API_KEY_PREFIX = "pk_"

_ROLES = {
    resources_pb2.SPACE_ROLE_AGENT: "agent",
    resources_pb2.SPACE_ROLE_MANAGER: "manager",
    resources_pb2.SPACE_ROLE_OWNER: "owner",
}


def is_api_key(token: str) -> bool:
    return token.startswith(API_KEY_PREFIX)


class WorkspaceAuthenticator:
    """JWTs locally; API keys through the workspace service at `workspace_target` (no cache)."""

    def __init__(
        self, verifier: TokenVerifier, workspace_target: str, service_token: str, *, timeout: float = 3.0
    ) -> None:
        self._verifier = verifier
        self._target = workspace_target
        self._service_token = service_token
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    async def authenticate(self, token: str) -> Caller:
        if not is_api_key(token):
            return self._verifier.verify(token)
        if self._channel is None:  # created lazily, inside the serving event loop
            self._channel = create_channel(
                self._target, token=self._service_token, timeout=self._timeout, max_attempts=3
            )
        stub = auth_service_pb2_grpc.AuthServiceStub(self._channel)
        try:
            reply = await stub.VerifyApiKey(auth_service_pb2.VerifyApiKeyRequest(api_key=token))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(exc.details() or "API key is invalid or revoked") from exc
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("cannot verify the API key now: the workspace service is unavailable; retry") from exc
            raise Unavailable(
                f"cannot verify the API key: the workspace service answered {exc.code().name} "
                f"({exc.details()}); check this service's PARLEY_SERVICE_TOKEN"
            ) from exc
        role = _ROLES.get(reply.role, "")
        return Caller(
            subject=f"apikey:{reply.api_key_id}", space_id=reply.space_id, role=role, org_id=reply.organization_id
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
