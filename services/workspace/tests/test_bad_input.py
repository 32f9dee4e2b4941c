"""Bad input gets the right status and a clear message, and changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from parley.common.v1 import common_pb2
from parley.workspace.v1 import api_key_service_pb2 as keys
from parley.workspace.v1 import auth_service_pb2 as auth
from parley.workspace.v1 import availability_service_pb2 as av
from parley.workspace.v1 import organization_service_pb2 as org
from parley.workspace.v1 import resources_pb2 as res
from parley.workspace.v1 import space_service_pb2 as sp
from parley.workspace.v1 import team_service_pb2 as tm
from parley.workspace.v1 import user_service_pb2 as us
from sqlalchemy import text

from .conftest import PASSWORD, ROLE, Workspace, unique_email

INVALID, EXISTS, MISSING = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND,
)
TABLES = [
    "organizations",
    "organization_members",
    "users",
    "spaces",
    "space_members",
    "teams",
    "team_members",
    "api_keys",
    "business_hours",
    "business_hours_exceptions",
]


async def snapshot(ws: Workspace) -> dict[str, Any]:
    """Every table's content, to prove a refused request changed nothing."""
    async with ws.engine.connect() as conn:
        return {
            t: (
                await conn.execute(
                    text(f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x")
                )
            ).scalar()
            for t in TABLES
        }


@pytest.fixture(scope="module")
async def setup(workspace: Workspace) -> dict[str, Any]:
    boot = await workspace.bootstrap(email=unique_email("owner"))
    owner = boot.tokens.access_token
    email = unique_email("Agent")
    agent = await workspace.call(
        "users", "CreateUser", us.CreateUserRequest(email=email, password=PASSWORD, role=ROLE["agent"]), owner
    )
    team = await workspace.call("teams", "CreateTeam", tm.CreateTeamRequest(name="Billing Team"), owner)
    await workspace.call("keys", "CreateApiKey", keys.CreateApiKeyRequest(name="Zapier", role=ROLE["agent"]), owner)
    org_name = (
        await workspace.call(
            "orgs", "GetOrganization", org.GetOrganizationRequest(organization_id=boot.organization_id), owner
        )
    ).organization.name
    return {
        "boot": boot,
        "owner": owner,
        "agent_email": email,
        "agent_id": agent.user.id,
        "team_id": team.team.id,
        "org_name": org_name,
    }


def cases(s: dict[str, Any]) -> list[tuple[str, str, Any, grpc.StatusCode, str]]:
    """(service, method, request, expected status, a word the message must contain)."""
    b = s["boot"]

    def create_user(**kw: Any) -> us.CreateUserRequest:
        return us.CreateUserRequest(**{"email": unique_email(), "password": PASSWORD, "role": ROLE["agent"], **kw})

    def hours(*ranges: tuple[str, str]) -> av.SetBusinessHoursRequest:
        return av.SetBusinessHoursRequest(
            weekly=[
                res.WeekdayHours(day=res.WEEKDAY_MONDAY, ranges=[res.TimeRange(opens=o, closes=c) for o, c in ranges])
            ]
        )

    return [
        *[
            ("users", "CreateUser", create_user(email=e), INVALID, "email")
            for e in [
                "",
                "plainaddress",
                "a@b",
                "two@@example.com",
                "dot..dot@example.com",
                "x@example..com",
                "spaces in@example.com",
            ]
        ],
        *[
            ("users", "CreateUser", create_user(password=p), INVALID, "password")
            for p in ["", "short", "password123", "aaaaaaaaaaaaaaa", "12345678901234", "qwertyuiop!!", "x" * 300]
        ],
        (
            "users",
            "CreateUser",
            create_user(email="someone.long@example.com", password="someone.long rocks 42"),
            INVALID,
            "email",
        ),
        ("users", "CreateUser", create_user(role=res.SPACE_ROLE_UNSPECIFIED), INVALID, "role"),
        ("users", "CreateUser", create_user(email=s["agent_email"].upper()), EXISTS, "already exists"),
        (
            "users",
            "InviteUser",
            us.InviteUserRequest(email=s["agent_email"], role=ROLE["agent"]),
            EXISTS,
            "already a member",
        ),
        ("users", "InviteUser", us.InviteUserRequest(email="nope", role=ROLE["agent"]), INVALID, "email"),
        ("users", "GetUser", us.GetUserRequest(user_id="0" * 32), MISSING, "not found"),
        ("teams", "CreateTeam", tm.CreateTeamRequest(name="  billing   TEAM "), EXISTS, "already has a team"),
        ("teams", "CreateTeam", tm.CreateTeamRequest(name="   "), INVALID, "empty"),
        ("teams", "CreateTeam", tm.CreateTeamRequest(name="x" * 101), INVALID, "too long"),
        ("teams", "CreateTeam", tm.CreateTeamRequest(name="bell\x07"), INVALID, "control"),
        ("teams", "GetTeam", tm.GetTeamRequest(team_id="nope"), MISSING, "not found"),
        (
            "teams",
            "AddTeamMember",
            tm.AddTeamMemberRequest(team_id=s["team_id"], user_id="0" * 32),
            MISSING,
            "not a member",
        ),
        (
            "teams",
            "RemoveTeamMember",
            tm.RemoveTeamMemberRequest(team_id=s["team_id"], user_id=s["agent_id"]),
            MISSING,
            "not in team",
        ),
        (
            "spaces",
            "CreateSpace",
            sp.CreateSpaceRequest(organization_id=b.organization_id, name="SUPPORT"),
            EXISTS,
            "already has a space",
        ),
        (
            "spaces",
            "CreateSpace",
            sp.CreateSpaceRequest(organization_id=b.organization_id, name="Other", time_zone="Mars/Olympus"),
            INVALID,
            "time zone",
        ),
        ("spaces", "CreateSpace", sp.CreateSpaceRequest(organization_id="0" * 32, name="Other"), MISSING, "not found"),
        (
            "spaces",
            "AddSpaceMember",
            sp.AddSpaceMemberRequest(user_id="0" * 32, role=ROLE["agent"]),
            MISSING,
            "not found",
        ),
        (
            "spaces",
            "AddSpaceMember",
            sp.AddSpaceMemberRequest(user_id=s["agent_id"], role=ROLE["agent"]),
            EXISTS,
            "already a member",
        ),
        (
            "spaces",
            "SetSpaceMemberRole",
            sp.SetSpaceMemberRoleRequest(user_id=b.user_id, role=ROLE["agent"]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "at least one owner",
        ),
        (
            "spaces",
            "RemoveSpaceMember",
            sp.RemoveSpaceMemberRequest(user_id=b.user_id),
            grpc.StatusCode.FAILED_PRECONDITION,
            "at least one owner",
        ),
        ("spaces", "RemoveSpaceMember", sp.RemoveSpaceMemberRequest(user_id="0" * 32), MISSING, "not a member"),
        (
            "spaces",
            "ListSpaceMembers",
            sp.ListSpaceMembersRequest(page=common_pb2.PageRequest(page_size=1000)),
            INVALID,
            "page_size",
        ),
        (
            "spaces",
            "ListSpaceMembers",
            sp.ListSpaceMembersRequest(page=common_pb2.PageRequest(page_token="%%%")),
            INVALID,
            "page_token",
        ),
        (
            "spaces",
            "ListSpaceMembers",
            sp.ListSpaceMembersRequest(page=common_pb2.PageRequest(page_token="WzFd")),
            INVALID,
            "page_token",
        ),
        (
            "orgs",
            "CreateOrganization",
            org.CreateOrganizationRequest(name=s["org_name"].lower()),
            EXISTS,
            "already exists",
        ),
        (
            "orgs",
            "RemoveOrganizationMember",
            org.RemoveOrganizationMemberRequest(organization_id=b.organization_id, user_id=s["agent_id"]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "still a member",
        ),
        (
            "orgs",
            "SetOrganizationMemberRole",
            org.SetOrganizationMemberRoleRequest(
                organization_id=b.organization_id, user_id=b.user_id, role=res.ORGANIZATION_ROLE_MEMBER
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "at least one admin",
        ),
        (
            "keys",
            "CreateApiKey",
            keys.CreateApiKeyRequest(name="zapier", role=ROLE["agent"]),
            EXISTS,
            "already has an active API key",
        ),
        ("keys", "CreateApiKey", keys.CreateApiKeyRequest(name="No role"), INVALID, "role"),
        ("keys", "RevokeApiKey", keys.RevokeApiKeyRequest(api_key_id="0" * 32), MISSING, "not found"),
        ("availability", "SetBusinessHours", hours(("17:00", "09:00")), INVALID, "closes before it opens"),
        ("availability", "SetBusinessHours", hours(("09:00", "13:00"), ("12:00", "18:00")), INVALID, "overlaps"),
        ("availability", "SetBusinessHours", hours(("25:00", "26:00")), INVALID, "HH:MM"),
        ("availability", "SetBusinessHours", hours(("24:00", "24:00")), INVALID, "24:00"),
        (
            "availability",
            "SetBusinessHours",
            av.SetBusinessHoursRequest(time_zone="Nowhere/City"),
            INVALID,
            "time zone",
        ),
        (
            "availability",
            "SetBusinessHoursException",
            av.SetBusinessHoursExceptionRequest(exception=res.BusinessHoursException(date="2026-02-30")),
            INVALID,
            "YYYY-MM-DD",
        ),
        (
            "availability",
            "DeleteBusinessHoursException",
            av.DeleteBusinessHoursExceptionRequest(date="2031-01-01"),
            MISSING,
            "no exception",
        ),
        (
            "availability",
            "SetAvailability",
            av.SetAvailabilityRequest(status=res.AVAILABILITY_STATUS_UNSPECIFIED),
            INVALID,
            "status",
        ),
        (
            "availability",
            "SetAvailability",
            av.SetAvailabilityRequest(user_id="0" * 32, status=res.AVAILABILITY_STATUS_ONLINE),
            MISSING,
            "not a member",
        ),
        ("auth", "SwitchSpace", auth.SwitchSpaceRequest(space_id=""), INVALID, "space_id"),
    ]


async def test_bad_input_is_refused_clearly_and_changes_nothing(workspace: Workspace, setup: dict[str, Any]) -> None:
    failures = []
    for service, method, request, expected, word in cases(setup):
        before = await snapshot(workspace)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await workspace.call(service, method, request, setup["owner"])
        code, message = info.value.code(), info.value.details() or ""
        if code != expected or word.lower() not in message.lower():
            failures.append(f"{method}({request!s:.80}): {code.name} {message!r}, wanted {expected.name} '{word}'")
        if await snapshot(workspace) != before:
            failures.append(f"{method}({request!s:.80}) changed the database")
    assert not failures, "\n".join(failures)


async def test_pages_walk_every_member_once_in_a_stable_order(workspace: Workspace, setup: dict[str, Any]) -> None:
    owner = setup["owner"]
    for _ in range(4):
        await workspace.call(
            "users",
            "CreateUser",
            us.CreateUserRequest(email=unique_email("p"), password=PASSWORD, role=ROLE["agent"]),
            owner,
        )
    everyone = await workspace.call("spaces", "ListSpaceMembers", sp.ListSpaceMembersRequest(), owner)
    seen, token = [], ""
    while True:
        page = await workspace.call(
            "spaces",
            "ListSpaceMembers",
            sp.ListSpaceMembersRequest(page=common_pb2.PageRequest(page_size=2, page_token=token)),
            owner,
        )
        seen += [m.user_id for m in page.members]
        token = page.page.next_page_token
        if not token:
            break
    assert seen == [m.user_id for m in everyone.members] and len(seen) == len(set(seen)) >= 6


async def test_concurrent_duplicates_answer_already_exists_once_created(
    workspace: Workspace, setup: dict[str, Any]
) -> None:
    owner = setup["owner"]
    results = await asyncio.gather(
        *(workspace.call("teams", "CreateTeam", tm.CreateTeamRequest(name="Racing"), owner) for _ in range(8)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
    assert len(created) == 1 and codes == {EXISTS}


async def test_concurrent_refreshes_of_one_token_yield_one_new_session_token(workspace: Workspace) -> None:
    email = unique_email("race")
    await workspace.bootstrap(email=email)
    login = await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=PASSWORD))
    request = auth.RefreshRequest(refresh_token=login.tokens.refresh_token)
    results = await asyncio.gather(
        *(workspace.call("auth", "Refresh", request) for _ in range(5)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) <= 1
    assert all(r.code() == grpc.StatusCode.UNAUTHENTICATED for r in results if isinstance(r, grpc.aio.AioRpcError))


async def test_overlong_password_never_logs_in_even_when_it_starts_with_the_password(workspace: Workspace) -> None:
    email, password = unique_email("long"), "p" * 10 + "assphrase-" * 24 + "xyz"  # 253 characters
    await workspace.bootstrap(email=email, password=password)
    assert await workspace.call("auth", "Login", auth.LoginRequest(email=email, password=password))
    code, _ = await workspace.error("auth", "Login", auth.LoginRequest(email=email, password=password + "abcdef"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
