"""API keys as bearer tokens in every service, through the kit's WorkspaceAuthenticator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2
from parley.workspace.v1 import api_key_service_pb2 as keys
from parley.workspace.v1 import team_service_pb2 as tm
from parley_kit.auth import TokenIssuer, TokenVerifier, current_caller, jwks
from parley_kit.authenticators import WorkspaceAuthenticator
from parley_kit.grpc_client import create_channel
from parley_kit.grpc_server import GrpcServer
from parley_kit.permissions import Permission

from .conftest import ROLE, Workspace

Req, Resp = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse


async def whoami(request: Req, context: grpc.aio.ServicerContext) -> Resp:
    """Another service's RPC: needs contacts.delete in the caller's space; answers with the caller."""
    caller = current_caller()
    caller.require(Permission.CONTACTS_DELETE, space_id=request.service)
    context.set_trailing_metadata((("caller", json.dumps([caller.subject, caller.space_id, caller.role])),))
    return Resp(status=Resp.SERVING)


def _handlers() -> grpc.GenericRpcHandler:
    handler = grpc.unary_unary_rpc_method_handler(
        whoami, request_deserializer=Req.FromString, response_serializer=Resp.SerializeToString
    )
    return grpc.method_handlers_generic_handler("test.Other", {"WhoAmI": handler})


async def _other_service(workspace_target: str, verifier: TokenVerifier, service_token: str) -> tuple[GrpcServer, str]:
    server = GrpcServer(
        "other", authenticator=WorkspaceAuthenticator(verifier, workspace_target, service_token, timeout=2)
    )
    server.server.add_generic_rpc_handlers((_handlers(),))
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def other(workspace: Workspace) -> AsyncIterator[str]:
    """A second service (not the workspace) that accepts API keys through the kit."""
    system = TokenIssuer(workspace.key).issue(space_id="*", role="system", subject="service:other")
    server, target = await _other_service(workspace.target, TokenVerifier.from_jwks(jwks(workspace.key)), system)
    yield target
    await server.stop(1)


async def call_other(target: str, token: str, space_id: str) -> list[str]:
    async with create_channel(target, token=token, timeout=5, max_attempts=2) as channel:
        rpc: Callable[..., grpc.aio.UnaryUnaryCall] = channel.unary_unary(
            "/test.Other/WhoAmI", request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString
        )
        call = rpc(Req(service=space_id))
        await call
        return json.loads(dict(await call.trailing_metadata())["caller"])


async def other_error(target: str, token: str, space_id: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call_other(target, token, space_id)
    return info.value.code(), info.value.details() or ""


async def test_api_key_works_in_another_service_and_stops_at_once_when_revoked(
    workspace: Workspace, other: str
) -> None:
    boot = await workspace.bootstrap()
    owner = boot.tokens.access_token
    created = await workspace.call(
        "keys", "CreateApiKey", keys.CreateApiKeyRequest(name="crm sync", role=ROLE["manager"]), owner
    )
    token = created.token
    assert token.startswith(f"pk_{created.api_key.id}_")
    assert await call_other(other, token, boot.space_id) == [f"apikey:{created.api_key.id}", boot.space_id, "manager"]
    # the key's role and space hold there too
    code, message = await other_error(other, token, "another-space")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # the workspace records its use
    seen = await workspace.call("keys", "GetApiKey", keys.GetApiKeyRequest(api_key_id=created.api_key.id), owner)
    assert seen.api_key.HasField("last_used_at")
    await workspace.call("keys", "RevokeApiKey", keys.RevokeApiKeyRequest(api_key_id=created.api_key.id), owner)
    code, message = await other_error(other, token, boot.space_id)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in message
    # ... and in the workspace itself
    code, _ = await workspace.error("teams", "ListTeams", tm.ListTeamsRequest(), token)
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_forged_and_malformed_api_keys_are_refused(workspace: Workspace, other: str) -> None:
    boot = await workspace.bootstrap()
    created = await workspace.call(
        "keys", "CreateApiKey", keys.CreateApiKeyRequest(name="k", role=ROLE["owner"]), boot.tokens.access_token
    )
    one_char_off = created.token[:-1] + ("B" if created.token[-1] == "A" else "A")
    for forged in [f"pk_{created.api_key.id}_{'A' * 43}", "pk_", "pk_x", f"pk_{'0' * 32}_secret", one_char_off]:
        code, _ = await other_error(other, forged, boot.space_id)
        assert code == grpc.StatusCode.UNAUTHENTICATED, forged


async def test_jwts_still_verify_locally_through_the_kit_authenticator(workspace: Workspace, other: str) -> None:
    boot = await workspace.bootstrap()
    caller = await call_other(other, boot.tokens.access_token, boot.space_id)
    assert caller == [f"user:{boot.user_id}", boot.space_id, "owner"]


async def test_a_service_token_without_the_internal_permission_cannot_verify_keys(workspace: Workspace) -> None:
    boot = await workspace.bootstrap()
    created = await workspace.call(
        "keys", "CreateApiKey", keys.CreateApiKeyRequest(name="k", role=ROLE["owner"]), boot.tokens.access_token
    )
    verifier = TokenVerifier.from_jwks(jwks(workspace.key))
    server, target = await _other_service(
        workspace.target, verifier, boot.tokens.access_token
    )  # an owner, not a service
    try:
        code, message = await other_error(target, created.token, boot.space_id)
        assert code == grpc.StatusCode.UNAVAILABLE and "PARLEY_SERVICE_TOKEN" in message
    finally:
        await server.stop(1)


async def test_api_keys_are_refused_when_the_workspace_is_unreachable(workspace: Workspace) -> None:
    verifier = TokenVerifier.from_jwks(jwks(workspace.key))
    server, target = await _other_service("127.0.0.1:1", verifier, "unused")
    try:
        code, message = await other_error(target, "pk_abc_def", "s1")
        assert code == grpc.StatusCode.UNAVAILABLE and "retry" in message
    finally:
        await server.stop(1)
