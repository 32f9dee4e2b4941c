"""GetSpaceMember: how other services check that a user belongs to a space (with their platform token)."""

from __future__ import annotations

import grpc
from parley.workspace.v1 import resources_pb2 as res
from parley.workspace.v1 import space_service_pb2 as sp
from parley.workspace.v1 import user_service_pb2 as us
from parley_kit.auth import TokenIssuer

from .conftest import ROLE, Workspace, unique_email


def platform_token(ws: Workspace) -> str:
    return TokenIssuer(ws.key).issue(space_id="*", role="system", subject="service:contacts")


async def invite(ws: Workspace, owner: str, space_id: str = "") -> str:
    request = us.InviteUserRequest(space_id=space_id, email=unique_email("agent"), role=ROLE["agent"])
    return str((await ws.call("users", "InviteUser", request, owner)).user.id)


async def test_a_platform_token_gets_a_member_of_any_space(workspace: Workspace) -> None:
    boot = await workspace.bootstrap()
    user_id = await invite(workspace, boot.tokens.access_token)
    request = sp.GetSpaceMemberRequest(space_id=boot.space_id, user_id=user_id)
    reply = await workspace.call("spaces", "GetSpaceMember", request, platform_token(workspace))
    assert (reply.member.space_id, reply.member.user_id, reply.member.role) == (
        boot.space_id,
        user_id,
        res.SPACE_ROLE_AGENT,
    )


async def test_a_user_of_another_space_is_not_found(workspace: Workspace) -> None:
    a, b = await workspace.bootstrap(), await workspace.bootstrap()
    stranger = await invite(workspace, b.tokens.access_token)
    request = sp.GetSpaceMemberRequest(space_id=a.space_id, user_id=stranger)
    code, message = await workspace.error("spaces", "GetSpaceMember", request, platform_token(workspace))
    assert code == grpc.StatusCode.NOT_FOUND and f"user '{stranger}' is not a member" in message


async def test_a_removed_member_is_not_found_at_once(workspace: Workspace) -> None:
    boot = await workspace.bootstrap()
    owner = boot.tokens.access_token
    user_id = await invite(workspace, owner)
    await workspace.call("spaces", "RemoveSpaceMember", sp.RemoveSpaceMemberRequest(user_id=user_id), owner)
    request = sp.GetSpaceMemberRequest(space_id=boot.space_id, user_id=user_id)
    code, _ = await workspace.error("spaces", "GetSpaceMember", request, platform_token(workspace))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_an_unknown_user_or_space_is_not_found_and_a_missing_user_id_is_invalid(workspace: Workspace) -> None:
    boot = await workspace.bootstrap()
    token = platform_token(workspace)
    for request in (
        sp.GetSpaceMemberRequest(space_id=boot.space_id, user_id="u-typo"),
        sp.GetSpaceMemberRequest(space_id="no-such-space", user_id=boot.user_id),
    ):
        code, _ = await workspace.error("spaces", "GetSpaceMember", request, token)
        assert code == grpc.StatusCode.NOT_FOUND, request
    code, message = await workspace.error(
        "spaces", "GetSpaceMember", sp.GetSpaceMemberRequest(space_id=boot.space_id), token
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in message


async def test_a_member_asks_about_their_own_space_without_naming_it(workspace: Workspace) -> None:
    boot = await workspace.bootstrap()
    request = sp.GetSpaceMemberRequest(user_id=boot.user_id)
    reply = await workspace.call("spaces", "GetSpaceMember", request, boot.tokens.access_token)
    assert reply.member.role == res.SPACE_ROLE_OWNER
