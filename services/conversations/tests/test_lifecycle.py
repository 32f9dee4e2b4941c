"""Conversation lifecycle: open (inbound, agent, workflow), assign/unassign with history, close with a
closing note under the space's rules, reopen, auto-close; invalid transitions; one event per change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import events_pb2 as ev
from parley.conversations.v1 import resources_pb2 as res


def space() -> str:
    return f"sp-{uuid.uuid4().hex[:8]}"


async def _open_by_inbound(app, stub, helpers, sp: str, contact: str = "psid-1"):
    """Publish a first message from `contact` and return the conversation it opens."""
    before = {c.conversation_id for c in (await stub.ListConversations(pb.ListConversationsRequest())).conversations}
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, f"ch-{sp}", contact, f"{sp}-{contact}-m1")])

    async def found():
        r = await stub.ListConversations(pb.ListConversationsRequest())
        return [c for c in r.conversations if c.conversation_id not in before] or None

    return (await helpers.wait_for(found))[0]


async def _events(app, helpers, subject: str, kind, conversation_id: str) -> list:
    out = []
    for e in await helpers.read_stream(app.rt.js, subject, kind):
        conv = e.conversation if e.HasField("conversation") else None
        if conv is not None and conv.conversation_id == conversation_id:
            out.append(e)
    return out


async def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


async def test_assign_and_unassign_keep_history_and_emit_one_event_per_change(
    service, stub_for, helpers, admin
) -> None:
    app, _ = service
    sp = await admin.space()
    u7, u8, t1 = await admin.member(sp), await admin.member(sp), await admin.team(sp)
    agent = stub_for(sp, subject="user:lead")
    conv = await _open_by_inbound(app, agent, helpers, sp)

    r1 = await agent.AssignConversation(pb.AssignConversationRequest(conversation_id=conv.conversation_id, user_id=u7))
    assert r1.changed and r1.conversation.assignee_user_id == u7 and r1.conversation.HasField("assigned_at")
    assert r1.conversation.metrics.HasField("time_to_first_assignment")
    again = await agent.AssignConversation(
        pb.AssignConversationRequest(conversation_id=conv.conversation_id, user_id=u7)
    )
    assert not again.changed
    r2 = await agent.AssignConversation(
        pb.AssignConversationRequest(conversation_id=conv.conversation_id, user_id=u8, team_id=t1)
    )
    assert (r2.conversation.assignee_user_id, r2.conversation.assignee_team_id) == (u8, t1)
    r3 = await agent.UnassignConversation(pb.UnassignConversationRequest(conversation_id=conv.conversation_id))
    assert r3.changed and not r3.conversation.assignee_user_id and not r3.conversation.assignee_team_id
    assert not (
        await agent.UnassignConversation(pb.UnassignConversationRequest(conversation_id=conv.conversation_id))
    ).changed

    got = await agent.GetConversation(pb.GetConversationRequest(conversation_id=conv.conversation_id))
    history = [(a.user_id, a.team_id, a.assigned_by, a.HasField("ended_at"), a.ended_by) for a in got.assignments]
    assert history == [(u7, "", "user:lead", True, "user:lead"), (u8, t1, "user:lead", True, "user:lead")]

    assigned = await helpers.wait_for(
        lambda: _n(
            _events(app, helpers, "conversations.conversation.assigned", ev.ConversationAssigned, conv.conversation_id),
            3,
        )
    )
    assert [(e.user_id, e.team_id, e.previous_user_id, e.previous_team_id) for e in assigned] == [
        (u7, "", "", ""),
        (u8, t1, u7, ""),
        ("", "", u8, t1),
    ]
    assert all(e.meta.actor == "user:lead" and e.meta.space_id == sp for e in assigned)


async def _n(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_close_follows_the_space_closing_note_rules(service, stub_for, helpers, admin) -> None:
    app, _ = service
    sp = await admin.space()
    owner = stub_for(sp, role="owner", subject="user:boss")
    agent = stub_for(sp, subject="user:a1")
    conv = await _open_by_inbound(app, agent, helpers, sp)
    sales = (await owner.CreateClosingCategory(pb.CreateClosingCategoryRequest(name="Sales"))).category
    old = (await owner.CreateClosingCategory(pb.CreateClosingCategoryRequest(name="Old"))).category
    await owner.UpdateClosingCategory(pb.UpdateClosingCategoryRequest(category_id=old.category_id, archived=True))
    await owner.UpdateSpaceSettings(
        pb.UpdateSpaceSettingsRequest(closing_category_required=True, closing_summary_required=True)
    )
    cid = conv.conversation_id

    code, details = await _code(agent.CloseConversation(pb.CloseConversationRequest(conversation_id=cid)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "closing category" in details and "summary" in details
    code, details = await _code(
        agent.CloseConversation(pb.CloseConversationRequest(conversation_id=cid, category_id=sales.category_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "summary" in details
    code, _ = await _code(
        agent.CloseConversation(
            pb.CloseConversationRequest(conversation_id=cid, category_id=str(uuid.uuid4()), summary="x")
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = await _code(
        agent.CloseConversation(
            pb.CloseConversationRequest(conversation_id=cid, category_id=old.category_id, summary="x")
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "archived" in details

    closed = (
        await agent.CloseConversation(
            pb.CloseConversationRequest(conversation_id=cid, category_id=sales.category_id, summary="Bought the plan")
        )
    ).conversation
    assert closed.status == res.CONVERSATION_STATUS_CLOSED
    assert (closed.closing_note.category_id, closed.closing_note.category_name, closed.closing_note.summary) == (
        sales.category_id,
        "Sales",
        "Bought the plan",
    )
    assert closed.closed_by == "user:a1" and closed.metrics.HasField("resolution_time")
    code, _ = await _code(agent.CloseConversation(pb.CloseConversationRequest(conversation_id=cid, summary="again")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    u1 = await admin.member(sp)
    code, _ = await _code(agent.AssignConversation(pb.AssignConversationRequest(conversation_id=cid, user_id=u1)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION

    events = await helpers.wait_for(
        lambda: _events(app, helpers, "conversations.conversation.closed", ev.ConversationClosed, cid)
    )
    assert len(events) == 1 and events[0].closing_note.summary == "Bought the plan" and not events[0].auto_closed


async def test_close_without_required_parts_is_allowed_when_the_space_does_not_require_them(
    service, stub_for, helpers
) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    conv = await _open_by_inbound(app, agent, helpers, sp)
    closed = await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=conv.conversation_id))
    assert closed.conversation.status == res.CONVERSATION_STATUS_CLOSED
    assert closed.conversation.closing_note.category_id == ""


async def test_reopen_starts_a_new_linked_conversation_and_refuses_invalid_transitions(
    service, stub_for, helpers
) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp, subject="user:a2")
    conv = await _open_by_inbound(app, agent, helpers, sp)
    cid = conv.conversation_id
    code, _ = await _code(agent.ReopenConversation(pb.ReopenConversationRequest(conversation_id=cid)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # it is open
    await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=cid))
    new = (await agent.ReopenConversation(pb.ReopenConversationRequest(conversation_id=cid))).conversation
    assert new.conversation_id != cid and new.previous_conversation_id == cid
    assert new.status == res.CONVERSATION_STATUS_OPEN and new.source == res.CONVERSATION_SOURCE_AGENT
    assert new.opened_by == "user:a2" and new.contact_id == conv.contact_id
    code, details = await _code(agent.ReopenConversation(pb.ReopenConversationRequest(conversation_id=cid)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and new.conversation_id in details
    reopened = await helpers.wait_for(
        lambda: _events(
            app, helpers, "conversations.conversation.reopened", ev.ConversationReopened, new.conversation_id
        )
    )
    assert len(reopened) == 1 and reopened[0].previous_conversation_id == cid


async def test_open_by_agent_and_by_workflow_records_the_source(service, stub_for, helpers, mint_token, admin) -> None:
    app, _ = service
    sp = await admin.space()
    t9 = await admin.team(sp)
    agent = stub_for(sp, subject="user:a3")
    conv = await _open_by_inbound(app, agent, helpers, sp)
    req = pb.OpenConversationRequest(contact_id=conv.contact_id, channel_id=conv.channel_id)
    code, details = await _code(agent.OpenConversation(req))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and conv.conversation_id in details
    await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=conv.conversation_id))

    workflow = stub_for("*", role="system", subject="service:automation")
    opened = (
        await workflow.OpenConversation(
            pb.OpenConversationRequest(
                space_id=sp, contact_id=conv.contact_id, channel_id=conv.channel_id, assignee_team_id=t9
            )
        )
    ).conversation
    assert opened.source == res.CONVERSATION_SOURCE_WORKFLOW and opened.opened_by == "service:automation"
    assert opened.assignee_team_id == t9 and opened.previous_conversation_id == conv.conversation_id
    await workflow.CloseConversation(pb.CloseConversationRequest(space_id=sp, conversation_id=opened.conversation_id))

    by_agent = (await agent.OpenConversation(req)).conversation
    assert by_agent.source == res.CONVERSATION_SOURCE_AGENT and by_agent.opened_by == "user:a3"

    code, details = await _code(
        agent.OpenConversation(pb.OpenConversationRequest(contact_id="nobody", channel_id=conv.channel_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "never written" in details
    opened_events = await helpers.wait_for(
        lambda: _events(
            app, helpers, "conversations.conversation.opened", ev.ConversationOpened, by_agent.conversation_id
        )
    )
    assert len(opened_events) == 1 and opened_events[0].meta.actor == "user:a3"


async def test_auto_close_after_inactivity_counted_from_the_last_agent_message(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    owner = stub_for(sp, role="owner")
    agent = stub_for(sp, subject="user:a4")
    await owner.UpdateSpaceSettings(pb.UpdateSpaceSettingsRequest(auto_close_after=Duration(seconds=3600)))
    idle = await _open_by_inbound(app, agent, helpers, sp, "psid-idle")
    answered_back = await _open_by_inbound(app, agent, helpers, sp, "psid-back")
    never_answered = await _open_by_inbound(app, agent, helpers, sp, "psid-none")
    for conv in (idle, answered_back):
        await agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, text="How can I help?"))
    # the second contact writes again after the agent: the agent owes a reply, it is not idle
    await helpers.publish_inbound(
        app.rt.js,
        [helpers.inbound(sp, f"ch-{sp}", "psid-back", f"{sp}-back-2", at=datetime.now(UTC) + timedelta(seconds=1))],
    )

    async def answered():
        r = await agent.GetConversation(pb.GetConversationRequest(conversation_id=answered_back.conversation_id))
        return r.conversation.metrics.incoming_messages == 2

    await helpers.wait_for(answered)
    real_clock = app.service.clock
    assert await app.service.auto_close_due() == 0  # not yet an hour
    app.service.clock = lambda: real_clock() + timedelta(hours=1, minutes=1)
    try:
        assert await app.service.auto_close_due() == 1
        assert await app.service.auto_close_due() == 0
    finally:
        app.service.clock = real_clock
    states = {}
    for conv in (idle, answered_back, never_answered):
        got = (
            await agent.GetConversation(pb.GetConversationRequest(conversation_id=conv.conversation_id))
        ).conversation
        states[conv.contact_id] = got
    assert states[idle.contact_id].status == res.CONVERSATION_STATUS_CLOSED
    assert states[idle.contact_id].closed_by == "system"
    assert "automatically" in states[idle.contact_id].closing_note.summary
    assert states[answered_back.contact_id].status == res.CONVERSATION_STATUS_OPEN
    assert states[never_answered.contact_id].status == res.CONVERSATION_STATUS_OPEN
    closed = await helpers.wait_for(
        lambda: _events(app, helpers, "conversations.conversation.closed", ev.ConversationClosed, idle.conversation_id)
    )
    assert len(closed) == 1 and closed[0].auto_closed and closed[0].meta.actor == "system"


async def test_space_settings_validate_the_auto_close_period(service, stub_for) -> None:
    owner = stub_for(space(), role="owner")
    code, _ = await _code(
        owner.UpdateSpaceSettings(pb.UpdateSpaceSettingsRequest(auto_close_after=Duration(seconds=5)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    s = (await owner.UpdateSpaceSettings(pb.UpdateSpaceSettingsRequest(closing_summary_required=True))).settings
    assert s.closing_summary_required and not s.closing_category_required and not s.HasField("auto_close_after")
    assert (await owner.GetSpaceSettings(pb.GetSpaceSettingsRequest())).settings.closing_summary_required
