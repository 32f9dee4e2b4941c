"""Conversations are assigned only to members and teams of the space (asked of the real workspace), and
are released when a member leaves the space or a team is deleted: one event per conversation, restart-safe."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import grpc
import nats
import pytest
from opentelemetry.context import Context
from parley.contacts.v1 import contact_pb2 as cmsg
from parley.contacts.v1 import contacts_service_pb2 as cpb
from parley.contacts.v1 import events_pb2 as cev
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import events_pb2 as ev
from parley.workspace.v1 import events_pb2 as wev
from parley_kit.contracts import workspace as workspace_contract
from parley_kit.directory import AssigneeReleases, WorkspaceDirectory
from parley_kit.local.servers import free_port
from parley_kit.nats import Delivery


async def _open(app: Any, stub: Any, helpers: Any, sp: str, contact: str) -> Any:
    """The conversation a first message from `contact` opens."""
    before = {c.conversation_id for c in (await stub.ListConversations(pb.ListConversationsRequest())).conversations}
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, f"ch-{sp}", contact, f"{sp}-{contact}-1")])

    async def found() -> Any:
        r = await stub.ListConversations(pb.ListConversationsRequest())
        return [c for c in r.conversations if c.conversation_id not in before] or None

    return (await helpers.wait_for(found))[0]


async def _get(stub: Any, conversation_id: str) -> Any:
    return (await stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation_id))).conversation


async def _assigned_events(app: Any, helpers: Any, sp: str) -> list[ev.ConversationAssigned]:
    events = await helpers.read_stream(app.rt.js, "conversations.conversation.assigned", ev.ConversationAssigned)
    return [e for e in events if e.meta.space_id == sp]


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details() or ""


async def test_only_members_and_teams_of_the_space_are_assigned_and_a_refusal_changes_nothing(
    service: Any, stub_for: Any, helpers: Any, admin: Any
) -> None:
    app, _ = service
    sp, other = await admin.space(), await admin.space()
    user, team = await admin.member(sp), await admin.team(sp)
    outsider, foreign_team = await admin.member(other), await admin.team(other)
    agent = stub_for(sp)
    conv = await _open(app, agent, helpers, sp, "psid-check")
    cid = conv.conversation_id
    await agent.AssignConversation(pb.AssignConversationRequest(conversation_id=cid, user_id=user, team_id=team))
    for user_id, team_id, message in [
        ("u-typo", "", "user 'u-typo' is not a member of this space"),
        (outsider, "", f"user '{outsider}' is not a member of this space"),
        ("", "t-typo", "team 't-typo' is not a team of this space"),
        (user, foreign_team, f"team '{foreign_team}' is not a team of this space"),
    ]:
        request = pb.AssignConversationRequest(conversation_id=cid, user_id=user_id, team_id=team_id)
        code, details = await _status(agent.AssignConversation(request))
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, message)
    overlong = pb.AssignConversationRequest(conversation_id=cid, user_id="u" * 65)
    code, details = await _status(agent.AssignConversation(overlong))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id is longer than 64 characters; nothing was changed",
    )
    got = await _get(agent, cid)
    assert (got.assignee_user_id, got.assignee_team_id) == (user, team)
    history = (await agent.GetConversation(pb.GetConversationRequest(conversation_id=cid))).assignments
    assert len(history) == 1
    assert [(e.user_id, e.team_id) for e in await _assigned_events(app, helpers, sp)] == [(user, team)]


async def test_opening_with_an_assignee_and_a_workflow_are_checked_alike(
    service: Any, stub_for: Any, helpers: Any, admin: Any
) -> None:
    app, _ = service
    sp = await admin.space()
    agent = stub_for(sp)
    conv = await _open(app, agent, helpers, sp, "psid-open")
    await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=conv.conversation_id))
    workflow = stub_for("*", role="system", subject="service:automation")
    request = pb.OpenConversationRequest(
        space_id=sp, contact_id=conv.contact_id, channel_id=conv.channel_id, assignee_user_id="u-typo"
    )
    code, details = await _status(workflow.OpenConversation(request))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "user 'u-typo' is not a member of this space")
    listed = await agent.ListConversations(pb.ListConversationsRequest(contact_id=conv.contact_id))
    assert [c.conversation_id for c in listed.conversations] == [conv.conversation_id]  # none opened
    assign = pb.AssignConversationRequest(space_id=sp, conversation_id=conv.conversation_id, user_id="u-typo")
    assert (await _status(workflow.AssignConversation(assign)))[0] == grpc.StatusCode.NOT_FOUND
    request.assignee_user_id = await admin.member(sp)
    opened = (await workflow.OpenConversation(request)).conversation
    assert opened.assignee_user_id == request.assignee_user_id


async def test_a_workspace_that_cannot_answer_makes_assign_unavailable_and_changes_nothing(
    service: Any, stub_for: Any, helpers: Any, admin: Any, make_settings: Any
) -> None:
    app, _ = service
    sp = await admin.space()
    agent = stub_for(sp)
    conv = await _open(app, agent, helpers, sp, "psid-down")
    user = await admin.member(sp)
    down = make_settings(workspace_addr=f"127.0.0.1:{free_port()}", ingest_enabled=False, assignee_timeout_seconds=0.5)
    async with helpers.serve(down) as (_, target):
        blind = stub_for(sp, target=target)
        request = pb.AssignConversationRequest(conversation_id=conv.conversation_id, user_id=user)
        code, details = await _status(blind.AssignConversation(request))
        assert code == grpc.StatusCode.UNAVAILABLE and "nothing was changed" in details
        unassign = await blind.UnassignConversation(
            pb.UnassignConversationRequest(conversation_id=conv.conversation_id)
        )
        assert not unassign.changed  # unassigning needs no check
    got = await _get(agent, conv.conversation_id)
    assert not got.assignee_user_id and not got.HasField("assigned_at")
    assert await _assigned_events(app, helpers, sp) == []


async def test_a_member_who_leaves_is_released_from_open_conversations_one_event_each(
    service: Any, stub_for: Any, helpers: Any, admin: Any, contacts_stub: Any
) -> None:
    app, _ = service
    sp = await admin.space()
    leaver, stayer, team = await admin.member(sp), await admin.member(sp), await admin.team(sp)
    agent = stub_for(sp)
    direct, with_team, followed, others, closed = [
        await _open(app, agent, helpers, sp, f"psid-{name}")
        for name in ("direct", "with-team", "followed", "others", "closed")
    ]
    for conv, user_id, team_id in [
        (direct, leaver, ""),
        (with_team, leaver, team),
        (others, stayer, ""),
        (closed, leaver, ""),
    ]:
        request = pb.AssignConversationRequest(conversation_id=conv.conversation_id, user_id=user_id, team_id=team_id)
        await agent.AssignConversation(request)
    await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=closed.conversation_id))
    # followed: assigned through its contact, so contacts releases it too (both paths race; one event)
    await contacts_stub(sp).AssignContacts(
        cpb.AssignContactsRequest(contact_ids=[followed.contact_id], assignee=cmsg.Assignee(user_id=leaver))
    )
    await helpers.wait_for(lambda: _assignee_is(agent, followed.conversation_id, (leaver, "")))
    await admin.remove_member(sp, leaver)

    for conv, expected in [(direct, ("", "")), (with_team, ("", team)), (followed, ("", ""))]:
        await helpers.wait_for(lambda c=conv, e=expected: _assignee_is(agent, c.conversation_id, e))
    assert await _assignee_is(agent, others.conversation_id, (stayer, ""))
    assert await _assignee_is(agent, closed.conversation_id, (leaver, ""))  # closed: its history stays

    released = [e for e in await _assigned_events(app, helpers, sp) if e.previous_user_id == leaver]
    assert sorted(e.conversation.conversation_id for e in released) == sorted(
        c.conversation_id for c in (direct, with_team, followed)
    )
    history = await agent.GetConversation(pb.GetConversationRequest(conversation_id=with_team.conversation_id))
    assert [(a.user_id, a.team_id, a.HasField("ended_at")) for a in history.assignments] == [
        (leaver, team, True),
        ("", team, False),
    ]
    code, _ = await _status(
        agent.AssignConversation(pb.AssignConversationRequest(conversation_id=others.conversation_id, user_id=leaver))
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_leaver_is_released_only_where_they_still_hold_a_contacts_conversation(
    service: Any, stub_for: Any, helpers: Any, admin: Any, contacts_stub: Any
) -> None:
    app, _ = service
    sp = await admin.space()
    leaver, taker, next_one = await admin.member(sp), await admin.member(sp), await admin.member(sp)
    agent = stub_for(sp)
    contacts = contacts_stub(sp)
    taken, kept = [await _open(app, agent, helpers, sp, f"psid-{name}") for name in ("taken", "kept")]
    both = [taken.contact_id, kept.contact_id]
    await contacts.AssignContacts(cpb.AssignContactsRequest(contact_ids=both, assignee=cmsg.Assignee(user_id=leaver)))
    for conv in (taken, kept):
        await helpers.wait_for(lambda c=conv: _assignee_is(agent, c.conversation_id, (leaver, "")))
    # another agent takes one of the leaver's conversations
    await agent.AssignConversation(pb.AssignConversationRequest(conversation_id=taken.conversation_id, user_id=taker))
    before = len(await _assigned_events(app, helpers, sp))
    await admin.remove_member(sp, leaver)

    async def contacts_released() -> bool:
        events = await helpers.read_stream(app.rt.js, "contacts.contact.assigned", cev.ContactAssigned)
        return {e.contact_id for e in events if e.released.user_id == leaver} == set(both)

    await helpers.wait_for(contacts_released)
    await helpers.wait_for(lambda: _settled(app.rt.js, "CONTACTS", "conversations--contacts"))
    await helpers.wait_for(lambda: _assignee_is(agent, kept.conversation_id, ("", "")))
    assert await _assignee_is(agent, taken.conversation_id, (taker, ""))
    after = (await _assigned_events(app, helpers, sp))[before:]
    assert [(e.conversation.conversation_id, e.previous_user_id) for e in after] == [(kept.conversation_id, leaver)]
    # an assignment of the contact (not a release) still wins over the agent's, as the README says
    request = cpb.AssignContactsRequest(contact_ids=[taken.contact_id], assignee=cmsg.Assignee(user_id=next_one))
    await contacts.AssignContacts(request)
    await helpers.wait_for(lambda: _assignee_is(agent, taken.conversation_id, (next_one, "")))


async def _settled(js: Any, stream: str, durable: str) -> bool:
    info = await js.consumer_info(stream, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_deleted_team_is_released_from_open_conversations(
    service: Any, stub_for: Any, helpers: Any, admin: Any
) -> None:
    app, _ = service
    sp = await admin.space()
    user, team = await admin.member(sp), await admin.team(sp)
    agent = stub_for(sp)
    team_only, with_user = [await _open(app, agent, helpers, sp, f"psid-{n}") for n in ("team", "both")]
    await agent.AssignConversation(
        pb.AssignConversationRequest(conversation_id=team_only.conversation_id, team_id=team)
    )
    await agent.AssignConversation(
        pb.AssignConversationRequest(conversation_id=with_user.conversation_id, user_id=user, team_id=team)
    )
    await admin.delete_team(team)
    await helpers.wait_for(lambda: _assignee_is(agent, team_only.conversation_id, ("", "")))
    await helpers.wait_for(lambda: _assignee_is(agent, with_user.conversation_id, (user, "")))
    released = [e for e in await _assigned_events(app, helpers, sp) if e.previous_team_id == team and not e.team_id]
    assert len(released) == 2


async def test_a_redelivered_removal_finds_nothing_left_to_release(
    service: Any, stub_for: Any, helpers: Any, admin: Any, nats_url: str, workspace_service: Any, mint_token: Any
) -> None:
    app, _ = service
    sp = await admin.space()
    leaver = await admin.member(sp)
    agent = stub_for(sp)
    conv = await _open(app, agent, helpers, sp, "psid-again")
    await agent.AssignConversation(pb.AssignConversationRequest(conversation_id=conv.conversation_id, user_id=leaver))
    await admin.remove_member(sp, leaver)
    await helpers.wait_for(lambda: _assignee_is(agent, conv.conversation_id, ("", "")))
    before = len(await _assigned_events(app, helpers, sp))
    token = mint_token(space_id="*", role="system", subject="service:conversations")
    directory = WorkspaceDirectory.connect(workspace_service.target, token, service="conversations")
    try:
        handler = AssigneeReleases(
            release_member=app.service.release_member, release_team=app.service.release_team, directory=directory
        )
        await handler(await _removal(nats_url, sp, leaver))
    finally:
        await directory.close()
    assert len(await _assigned_events(app, helpers, sp)) == before


async def _removal(nats_url: str, space: str, user: str) -> Delivery:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(workspace_contract.MEMBER_REMOVED, ordered_consumer=True)
        while True:
            msg = await sub.next_msg(timeout=10)
            event = wev.MemberRemoved.FromString(msg.data)
            if (event.space_id, event.user_id) == (space, user):
                return Delivery(None, msg.data, {}, msg.subject, "", "", 2, 0, Context())
    finally:
        await nc.close()


async def _assignee_is(stub: Any, conversation_id: str, expected: tuple[str, str]) -> bool:
    conv = await _get(stub, conversation_id)
    return (conv.assignee_user_id, conv.assignee_team_id) == expected


def test_without_the_workspace_address_the_service_refuses_to_start(migrated: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_DATABASE_URL"] = migrated
    refused = subprocess.run(
        [sys.executable, "-m", "parley_conversations", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "PARLEY_ASSIGNEE_CHECK: Value error, set PARLEY_WORKSPACE_ADDR" in refused.stderr
