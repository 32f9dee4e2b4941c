"""Replies: stored queued + OutboundSendRequest through the outbox, shortcuts rendered at send time,
channel windows, idempotent retries, and the gateway's statuses coming back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from parley.channel_gateway.v1 import events_pb2 as gw
from parley.common.v1 import common_pb2 as common
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import events_pb2 as ev
from parley.conversations.v1 import resources_pb2 as res
from parley_kit.contracts import channel_gateway as cg


def space() -> str:
    return f"sp-{uuid.uuid4().hex[:8]}"


async def _conversation(
    app, stub, helpers, sp, *, contact="psid-1", at=None, channel_type=common.CHANNEL_TYPE_MESSENGER, first_name="Ada"
):
    before = {c.conversation_id for c in (await stub.ListConversations(pb.ListConversationsRequest())).conversations}
    await helpers.publish_inbound(
        app.rt.js,
        [
            helpers.inbound(
                sp, f"ch-{sp}", contact, f"{sp}-{contact}-1", at=at, channel_type=channel_type, first_name=first_name
            )
        ],
    )

    async def found():
        r = await stub.ListConversations(pb.ListConversationsRequest())
        return [c for c in r.conversations if c.conversation_id not in before] or None

    return (await helpers.wait_for(found))[0]


async def _requests(app, helpers, sp) -> list[gw.OutboundSendRequest]:
    return [
        r
        for r in await helpers.read_stream(app.rt.js, cg.OUTBOUND_REQUESTED, gw.OutboundSendRequest)
        if r.space_id == sp
    ]


async def _code(call):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


async def test_reply_is_stored_queued_and_handed_to_the_gateway_through_the_outbox(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp, subject="user:a1")
    conv = await _conversation(app, agent, helpers, sp)
    msg = (
        await agent.SendMessage(
            pb.SendMessageRequest(
                conversation_id=conv.conversation_id,
                text="Here is the invoice",
                attachments=[gw.OutboundAttachment(kind=gw.MEDIA_KIND_FILE, url="https://x.test/inv.pdf")],
                quick_replies=[gw.OutboundQuickReply(title="Thanks", payload="THANKS")],
            )
        )
    ).message
    assert msg.status == gw.DELIVERY_STATUS_QUEUED and msg.direction == res.MESSAGE_DIRECTION_OUTBOUND
    assert msg.sender_type == res.SENDER_TYPE_USER and msg.sender == "user:a1"
    (request,) = await helpers.wait_for(lambda: _requests(app, helpers, sp))
    assert request.request_id == msg.message_id == request.origin_ref and request.origin == "conversations"
    assert (request.channel_id, request.contact_external_id, request.text) == (
        conv.channel_id,
        "psid-1",
        "Here is the invoice",
    )
    assert [a.url for a in request.attachments] == ["https://x.test/inv.pdf"]
    assert [q.payload for q in request.quick_replies] == ["THANKS"]
    assert request.contact_last_inbound_at.ToDatetime(tzinfo=UTC) == conv.last_inbound_at.ToDatetime(tzinfo=UTC)
    sent = [
        e
        for e in await helpers.read_stream(app.rt.js, "conversations.message.sent", ev.MessageSent)
        if e.meta.space_id == sp
    ]
    assert [e.message.message_id for e in sent] == [msg.message_id]
    got = (await agent.GetConversation(pb.GetConversationRequest(conversation_id=conv.conversation_id))).conversation
    assert got.metrics.outgoing_messages == 1 and got.metrics.HasField("first_response_time")
    assert got.metrics.responses == 1 and got.HasField("last_agent_message_at")


async def test_retried_send_with_the_same_client_request_id_creates_one_message(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    conv = await _conversation(app, agent, helpers, sp)
    req = pb.SendMessageRequest(conversation_id=conv.conversation_id, text="once", client_request_id="req-1")
    first = (await agent.SendMessage(req)).message
    second = (await agent.SendMessage(req)).message
    assert first.message_id == second.message_id
    msgs = (await agent.ListMessages(pb.ListMessagesRequest(conversation_id=conv.conversation_id))).messages
    assert [m.text for m in msgs] == ["hello", "once"]


async def test_shortcut_renders_contact_fields_and_user_name_at_send_time(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    manager = stub_for(sp, role="manager")
    agent = stub_for(sp, subject="user:a5", name="Grace Hopper")
    conv = await _conversation(app, agent, helpers, sp, first_name="Ada")
    await manager.CreateShortcut(
        pb.CreateShortcutRequest(
            name="greet",
            text="Hi {{contact.first_name}}, {{user.name}} here. Your plan: {{contact.fields.plan|free}}",
            quick_replies=[gw.OutboundQuickReply(title="Upgrade", payload="UP")],
        )
    )
    await manager.CreateShortcut(pb.CreateShortcutRequest(name="plan", text="Plan {{contact.fields.plan}}"))
    preview = await agent.RenderShortcut(
        pb.RenderShortcutRequest(shortcut_name="greet", conversation_id=conv.conversation_id)
    )
    assert preview.text == "Hi Ada, Grace Hopper here. Your plan: free"
    msg = (
        await agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, shortcut_name="greet"))
    ).message
    assert msg.text == "Hi Ada, Grace Hopper here. Your plan: free" and msg.shortcut_id
    assert [q.title for q in msg.quick_replies] == ["Upgrade"]
    code, details = await _code(
        agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, shortcut_name="plan"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "{{contact.fields.plan}}" in details
    requests = await helpers.wait_for(lambda: _requests(app, helpers, sp))
    assert all("{{" not in r.text for r in requests) and len(requests) == 1


async def test_shortcuts_are_managed_by_managers_and_validated(service, stub_for) -> None:
    sp = space()
    manager = stub_for(sp, role="manager", subject="user:m1")
    agent = stub_for(sp)
    code, _ = await _code(agent.CreateShortcut(pb.CreateShortcutRequest(name="x", text="hi")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, details = await _code(manager.CreateShortcut(pb.CreateShortcutRequest(name="bad", text="{{contact.secret}}")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown variable" in details
    code, _ = await _code(manager.CreateShortcut(pb.CreateShortcutRequest(name="Bad Name", text="hi")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    s = (
        await manager.CreateShortcut(pb.CreateShortcutRequest(name="bye", text="Bye {{contact.first_name|friend}}"))
    ).shortcut
    assert s.created_by == "user:m1"
    code, _ = await _code(manager.CreateShortcut(pb.CreateShortcutRequest(name="bye", text="again")))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    for name in ("a1", "a2", "a3"):
        await manager.CreateShortcut(pb.CreateShortcutRequest(name=name, text=name))
    page1 = await agent.ListShortcuts(pb.ListShortcutsRequest(page={"page_size": 2}))
    page2 = await agent.ListShortcuts(
        pb.ListShortcutsRequest(page={"page_size": 2, "page_token": page1.page.next_page_token})
    )
    assert [x.name for x in page1.shortcuts] + [x.name for x in page2.shortcuts] == ["a1", "a2", "a3", "bye"]
    assert not page2.page.next_page_token
    assert [x.name for x in (await agent.ListShortcuts(pb.ListShortcutsRequest(name_prefix="a"))).shortcuts] == [
        "a1",
        "a2",
        "a3",
    ]
    updated = (await manager.UpdateShortcut(pb.UpdateShortcutRequest(shortcut_id=s.shortcut_id, text="Ciao"))).shortcut
    assert updated.text == "Ciao" and updated.name == "bye"
    await manager.DeleteShortcut(pb.DeleteShortcutRequest(shortcut_id=s.shortcut_id))
    code, _ = await _code(agent.GetShortcut(pb.GetShortcutRequest(shortcut_id=s.shortcut_id)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_messenger_reply_outside_24_hours_is_refused_unless_human_agent_tag(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    conv = await _conversation(app, agent, helpers, sp, at=datetime.now(UTC) - timedelta(hours=30))
    code, details = await _code(
        agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, text="late"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "24-hour" in details
    tagged = await agent.SendMessage(
        pb.SendMessageRequest(conversation_id=conv.conversation_id, text="late", tag=gw.MESSAGE_TAG_HUMAN_AGENT)
    )
    assert tagged.message.tag == gw.MESSAGE_TAG_HUMAN_AGENT
    (request,) = await helpers.wait_for(lambda: _requests(app, helpers, sp))
    assert request.tag == gw.MESSAGE_TAG_HUMAN_AGENT


async def test_whatsapp_outside_window_accepts_only_templates(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    conv = await _conversation(
        app, agent, helpers, sp, at=datetime.now(UTC) - timedelta(hours=25), channel_type=common.CHANNEL_TYPE_WHATSAPP
    )
    code, details = await _code(
        agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, text="hi"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "template" in details
    msg = await agent.SendMessage(
        pb.SendMessageRequest(
            conversation_id=conv.conversation_id,
            template=gw.OutboundTemplate(name="order_update", language="en", body_parameters=["42"]),
        )
    )
    assert msg.message.template.name == "order_update"


async def test_reply_to_a_closed_conversation_is_refused(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    conv = await _conversation(app, agent, helpers, sp)
    await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=conv.conversation_id))
    code, details = await _code(
        agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, text="x"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "closed" in details
    code, _ = await _code(agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id)))
    assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


async def test_gateway_statuses_update_the_reply_and_early_receipts_wait_for_its_id(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    conv = await _conversation(app, agent, helpers, sp)
    msg = (await agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, text="ping"))).message
    now = datetime.now(UTC)
    # The delivery receipt (inbound) overtakes the gateway's "sent" status: it must wait, then apply.
    await helpers.publish_inbound(
        app.rt.js,
        [
            helpers.inbound(
                sp, f"ch-{sp}", "psid-1", "dlv-x", text="", kind=gw.INBOUND_KIND_DELIVERY, at=now,
                receipt=gw.Receipt(status=gw.DELIVERY_STATUS_DELIVERED, provider_message_ids=["mid.reply"]),
            )
        ],
    )  # fmt: skip

    async def pending_receipt():
        from sqlalchemy import text

        async with app.rt.engine.connect() as c:
            return await c.scalar(text("SELECT count(*) FROM pending_receipts WHERE provider_message_id = 'mid.reply'"))

    await helpers.wait_for(pending_receipt)

    async def status(status, event_id):
        status_event = gw.OutboundStatusEvent(
            event_id=event_id, request_id=msg.message_id, space_id=sp, channel_id=conv.channel_id,
            origin="conversations", origin_ref=msg.message_id, status=status, provider_message_id="mid.reply",
            occurred_at=helpers.ts(now),
        )  # fmt: skip
        await app.rt.js.publish(cg.OUTBOUND_STATUS, status_event.SerializeToString(), headers={"Nats-Msg-Id": event_id})

    async def delivered():
        m = (await agent.ListMessages(pb.ListMessagesRequest(conversation_id=conv.conversation_id))).messages[-1]
        return m if m.status == gw.DELIVERY_STATUS_DELIVERED else None

    await status(gw.DELIVERY_STATUS_SENT, "st-1")
    await helpers.wait_for(delivered)
    await status(gw.DELIVERY_STATUS_QUEUED, "st-0")  # stale and late: must not move the status back
    await status(gw.DELIVERY_STATUS_SENT, "st-1-again")

    async def statuses_consumed():
        info = await app.rt.js.consumer_info(cg.STREAM, "conversations--outbound-status")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await helpers.wait_for(statuses_consumed)
    m = await helpers.wait_for(delivered)
    assert m.provider_message_id == "mid.reply" and m.HasField("delivered_at")
    changes = await helpers.wait_for(lambda: _n(_status_events(app, helpers, msg.message_id), 2))
    assert [(c.previous_status, c.status) for c in changes] == [
        (gw.DELIVERY_STATUS_QUEUED, gw.DELIVERY_STATUS_SENT),
        (gw.DELIVERY_STATUS_SENT, gw.DELIVERY_STATUS_DELIVERED),
    ]


async def _status_events(app, helpers, message_id):
    return [
        e
        for e in await helpers.read_stream(app.rt.js, "conversations.message.status_changed", ev.MessageStatusChanged)
        if e.message_id == message_id
    ]


async def _n(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_gateway_failure_marks_the_reply_failed_with_the_reason(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    conv = await _conversation(app, agent, helpers, sp)
    msg = (await agent.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, text="x"))).message
    failed = gw.OutboundStatusEvent(
        event_id="st-f", request_id=msg.message_id, space_id=sp, channel_id=conv.channel_id, origin="conversations",
        origin_ref=msg.message_id, status=gw.DELIVERY_STATUS_FAILED, error_code="10",
        error_message="outside the allowed window", occurred_at=helpers.ts(datetime.now(UTC)),
    )  # fmt: skip
    await app.rt.js.publish(cg.OUTBOUND_STATUS, failed.SerializeToString(), headers={"Nats-Msg-Id": "st-f"})

    async def is_failed():
        m = (await agent.ListMessages(pb.ListMessagesRequest(conversation_id=conv.conversation_id))).messages[-1]
        return m if m.status == gw.DELIVERY_STATUS_FAILED else None

    m = await helpers.wait_for(is_failed)
    assert (m.error_code, m.error_message) == ("10", "outside the allowed window")


async def test_user_name_comes_from_the_workspace_when_the_token_has_none(
    service, stub_for, helpers, workspace_service
):
    app, _ = service
    sp = await workspace_service.admin.space()
    katherine = await workspace_service.admin.member(sp, display_name="Katherine Johnson")
    manager = stub_for(sp, role="manager")
    await manager.CreateShortcut(pb.CreateShortcutRequest(name="sig", text="{{user.first_name}} from support"))
    await manager.CreateShortcut(pb.CreateShortcutRequest(name="sig2", text="{{user.name|Your team}} here"))
    named = stub_for(sp, subject=f"user:{katherine}")
    conv = await _conversation(app, named, helpers, sp)
    msg = (
        await named.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, shortcut_name="sig"))
    ).message
    assert msg.text == "Katherine from support"
    unknown = stub_for(sp, subject="user:u-unknown")
    code, details = await _code(
        unknown.SendMessage(pb.SendMessageRequest(conversation_id=conv.conversation_id, shortcut_name="sig"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "{{user.first_name}}" in details
    fallback = await unknown.RenderShortcut(
        pb.RenderShortcutRequest(shortcut_name="sig2", conversation_id=conv.conversation_id)
    )
    assert fallback.text == "Your team here"
