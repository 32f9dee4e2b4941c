"""The permission matrix against every kind of workspace RPC, and space isolation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from parley.workspace.v1 import api_key_service_pb2 as keys
from parley.workspace.v1 import auth_service_pb2 as auth
from parley.workspace.v1 import availability_service_pb2 as av
from parley.workspace.v1 import organization_service_pb2 as org
from parley.workspace.v1 import resources_pb2 as res
from parley.workspace.v1 import space_service_pb2 as sp
from parley.workspace.v1 import team_service_pb2 as tm
from parley.workspace.v1 import user_service_pb2 as us
from parley_kit.auth import TokenIssuer
from parley_kit.permissions import Permission, allows

from .conftest import PASSWORD, ROLE, Workspace, unique, unique_email


@dataclass
class Space:
    """A bootstrapped space with a token for every kind of caller."""

    space_id: str
    org_id: str
    tokens: dict[str, str]  # caller name -> bearer token
    roles: dict[str, str]  # caller name -> role
    users: dict[str, str]  # user caller name -> user id
    target_user: str  # a plain agent the calls act on
    team_id: str
    key_id: str


async def make_space(ws: Workspace) -> Space:
    boot = await ws.bootstrap()
    owner = boot.tokens.access_token
    tokens, roles, users = {"user:owner": owner}, {"user:owner": "owner"}, {"user:owner": boot.user_id}
    for role in ("manager", "agent"):
        email = unique_email(role)
        created = await ws.call(
            "users", "CreateUser", us.CreateUserRequest(email=email, password=PASSWORD, role=ROLE[role]), owner
        )
        login = await ws.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD))
        tokens[f"user:{role}"], roles[f"user:{role}"], users[f"user:{role}"] = (
            login.tokens.access_token,
            role,
            created.user.id,
        )
    for role in ("owner", "manager", "agent"):
        created = await ws.call(
            "keys", "CreateApiKey", keys.CreateApiKeyRequest(name=f"{role} key", role=ROLE[role]), owner
        )
        tokens[f"apikey:{role}"], roles[f"apikey:{role}"] = created.token, role
    tokens["system"] = TokenIssuer(ws.key).issue(space_id="*", role="system", subject="service:tests")
    roles["system"] = "system"
    target = await ws.call(
        "users",
        "CreateUser",
        us.CreateUserRequest(email=unique_email("target"), password=PASSWORD, role=ROLE["agent"]),
        owner,
    )
    team = await ws.call("teams", "CreateTeam", tm.CreateTeamRequest(name="Tier 1"), owner)
    key = await ws.call("keys", "CreateApiKey", keys.CreateApiKeyRequest(name="spare", role=ROLE["agent"]), owner)
    return Space(
        boot.space_id, boot.organization_id, tokens, roles, users, target.user.id, team.team.id, key.api_key.id
    )


@pytest.fixture(scope="module")
async def space_a(workspace: Workspace) -> Space:
    return await make_space(workspace)


@pytest.fixture(scope="module")
async def space_b(workspace: Workspace) -> Space:
    return await make_space(workspace)


Call = Callable[[Workspace, Space, str, str], Awaitable[Any]]


def _case(service: str, method: str, build: Callable[[Space, str], Any]) -> Call:
    async def run(ws: Workspace, s: Space, caller: str, token: str) -> Any:
        return await ws.call(service, method, build(s, caller), token)

    return run


# (permission the RPC needs, RPC). Requests name the space explicitly so system tokens work too.
CASES: list[tuple[str, Permission, Call]] = [
    (
        "ListSpaceMembers",
        Permission.MEMBERS_READ,
        _case("spaces", "ListSpaceMembers", lambda s, c: sp.ListSpaceMembersRequest(space_id=s.space_id)),
    ),
    (
        "GetSpaceMember",
        Permission.MEMBERS_READ,
        _case(
            "spaces",
            "GetSpaceMember",
            lambda s, c: sp.GetSpaceMemberRequest(space_id=s.space_id, user_id=s.target_user),
        ),
    ),
    (
        "GetUser",
        Permission.MEMBERS_READ,
        _case("users", "GetUser", lambda s, c: us.GetUserRequest(user_id=s.target_user)),
    ),
    (
        "ListAvailability",
        Permission.MEMBERS_READ,
        _case("availability", "ListAvailability", lambda s, c: av.ListAvailabilityRequest(space_id=s.space_id)),
    ),
    (
        "GetBusinessHours",
        Permission.MEMBERS_READ,
        _case("availability", "GetBusinessHours", lambda s, c: av.GetBusinessHoursRequest(space_id=s.space_id)),
    ),
    (
        "CheckAvailability",
        Permission.MEMBERS_READ,
        _case("availability", "CheckAvailability", lambda s, c: av.CheckAvailabilityRequest(space_id=s.space_id)),
    ),
    (
        "ListTeams",
        Permission.TEAMS_READ,
        _case("teams", "ListTeams", lambda s, c: tm.ListTeamsRequest(space_id=s.space_id)),
    ),
    ("GetTeam", Permission.TEAMS_READ, _case("teams", "GetTeam", lambda s, c: tm.GetTeamRequest(team_id=s.team_id))),
    (
        "CreateTeam",
        Permission.TEAMS_MANAGE,
        _case("teams", "CreateTeam", lambda s, c: tm.CreateTeamRequest(space_id=s.space_id, name=unique("Team"))),
    ),
    (
        "RenameTeam",
        Permission.TEAMS_MANAGE,
        _case("teams", "RenameTeam", lambda s, c: tm.RenameTeamRequest(team_id=s.team_id, name=unique("Tier"))),
    ),
    (
        "SetAvailability(other)",
        Permission.AVAILABILITY_SET_ANY,
        _case(
            "availability",
            "SetAvailability",
            lambda s, c: av.SetAvailabilityRequest(
                space_id=s.space_id, user_id=s.target_user, status=res.AVAILABILITY_STATUS_AWAY
            ),
        ),
    ),
    (
        "InviteUser",
        Permission.MEMBERS_MANAGE,
        _case(
            "users",
            "InviteUser",
            lambda s, c: us.InviteUserRequest(space_id=s.space_id, email=unique_email("inv"), role=ROLE["agent"]),
        ),
    ),
    (
        "SetSpaceMemberRole",
        Permission.MEMBERS_MANAGE,
        _case(
            "spaces",
            "SetSpaceMemberRole",
            lambda s, c: sp.SetSpaceMemberRoleRequest(space_id=s.space_id, user_id=s.target_user, role=ROLE["agent"]),
        ),
    ),
    (
        "UpdateUser(other)",
        Permission.MEMBERS_MANAGE,
        _case(
            "users", "UpdateUser", lambda s, c: us.UpdateUserRequest(user_id=s.target_user, display_name=unique("Name"))
        ),
    ),
    (
        "ListApiKeys",
        Permission.API_KEYS_MANAGE,
        _case("keys", "ListApiKeys", lambda s, c: keys.ListApiKeysRequest(space_id=s.space_id)),
    ),
    (
        "GetApiKey",
        Permission.API_KEYS_MANAGE,
        _case("keys", "GetApiKey", lambda s, c: keys.GetApiKeyRequest(api_key_id=s.key_id)),
    ),
    (
        "CreateApiKey",
        Permission.API_KEYS_MANAGE,
        _case(
            "keys",
            "CreateApiKey",
            lambda s, c: keys.CreateApiKeyRequest(space_id=s.space_id, name=unique("Key"), role=ROLE["agent"]),
        ),
    ),
    (
        "SetBusinessHours",
        Permission.SPACE_SETTINGS,
        _case(
            "availability",
            "SetBusinessHours",
            lambda s, c: av.SetBusinessHoursRequest(space_id=s.space_id, time_zone="Europe/Paris"),
        ),
    ),
    (
        "SetBusinessHoursException",
        Permission.SPACE_SETTINGS,
        _case(
            "availability",
            "SetBusinessHoursException",
            lambda s, c: av.SetBusinessHoursExceptionRequest(
                space_id=s.space_id, exception=res.BusinessHoursException(date="2030-12-25", name="Christmas")
            ),
        ),
    ),
    (
        "VerifyApiKey",
        Permission.INTERNAL,
        _case("auth", "VerifyApiKey", lambda s, c: auth.VerifyApiKeyRequest(api_key=s.tokens["apikey:agent"])),
    ),
]
CALLERS = ["user:owner", "user:manager", "user:agent", "apikey:owner", "apikey:manager", "apikey:agent", "system"]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("rpc", "permission", "call"), CASES, ids=[c[0] for c in CASES])
async def test_every_role_against_every_kind_of_rpc(
    workspace: Workspace, space_a: Space, caller: str, rpc: str, permission: Permission, call: Call
) -> None:
    role = space_a.roles[caller]
    if allows(role, permission):
        await call(workspace, space_a, caller, space_a.tokens[caller])
    else:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(workspace, space_a, caller, space_a.tokens[caller])
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
        assert str(permission) in (info.value.details() or ""), "a denial names the missing permission"


@pytest.mark.parametrize("caller", ["user:owner", "user:manager", "user:agent"])
async def test_own_availability_is_every_users_right(workspace: Workspace, space_a: Space, caller: str) -> None:
    reply = await workspace.call(
        "availability",
        "SetAvailability",
        av.SetAvailabilityRequest(status=res.AVAILABILITY_STATUS_ONLINE),
        space_a.tokens[caller],
    )
    assert reply.member.user_id == space_a.users[caller]


@pytest.mark.parametrize("caller", ["user:manager", "user:agent", "apikey:owner"])
async def test_organization_level_changes_need_an_organization_admin(
    workspace: Workspace, space_a: Space, caller: str
) -> None:
    token = space_a.tokens[caller]
    for service, method, request in [
        ("spaces", "CreateSpace", sp.CreateSpaceRequest(organization_id=space_a.org_id, name=unique("Space"))),
        ("spaces", "ArchiveSpace", sp.ArchiveSpaceRequest(space_id=space_a.space_id)),
        ("orgs", "RenameOrganization", org.RenameOrganizationRequest(organization_id=space_a.org_id, name=unique("O"))),
        ("orgs", "SetOrganizationMemberRole", org.SetOrganizationMemberRoleRequest(
            organization_id=space_a.org_id, user_id=space_a.target_user, role=res.ORGANIZATION_ROLE_ADMIN)),
    ]:  # fmt: skip
        code, message = await workspace.error(service, method, request, token)
        assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND), (method, code, message)
    space = await workspace.call("spaces", "GetSpace", sp.GetSpaceRequest(space_id=space_a.space_id), token)
    assert not space.space.archived


async def test_org_admin_creates_archives_and_lists_spaces(workspace: Workspace, space_a: Space) -> None:
    owner = space_a.tokens["user:owner"]  # bootstrap made them an organization admin
    created = await workspace.call(
        "spaces", "CreateSpace", sp.CreateSpaceRequest(organization_id=space_a.org_id, name=unique("Temp")), owner
    )
    # an org admin manages the new space from a token for another space of the organization
    member = await workspace.call(
        "spaces",
        "AddSpaceMember",
        sp.AddSpaceMemberRequest(space_id=created.space.id, user_id=space_a.target_user, role=ROLE["agent"]),
        owner,
    )
    assert member.member.role == res.SPACE_ROLE_AGENT
    archived = await workspace.call("spaces", "ArchiveSpace", sp.ArchiveSpaceRequest(space_id=created.space.id), owner)
    assert archived.space.archived
    listed = await workspace.call("spaces", "ListSpaces", sp.ListSpacesRequest(organization_id=space_a.org_id), owner)
    assert created.space.id not in [s.id for s in listed.spaces]
    listed = await workspace.call(
        "spaces", "ListSpaces", sp.ListSpacesRequest(organization_id=space_a.org_id, include_archived=True), owner
    )
    assert created.space.id in [s.id for s in listed.spaces]
    code, _ = await workspace.error(
        "teams", "CreateTeam", tm.CreateTeamRequest(space_id=created.space.id, name="x"), space_a.tokens["system"]
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # an archived space refuses changes


CROSS: list[tuple[str, str, Callable[[Space], Any], grpc.StatusCode]] = [
    (
        "spaces",
        "ListSpaceMembers",
        lambda b: sp.ListSpaceMembersRequest(space_id=b.space_id),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    ("spaces", "GetSpace", lambda b: sp.GetSpaceRequest(space_id=b.space_id), grpc.StatusCode.PERMISSION_DENIED),
    (
        "spaces",
        "GetSpaceMember",
        lambda b: sp.GetSpaceMemberRequest(space_id=b.space_id, user_id=b.target_user),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    (
        "spaces",
        "AddSpaceMember",
        lambda b: sp.AddSpaceMemberRequest(space_id=b.space_id, user_id=b.target_user, role=ROLE["owner"]),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    (
        "spaces",
        "RemoveSpaceMember",
        lambda b: sp.RemoveSpaceMemberRequest(space_id=b.space_id, user_id=b.target_user),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    ("teams", "GetTeam", lambda b: tm.GetTeamRequest(team_id=b.team_id), grpc.StatusCode.NOT_FOUND),
    ("teams", "DeleteTeam", lambda b: tm.DeleteTeamRequest(team_id=b.team_id), grpc.StatusCode.NOT_FOUND),
    (
        "teams",
        "AddTeamMember",
        lambda b: tm.AddTeamMemberRequest(team_id=b.team_id, user_id=b.target_user),
        grpc.StatusCode.NOT_FOUND,
    ),
    ("keys", "GetApiKey", lambda b: keys.GetApiKeyRequest(api_key_id=b.key_id), grpc.StatusCode.NOT_FOUND),
    ("keys", "RevokeApiKey", lambda b: keys.RevokeApiKeyRequest(api_key_id=b.key_id), grpc.StatusCode.NOT_FOUND),
    ("users", "GetUser", lambda b: us.GetUserRequest(user_id=b.target_user), grpc.StatusCode.NOT_FOUND),
    (
        "users",
        "UpdateUser",
        lambda b: us.UpdateUserRequest(user_id=b.target_user, display_name="Mallory"),
        grpc.StatusCode.NOT_FOUND,
    ),
    (
        "availability",
        "SetAvailability",
        lambda b: av.SetAvailabilityRequest(
            space_id=b.space_id, user_id=b.target_user, status=res.AVAILABILITY_STATUS_ONLINE
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    (
        "availability",
        "SetBusinessHours",
        lambda b: av.SetBusinessHoursRequest(space_id=b.space_id),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    (
        "orgs",
        "GetOrganization",
        lambda b: org.GetOrganizationRequest(organization_id=b.org_id),
        grpc.StatusCode.NOT_FOUND,
    ),
    (
        "orgs",
        "ListOrganizationMembers",
        lambda b: org.ListOrganizationMembersRequest(organization_id=b.org_id),
        grpc.StatusCode.NOT_FOUND,
    ),
]


@pytest.mark.parametrize("caller", ["user:owner", "apikey:owner"])
@pytest.mark.parametrize(("service", "method", "build", "expected"), CROSS, ids=[c[1] for c in CROSS])
async def test_a_token_for_space_a_cannot_touch_space_b(
    workspace: Workspace,
    space_a: Space,
    space_b: Space,
    caller: str,
    service: str,
    method: str,
    build: Callable[[Space], Any],
    expected: grpc.StatusCode,
) -> None:
    code, message = await workspace.error(service, method, build(space_b), space_a.tokens[caller])
    assert code == expected, message
    assert space_b.space_id not in message or "not" in message  # never "exists, but ..."


async def test_space_b_is_unchanged_after_space_a_tried(workspace: Workspace, space_b: Space) -> None:
    owner_b = space_b.tokens["user:owner"]
    team = await workspace.call("teams", "GetTeam", tm.GetTeamRequest(team_id=space_b.team_id), owner_b)
    assert team.team.name == "Tier 1" and team.team.member_count == 0
    key = await workspace.call("keys", "GetApiKey", keys.GetApiKeyRequest(api_key_id=space_b.key_id), owner_b)
    assert not key.api_key.revoked
    user = await workspace.call("users", "GetUser", us.GetUserRequest(user_id=space_b.target_user), owner_b)
    assert user.user.display_name != "Mallory"
    members = await workspace.call("spaces", "ListSpaceMembers", sp.ListSpaceMembersRequest(), owner_b)
    assert all(m.role != res.SPACE_ROLE_OWNER or m.user_id == space_b.users["user:owner"] for m in members.members)


async def test_a_removed_member_loses_workspace_rights_at_once(workspace: Workspace, space_a: Space) -> None:
    owner = space_a.tokens["user:owner"]
    email = unique_email("leaver")
    created = await workspace.call(
        "users", "CreateUser", us.CreateUserRequest(email=email, password=PASSWORD, role=ROLE["manager"]), owner
    )
    token = (await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD))).tokens
    await workspace.call("spaces", "RemoveSpaceMember", sp.RemoveSpaceMemberRequest(user_id=created.user.id), owner)
    code, message = await workspace.error(
        "teams", "CreateTeam", tm.CreateTeamRequest(name=unique("T")), token.access_token
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "no longer a member" in message
    # and their refresh token no longer yields a token for that space
    refreshed = await workspace.call("auth", "Refresh", auth.RefreshRequest(refresh_token=token.refresh_token))
    assert refreshed.tokens.space_id == "" and refreshed.tokens.role == res.SPACE_ROLE_UNSPECIFIED
