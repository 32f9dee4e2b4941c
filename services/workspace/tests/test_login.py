"""Logins, tokens, refresh rotation, lockout and key rotation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any

import grpc
from parley.workspace.v1 import auth_service_pb2 as auth
from parley.workspace.v1 import space_service_pb2 as sp
from parley.workspace.v1 import user_service_pb2 as us
from parley_kit.auth import SigningKey, TokenIssuer, TokenVerifier, jwks
from parley_kit.errors import Unauthenticated
from parley_workspace.security import PasswordHasher

from .conftest import OPERATOR_SECRET, PASSWORD, ROLE, Workspace, make_service, unique_email

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


async def _owner(workspace: Workspace) -> tuple[auth.BootstrapResponse, str]:
    email = unique_email("owner")
    boot = await workspace.bootstrap(email=email)
    return boot, email


async def test_login_token_names_user_space_role_and_org(workspace: Workspace) -> None:
    boot, email = await _owner(workspace)
    reply = await workspace.call("auth", "Login", auth.LoginRequest(email=email.upper(), password=PASSWORD))
    caller = workspace.verify(reply.tokens.access_token)
    assert (caller.user_id, caller.space_id, caller.role, caller.org_id) == (
        boot.user_id,
        boot.space_id,
        "owner",
        boot.organization_id,
    )
    assert reply.tokens.refresh_token.startswith("rt_")
    assert [s.space_id for s in reply.spaces] == [boot.space_id]
    expires_in = reply.tokens.access_token_expires_at.seconds - time.time()
    assert 0 < expires_in <= 900


async def test_wrong_password_and_unknown_email_answer_identically(workspace: Workspace) -> None:
    _, email = await _owner(workspace)
    wrong = await workspace.error("auth", "Login", auth.LoginRequest(email=email, password="not the password at all"))
    unknown = await workspace.error(
        "auth", "Login", auth.LoginRequest(email=unique_email("nobody"), password="not the password at all")
    )
    invalid = await workspace.error("auth", "Login", auth.LoginRequest(email="not an email", password="x" * 12))
    assert wrong == unknown == invalid == (UNAUTH, "email or password is incorrect")


async def test_unknown_email_costs_one_argon2_verification_like_a_wrong_password(workspace: Workspace) -> None:
    # Production-like cost: the dummy hash an unknown email is checked against must have the same cost.
    service = make_service(workspace.engine, workspace.key, lockout_threshold=100)
    hasher = PasswordHasher(time_cost=2, memory_kib=32_768, parallelism=1)
    verified: list[str] = []

    class Spy:
        def __init__(self, real: Any) -> None:
            self.real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def verify(self, stored: str, password: str) -> bool:
            verified.append(stored.rsplit("$", 2)[0])  # "$argon2id$v=19$m=...,t=...,p=..." (algorithm and cost)
            return bool(self.real.verify(stored, password))

    hasher._argon = Spy(hasher._argon)  # type: ignore[assignment]
    service._hasher = hasher
    email = unique_email("timed")
    await service.bootstrap(
        OPERATOR_SECRET, org_name=email, space_name="Timing", email=email, password=PASSWORD, force=True
    )

    async def attempt(address: str) -> None:
        with contextlib.suppress(Unauthenticated):
            await service.login(address, "definitely wrong password")

    verified.clear()
    for _ in range(4):
        await attempt(email)
        await attempt(unique_email("ghost"))
    # Both paths run exactly one argon2 verification each, with the same algorithm and cost, so an unknown
    # email takes as long as a wrong password (checked by what runs, not by a clock: no timing threshold).
    assert len(verified) == 8 and len(set(verified)) == 1, verified


async def test_repeated_failures_lock_the_account_with_growing_delays(workspace: Workspace) -> None:
    _, email = await _owner(workspace)
    bad = auth.LoginRequest(email=email, password="wrong password 123")
    good = auth.LoginRequest(email=email, password=PASSWORD)
    for _ in range(3):  # threshold 3 in tests: the 3rd failure locks for 1 s
        assert (await workspace.error("auth", "Login", bad))[0] == UNAUTH
    code, message = await workspace.error("auth", "Login", good)  # even the right password waits
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "try again in" in message
    await asyncio.sleep(1.3)
    assert (await workspace.error("auth", "Login", bad))[0] == UNAUTH  # 4th failure: locked 2 s
    code, message = await workspace.error("auth", "Login", good)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "try again in" in message
    await asyncio.sleep(2.3)
    assert (await workspace.call("auth", "Login", good)).tokens.access_token
    # success resets the count: the next failure is an ordinary one
    assert (await workspace.error("auth", "Login", bad))[0] == UNAUTH
    assert (await workspace.call("auth", "Login", good)).tokens.access_token


async def test_lockout_is_shared_by_replicas_and_applies_to_unknown_emails_alike(workspace: Workspace) -> None:
    other_replica = make_service(workspace.engine, workspace.key)
    ghost = unique_email("ghost")
    for _ in range(3):
        assert (await workspace.error("auth", "Login", auth.LoginRequest(email=ghost, password="p" * 12)))[0] == UNAUTH
    import pytest
    from parley_kit.errors import ResourceExhausted

    with pytest.raises(ResourceExhausted, match="try again in"):
        await other_replica.login(ghost, "p" * 12)


async def test_refresh_rotates_and_a_reused_refresh_token_ends_the_session(workspace: Workspace) -> None:
    _boot, email = await _owner(workspace)
    first = (await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD))).tokens
    second = (await workspace.call("auth", "Refresh", auth.RefreshRequest(refresh_token=first.refresh_token))).tokens
    assert second.refresh_token != first.refresh_token and workspace.verify(second.access_token).space_id
    code, message = await workspace.error("auth", "Refresh", auth.RefreshRequest(refresh_token=first.refresh_token))
    assert code == UNAUTH and "log in again" in message
    # the reuse revoked the whole session, including the token issued by the rotation
    assert (await workspace.error("auth", "Refresh", auth.RefreshRequest(refresh_token=second.refresh_token)))[
        0
    ] == UNAUTH


async def test_logout_revokes_the_refresh_token(workspace: Workspace) -> None:
    _, email = await _owner(workspace)
    tokens = (await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD))).tokens
    other = (await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD))).tokens
    reply = await workspace.call("auth", "Logout", auth.LogoutRequest(refresh_token=tokens.refresh_token))
    assert reply.revoked_sessions == 1
    assert (await workspace.error("auth", "Refresh", auth.RefreshRequest(refresh_token=tokens.refresh_token)))[
        0
    ] == UNAUTH
    # the other session lives on until logged out everywhere
    await workspace.call("auth", "Logout", auth.LogoutRequest(refresh_token=other.refresh_token, all_sessions=True))
    assert (await workspace.error("auth", "Refresh", auth.RefreshRequest(refresh_token=other.refresh_token)))[
        0
    ] == UNAUTH
    garbage = await workspace.error("auth", "Refresh", auth.RefreshRequest(refresh_token="rt_nope_nope"))
    assert garbage[0] == UNAUTH


async def test_expired_tampered_and_foreign_tokens_are_refused(workspace: Workspace) -> None:
    boot, _ = await _owner(workspace)
    request = sp.GetSpaceRequest(space_id=boot.space_id)
    assert (await workspace.call("spaces", "GetSpace", request, boot.tokens.access_token)).space.id == boot.space_id
    subject = f"user:{boot.user_id}"
    expired = TokenIssuer(workspace.key).issue(space_id=boot.space_id, role="owner", subject=subject, ttl=-60)
    code, message = await workspace.error("spaces", "GetSpace", request, expired)
    assert code == UNAUTH and "expired" in message
    header, payload, signature = boot.tokens.access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sid"] = "another-space"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert (await workspace.error("spaces", "GetSpace", request, f"{header}.{forged}.{signature}"))[0] == UNAUTH
    same_kid_other_key = TokenIssuer(SigningKey.generate(workspace.key.kid)).issue(
        space_id=boot.space_id, role="owner", subject=subject
    )
    assert (await workspace.error("spaces", "GetSpace", request, same_kid_other_key))[0] == UNAUTH
    unknown_kid = TokenIssuer(SigningKey.generate("rogue")).issue(space_id=boot.space_id, role="owner", subject=subject)
    code, message = await workspace.error("spaces", "GetSpace", request, unknown_kid)
    assert code == UNAUTH and "unknown key id" in message
    assert (await workspace.error("spaces", "GetSpace", request, None))[0] == UNAUTH


async def test_switch_space_gives_a_token_for_another_of_the_users_spaces(workspace: Workspace) -> None:
    boot, email = await _owner(workspace)
    owner = boot.tokens.access_token
    second = (
        await workspace.call(
            "spaces", "CreateSpace", sp.CreateSpaceRequest(organization_id=boot.organization_id, name="Sales"), owner
        )
    ).space
    switched = (await workspace.call("auth", "SwitchSpace", auth.SwitchSpaceRequest(space_id=second.id), owner)).tokens
    assert workspace.verify(switched.access_token).space_id == second.id and not switched.refresh_token
    login = await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD, space_id=second.id))
    assert workspace.verify(login.tokens.access_token).space_id == second.id
    # not a member of a stranger's space
    stranger, _ = await _owner(workspace)
    code, _ = await workspace.error("auth", "SwitchSpace", auth.SwitchSpaceRequest(space_id=stranger.space_id), owner)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = await workspace.error(
        "auth", "Login", auth.LoginRequest(email=email, password=PASSWORD, space_id=stranger.space_id)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_jwks_publishes_the_signing_key_and_verifies_issued_tokens(workspace: Workspace) -> None:
    boot, _ = await _owner(workspace)
    reply = await workspace.call("auth", "GetJwks", auth.GetJwksRequest())
    verifier = TokenVerifier.from_jwks(reply.jwks_json)
    assert reply.signing_key_id == workspace.key.kid
    assert verifier.verify(boot.tokens.access_token).space_id == boot.space_id
    assert all("d" not in k for k in json.loads(reply.jwks_json)["keys"])  # public halves only


async def test_key_rotation_keeps_old_tokens_valid_until_they_expire(workspace: Workspace) -> None:
    old, new = SigningKey.generate("old"), SigningKey.generate("new")
    service = make_service(workspace.engine, new)
    service._jwks = jwks(old, new)  # the JWKS file during a rotation: old and new
    document, kid = service.jwks()
    assert kid == "new" and {k["kid"] for k in document["keys"]} == {"old", "new"}
    verifier = TokenVerifier.from_jwks(document)
    for key in (old, new):
        assert verifier.verify(TokenIssuer(key).issue(space_id="s", role="agent")).space_id == "s"


async def test_change_password_revokes_other_sessions(workspace: Workspace) -> None:
    _boot, email = await _owner(workspace)
    login = await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD))
    new_password = "a brand new passphrase here"
    reply = await workspace.call(
        "users",
        "ChangePassword",
        us.ChangePasswordRequest(current_password=PASSWORD, new_password=new_password),
        login.tokens.access_token,
    )
    assert reply.revoked_sessions >= 2  # bootstrap's session and this login's
    refresh = auth.RefreshRequest(refresh_token=login.tokens.refresh_token)
    assert (await workspace.error("auth", "Refresh", refresh))[0] == UNAUTH
    assert (await workspace.error("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD)))[0] == UNAUTH
    assert await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=new_password))


async def test_invited_user_sets_a_password_with_the_setup_token_once(workspace: Workspace) -> None:
    boot, _ = await _owner(workspace)
    email = unique_email("invitee")
    invite = await workspace.call(
        "users",
        "InviteUser",
        us.InviteUserRequest(email=email, display_name="Ivy", role=ROLE["agent"]),
        boot.tokens.access_token,
    )
    assert invite.created and invite.setup_token
    assert (await workspace.error("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD)))[0] == UNAUTH
    weak = await workspace.error(
        "auth", "AcceptInvite", auth.AcceptInviteRequest(setup_token=invite.setup_token, password="short")
    )
    assert weak[0] == grpc.StatusCode.INVALID_ARGUMENT
    await workspace.call(
        "auth", "AcceptInvite", auth.AcceptInviteRequest(setup_token=invite.setup_token, password=PASSWORD)
    )
    login = await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD))
    assert workspace.verify(login.tokens.access_token).role == "agent"
    again = await workspace.error(
        "auth", "AcceptInvite", auth.AcceptInviteRequest(setup_token=invite.setup_token, password=PASSWORD)
    )
    assert again[0] == UNAUTH
    # inviting an existing user adds them to another space, without a setup token
    other, _ = await _owner(workspace)
    second = await workspace.call(
        "users",
        "InviteUser",
        us.InviteUserRequest(email=email.upper(), role=ROLE["manager"]),
        other.tokens.access_token,
    )
    assert not second.created and not second.setup_token and second.user.id == invite.user.id
