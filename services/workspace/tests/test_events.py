"""Each change writes exactly one event to the outbox, and the relay publishes it to JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from parley.workspace.v1 import api_key_service_pb2 as keys
from parley.workspace.v1 import availability_service_pb2 as av
from parley.workspace.v1 import events_pb2 as ev
from parley.workspace.v1 import resources_pb2 as res
from parley.workspace.v1 import space_service_pb2 as sp
from parley.workspace.v1 import team_service_pb2 as tm
from parley.workspace.v1 import user_service_pb2 as us
from sqlalchemy import text

from .conftest import PASSWORD, ROLE, Workspace, unique, unique_email


async def new_events(ws: Workspace, after: int) -> list[tuple[int, str, str]]:
    async with ws.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, subject, event_type FROM outbox WHERE id > :after ORDER BY id"), {"after": after}
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def last_id(ws: Workspace) -> int:
    async with ws.engine.connect() as conn:
        return int((await conn.execute(text("SELECT coalesce(max(id), 0) FROM outbox"))).scalar_one())


async def test_each_change_emits_exactly_one_event(workspace: Workspace) -> None:
    boot = await workspace.bootstrap()
    owner = boot.tokens.access_token
    member = await workspace.call(
        "users", "CreateUser", us.CreateUserRequest(email=unique_email(), password=PASSWORD, role=ROLE["agent"]), owner
    )
    user_id = member.user.id
    state: dict[str, Any] = {}

    async def create_team() -> None:
        state["team"] = (
            await workspace.call("teams", "CreateTeam", tm.CreateTeamRequest(name=unique("T")), owner)
        ).team.id

    async def create_key() -> None:
        reply = await workspace.call(
            "keys", "CreateApiKey", keys.CreateApiKeyRequest(name="k", role=ROLE["agent"]), owner
        )
        state["key"] = reply.api_key.id

    def rpc(service: str, method: str, build: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
        return lambda: workspace.call(service, method, build(), owner)

    changes: list[tuple[str, Callable[[], Awaitable[Any]], str, type]] = [
        ("create team", create_team, "workspace.team.created", ev.TeamCreated),
        (
            "rename team",
            rpc("teams", "RenameTeam", lambda: tm.RenameTeamRequest(team_id=state["team"], name=unique("R"))),
            "workspace.team.renamed",
            ev.TeamRenamed,
        ),
        (
            "add team member",
            rpc("teams", "AddTeamMember", lambda: tm.AddTeamMemberRequest(team_id=state["team"], user_id=user_id)),
            "workspace.team.member_added",
            ev.TeamMemberAdded,
        ),
        (
            "remove team member",
            rpc(
                "teams", "RemoveTeamMember", lambda: tm.RemoveTeamMemberRequest(team_id=state["team"], user_id=user_id)
            ),
            "workspace.team.member_removed",
            ev.TeamMemberRemoved,
        ),
        (
            "delete team",
            rpc("teams", "DeleteTeam", lambda: tm.DeleteTeamRequest(team_id=state["team"])),
            "workspace.team.deleted",
            ev.TeamDeleted,
        ),
        (
            "change role",
            rpc(
                "spaces",
                "SetSpaceMemberRole",
                lambda: sp.SetSpaceMemberRoleRequest(user_id=user_id, role=ROLE["manager"]),
            ),
            "workspace.member.role_changed",
            ev.MemberRoleChanged,
        ),
        (
            "set availability",
            rpc(
                "availability",
                "SetAvailability",
                lambda: av.SetAvailabilityRequest(user_id=user_id, status=res.AVAILABILITY_STATUS_ONLINE),
            ),
            "workspace.availability.changed",
            ev.AvailabilityChanged,
        ),
        (
            "set hours",
            rpc("availability", "SetBusinessHours", lambda: av.SetBusinessHoursRequest(time_zone="Europe/Paris")),
            "workspace.business_hours.changed",
            ev.BusinessHoursChanged,
        ),
        (
            "rename space",
            rpc("spaces", "RenameSpace", lambda: sp.RenameSpaceRequest(name=unique("S"))),
            "workspace.space.updated",
            ev.SpaceUpdated,
        ),
        ("create key", create_key, None, None),  # creating a key is nobody else's business
        (
            "revoke key",
            rpc("keys", "RevokeApiKey", lambda: keys.RevokeApiKeyRequest(api_key_id=state["key"])),
            "workspace.api_key.revoked",
            ev.ApiKeyRevoked,
        ),
        (
            "remove member",
            rpc("spaces", "RemoveSpaceMember", lambda: sp.RemoveSpaceMemberRequest(user_id=user_id)),
            "workspace.member.removed",
            ev.MemberRemoved,
        ),
        (
            "add member back",
            rpc("spaces", "AddSpaceMember", lambda: sp.AddSpaceMemberRequest(user_id=user_id, role=ROLE["agent"])),
            "workspace.member.added",
            ev.MemberAdded,
        ),
    ]
    for name, change, subject, message_type in changes:
        before = await last_id(workspace)
        await change()
        events = await new_events(workspace, before)
        expected = [] if subject is None else [(subject, message_type.DESCRIPTOR.full_name)]
        assert [(s, t) for _, s, t in events] == expected, name
    # a change that changes nothing emits nothing
    before = await last_id(workspace)
    reply = await workspace.call(
        "availability",
        "SetAvailability",
        av.SetAvailabilityRequest(user_id=user_id, status=res.AVAILABILITY_STATUS_OFFLINE),
        owner,
    )
    assert not reply.changed or len(await new_events(workspace, before)) == 1
    before = await last_id(workspace)
    again = await workspace.call(
        "availability",
        "SetAvailability",
        av.SetAvailabilityRequest(user_id=user_id, status=res.AVAILABILITY_STATUS_OFFLINE),
        owner,
    )
    assert not again.changed and await new_events(workspace, before) == []


async def test_a_refused_change_emits_nothing(workspace: Workspace) -> None:
    boot = await workspace.bootstrap()
    before = await last_id(workspace)
    await workspace.error("teams", "CreateTeam", tm.CreateTeamRequest(name=""), boot.tokens.access_token)
    await workspace.error(
        "spaces", "RemoveSpaceMember", sp.RemoveSpaceMemberRequest(user_id=boot.user_id), boot.tokens.access_token
    )
    assert await new_events(workspace, before) == []


async def test_events_reach_jetstream_with_their_meta(workspace: Workspace, nats_url: str) -> None:
    boot = await workspace.bootstrap()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            "workspace.team.created", ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.NEW
        )
        name = unique("Escalations")
        team = await workspace.call("teams", "CreateTeam", tm.CreateTeamRequest(name=name), boot.tokens.access_token)
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            msg = await sub.next_msg(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
            event = ev.TeamCreated.FromString(msg.data)
            if event.team.id == team.team.id:
                break
        assert event.team.name == name and event.team.space_id == boot.space_id
        assert event.meta.space_id == boot.space_id and event.meta.actor == f"user:{boot.user_id}"
        assert msg.headers and msg.headers.get("Nats-Msg-Id") == event.meta.event_id
        await sub.unsubscribe()
    finally:
        await nc.close()
