"""WorkspaceAuthenticator: JWTs locally, API keys by asking the workspace on every request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from parley.workspace.v1 import auth_service_pb2, auth_service_pb2_grpc, resources_pb2
from parley_kit.auth import SigningKey, TokenIssuer, TokenVerifier, jwks
from parley_kit.authenticators import WorkspaceAuthenticator
from parley_kit.errors import Unauthenticated, Unavailable


class FakeWorkspace(auth_service_pb2_grpc.AuthServiceServicer):
    """Knows one key, 'pk_k1_s3cret', until it is revoked; counts the calls and their tokens."""

    def __init__(self) -> None:
        self.revoked = False
        self.calls: list[str] = []

    async def VerifyApiKey(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(dict(context.invocation_metadata()).get("authorization", ""))
        if request.api_key != "pk_k1_s3cret" or self.revoked:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "API key is invalid or revoked")
        return auth_service_pb2.VerifyApiKeyResponse(
            api_key_id="k1", space_id="S", role=resources_pb2.SPACE_ROLE_MANAGER, organization_id="O"
        )


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[tuple[FakeWorkspace, str]]:
    server = grpc.aio.server()
    servicer = FakeWorkspace()
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_api_key_is_verified_by_the_workspace_on_every_request(fake: tuple[FakeWorkspace, str]) -> None:
    servicer, target = fake
    key = SigningKey.generate("k")
    auth = WorkspaceAuthenticator(TokenVerifier.from_jwks(jwks(key)), target, "svc-token")
    caller = await auth.authenticate("pk_k1_s3cret")
    assert (caller.subject, caller.space_id, caller.role, caller.org_id) == ("apikey:k1", "S", "manager", "O")
    assert servicer.calls[-1] == "Bearer svc-token"
    servicer.revoked = True  # no cache: the very next request is refused
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.authenticate("pk_k1_s3cret")
    calls = len(servicer.calls)
    jwt = TokenIssuer(key).issue(space_id="S", role="agent", subject="user:u")
    assert (await auth.authenticate(jwt)).user_id == "u"
    assert len(servicer.calls) == calls  # JWTs never leave the process
    await auth.close()


async def test_unreachable_workspace_is_unavailable_not_unauthenticated() -> None:
    auth = WorkspaceAuthenticator(
        TokenVerifier.from_jwks(jwks(SigningKey.generate("k"))), "127.0.0.1:1", "t", timeout=1
    )
    with pytest.raises(Unavailable):
        await auth.authenticate("pk_k1_s3cret")
    await auth.close()


def test_runtime_accepts_api_keys_only_when_the_workspace_address_is_set() -> None:
    from parley_kit.grpc_server import JwtAuthenticator
    from parley_kit.runtime import authenticator_from_settings
    from parley_kit.settings import ServiceSettings

    base = {
        "service_name": "x",
        "database_url": "postgresql://u@h/d",
        "auth_jwks": '{"keys": []}',
        "service_token": "t",
    }
    assert isinstance(authenticator_from_settings(ServiceSettings(**base)), JwtAuthenticator)
    chosen = authenticator_from_settings(ServiceSettings(**base, workspace_addr="127.0.0.1:50051"))
    assert isinstance(chosen, WorkspaceAuthenticator)
