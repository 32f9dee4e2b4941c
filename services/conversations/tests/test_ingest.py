"""Ingest of the gateway's inbound events: idempotency, echoes, receipts, reactions and edits, reopening."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from parley.channel_gateway.v1 import events_pb2 as gw
from parley.contacts.v1 import contacts_service_pb2 as cpb
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import events_pb2 as ev
from parley.conversations.v1 import resources_pb2 as res
from parley_conversations import mapping


def space() -> str:
    return f"sp-{uuid.uuid4().hex[:8]}"


async def conversations_of(stub, **filters):
    return list((await stub.ListConversations(pb.ListConversationsRequest(**filters))).conversations)


async def messages_of(stub, conversation_id: str):
    reply = await stub.ListMessages(pb.ListMessagesRequest(conversation_id=conversation_id, page={"page_size": 500}))
    return list(reply.messages)


async def test_same_event_delivered_three_times_stores_one_message(service, stub_for, helpers, fake_contacts) -> None:
    app, _ = service
    sp = space()
    event = helpers.inbound(sp, "ch-1", "psid-a", "mid.1", text="once")
    for attempt in range(3):
        # A provider retry after JetStream's duplicate window: same event, new stream message.
        await app.rt.js.publish(
            "channel_gateway.inbound." + helpers_partition(sp, "ch-1", "psid-a"),
            event.SerializeToString(),
            headers={"Nats-Msg-Id": f"{event.event_id}-{attempt}"},
        )
    stub = stub_for(sp)
    convs = await helpers.wait_for(lambda: conversations_of(stub))
    await helpers.wait_for(lambda: _all_applied(app))
    msgs = await messages_of(stub, convs[0].conversation_id)
    assert [m.text for m in msgs] == ["once"]
    assert convs[0].metrics.incoming_messages == 1
    received = [
        e
        for e in await helpers.read_stream(app.rt.js, "conversations.message.received", ev.MessageReceived)
        if e.meta.space_id == sp
    ]
    assert len(received) == 1


def helpers_partition(space_id: str, channel_id: str, contact: str) -> str:
    from parley_kit.contracts import channel_gateway as cg

    return f"{cg.inbound_partition(space_id, channel_id, contact):02d}"


async def _all_applied(app) -> bool:
    """True once every inbound partition durable has nothing pending or unacknowledged."""
    for p in range(16):
        info = await app.rt.js.consumer_info("CHANNEL_GATEWAY", f"conversations--inbound-{p:02d}")
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def test_inbound_message_opens_conversation_for_the_contact_the_contacts_service_resolves(
    service, stub_for, helpers, contacts_stub
):
    app, _ = service
    sp = space()
    at = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    await helpers.publish_inbound(
        app.rt.js, [helpers.inbound(sp, "ch-1", "psid-b", "mid.b1", text="first", at=at, first_name="Bea")]
    )
    stub = stub_for(sp)
    (conv,) = await helpers.wait_for(lambda: conversations_of(stub))
    assert conv.status == res.CONVERSATION_STATUS_OPEN
    assert conv.source == res.CONVERSATION_SOURCE_CONTACT
    assert conv.opened_by == f"contact:{conv.contact_id}"
    assert conv.opened_at.ToDatetime(tzinfo=UTC) == at
    contact = (await contacts_stub(sp).GetContact(cpb.GetContactRequest(contact_id=conv.contact_id))).contact
    assert contact.first_name == "Bea"
    assert [(i.channel_id, i.external_id) for i in contact.identities] == [("ch-1", "psid-b")]
    assert contact.last_interaction_at.ToDatetime(tzinfo=UTC) == at
    opened = await helpers.wait_for(
        lambda: _events(app, helpers, "conversations.conversation.opened", ev.ConversationOpened, sp)
    )
    assert [e.conversation.conversation_id for e in opened] == [conv.conversation_id]


async def _events(app, helpers, subject, kind, sp):
    return [e for e in await helpers.read_stream(app.rt.js, subject, kind) if e.meta.space_id == sp]


async def test_echo_is_stored_as_outbound_message_in_the_open_conversation(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    await helpers.publish_inbound(
        app.rt.js,
        [
            helpers.inbound(sp, "ch-1", "psid-c", "mid.c1", text="question"),
            helpers.inbound(
                sp, "ch-1", "psid-c", "mid.c2", text="answered from the Page inbox", kind=gw.INBOUND_KIND_ECHO
            ),
        ],
    )
    stub = stub_for(sp)
    (conv,) = await helpers.wait_for(lambda: conversations_of(stub))
    msgs = await helpers.wait_for(lambda: _n(messages_of(stub, conv.conversation_id), 2))
    assert [m.direction for m in msgs] == [res.MESSAGE_DIRECTION_INBOUND, res.MESSAGE_DIRECTION_OUTBOUND]
    assert msgs[1].sender_type == res.SENDER_TYPE_ECHO
    assert msgs[1].status == gw.DELIVERY_STATUS_SENT
    conv = (await stub.GetConversation(pb.GetConversationRequest(conversation_id=conv.conversation_id))).conversation
    assert conv.metrics.outgoing_messages == 1
    assert not conv.HasField("metrics") or not conv.metrics.HasField("first_response_time")  # echoes are not agents


async def _n(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_receipts_move_outbound_status_forward_never_back(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    await helpers.publish_inbound(
        app.rt.js,
        [
            helpers.inbound(sp, "ch-1", "psid-d", "mid.d1", text="hi", at=t0),
            helpers.inbound(
                sp, "ch-1", "psid-d", "mid.d2", text="echo 1", kind=gw.INBOUND_KIND_ECHO, at=t0 + timedelta(seconds=1)
            ),
            helpers.inbound(
                sp, "ch-1", "psid-d", "mid.d3", text="echo 2", kind=gw.INBOUND_KIND_ECHO, at=t0 + timedelta(seconds=2)
            ),
            # read watermark covers both echoes
            helpers.inbound(
                sp,
                "ch-1",
                "psid-d",
                "read.1",
                text="",
                kind=gw.INBOUND_KIND_READ,
                at=t0 + timedelta(seconds=3),
                receipt=gw.Receipt(status=gw.DELIVERY_STATUS_READ, watermark=helpers.ts(t0 + timedelta(seconds=2))),
            ),
            # a late delivery receipt for the first echo must not move it back from read
            helpers.inbound(
                sp,
                "ch-1",
                "psid-d",
                "dlv.1",
                text="",
                kind=gw.INBOUND_KIND_DELIVERY,
                at=t0 + timedelta(seconds=4),
                receipt=gw.Receipt(status=gw.DELIVERY_STATUS_DELIVERED, provider_message_ids=["mid.d2"]),
            ),
            # nor a failure
            helpers.inbound(
                sp,
                "ch-1",
                "psid-d",
                "st.1",
                text="",
                kind=gw.INBOUND_KIND_STATUS,
                at=t0 + timedelta(seconds=5),
                receipt=gw.Receipt(status=gw.DELIVERY_STATUS_FAILED, provider_message_ids=["mid.d3"], error_code="131"),
            ),
        ],
    )
    stub = stub_for(sp)
    (conv,) = await helpers.wait_for(lambda: conversations_of(stub))
    await helpers.wait_for(lambda: _all_applied(app))
    msgs = await messages_of(stub, conv.conversation_id)
    assert [(m.text, m.status) for m in msgs] == [
        ("hi", gw.DELIVERY_STATUS_UNSPECIFIED),
        ("echo 1", gw.DELIVERY_STATUS_READ),
        ("echo 2", gw.DELIVERY_STATUS_READ),
    ]
    assert msgs[1].read_at.ToDatetime(tzinfo=UTC) == t0 + timedelta(seconds=3)
    changed = await helpers.wait_for(
        lambda: _n(_events(app, helpers, "conversations.message.status_changed", ev.MessageStatusChanged, sp), 2)
    )
    assert sorted((e.message_id, e.status) for e in changed) == sorted(
        [(msgs[1].message_id, gw.DELIVERY_STATUS_READ), (msgs[2].message_id, gw.DELIVERY_STATUS_READ)]
    )


async def test_reaction_edit_and_delete_attach_to_their_target(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    await helpers.publish_inbound(
        app.rt.js,
        [
            helpers.inbound(sp, "ch-1", "psid-e", "mid.e1", text="tpyo", at=t0),
            helpers.inbound(sp, "ch-1", "psid-e", "mid.e2", text="second", at=t0 + timedelta(seconds=1)),
            helpers.inbound(
                sp,
                "ch-1",
                "psid-e",
                "react.1",
                text="",
                kind=gw.INBOUND_KIND_REACTION,
                at=t0 + timedelta(seconds=2),
                target_provider_message_id="mid.e2",
                reaction=gw.Reaction(emoji="❤"),
            ),
            helpers.inbound(
                sp,
                "ch-1",
                "psid-e",
                "edit.1",
                text="typo",
                kind=gw.INBOUND_KIND_EDIT,
                at=t0 + timedelta(seconds=3),
                target_provider_message_id="mid.e1",
            ),
            helpers.inbound(
                sp,
                "ch-1",
                "psid-e",
                "react.2",
                text="",
                kind=gw.INBOUND_KIND_REACTION,
                at=t0 + timedelta(seconds=4),
                target_provider_message_id="mid.unknown",
                reaction=gw.Reaction(emoji="👍"),
            ),
            helpers.inbound(sp, "ch-1", "psid-e", "mid.e3", text="oops", at=t0 + timedelta(seconds=5)),
            helpers.inbound(
                sp,
                "ch-1",
                "psid-e",
                "del.1",
                text="",
                kind=gw.INBOUND_KIND_DELETE,
                at=t0 + timedelta(seconds=6),
                target_provider_message_id="mid.e3",
            ),
            helpers.inbound(
                sp,
                "ch-1",
                "psid-e",
                "pb.1",
                text="",
                kind=gw.INBOUND_KIND_POSTBACK,
                at=t0 + timedelta(seconds=7),
                payload="BUY_PRO",
                title="Buy Pro",
            ),
        ],
    )
    stub = stub_for(sp)
    (conv,) = await helpers.wait_for(lambda: conversations_of(stub))
    await helpers.wait_for(lambda: _all_applied(app))
    first, second, deleted, postback = await messages_of(stub, conv.conversation_id)
    assert first.text == "typo" and first.edited_at.ToDatetime(tzinfo=UTC) == t0 + timedelta(seconds=3)
    assert [(r.emoji, r.by) for r in second.reactions] == [("❤", "contact")]
    assert deleted.HasField("deleted_at") and deleted.text == "" and not deleted.parts
    assert (postback.kind, postback.payload, postback.text) == (res.MESSAGE_KIND_POSTBACK, "BUY_PRO", "Buy Pro")
    conv = (await stub.GetConversation(pb.GetConversationRequest(conversation_id=conv.conversation_id))).conversation
    assert conv.metrics.incoming_messages == 4  # reactions, edits and deletions are not new messages
    updates = await helpers.wait_for(
        lambda: _n(_events(app, helpers, "conversations.message.updated", ev.MessageUpdated, sp), 3)
    )
    assert sorted(u.change for u in updates) == [
        ev.MESSAGE_CHANGE_REACTION,
        ev.MESSAGE_CHANGE_EDIT,
        ev.MESSAGE_CHANGE_DELETE,
    ]


async def test_changes_and_receipts_in_the_batch_that_stores_their_target_are_saved(service, stub_for, helpers) -> None:
    """New messages are inserted in bulk; an edit, reaction or receipt in the same batch must still reach them."""
    app, _ = service
    sp = space()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    events = [
        helpers.inbound(sp, "ch-1", "psid-sb", "mid.sb1", text="tpyo", at=t0),
        helpers.inbound(
            sp, "ch-1", "psid-sb", "mid.sb2", text="echo", kind=gw.INBOUND_KIND_ECHO, at=t0 + timedelta(seconds=1)
        ),
        helpers.inbound(
            sp,
            "ch-1",
            "psid-sb",
            "edit.sb1",
            text="typo",
            kind=gw.INBOUND_KIND_EDIT,
            at=t0 + timedelta(seconds=2),
            target_provider_message_id="mid.sb1",
        ),
        helpers.inbound(
            sp,
            "ch-1",
            "psid-sb",
            "react.sb1",
            text="",
            kind=gw.INBOUND_KIND_REACTION,
            at=t0 + timedelta(seconds=3),
            target_provider_message_id="mid.sb1",
            reaction=gw.Reaction(emoji="❤"),
        ),
        helpers.inbound(
            sp,
            "ch-1",
            "psid-sb",
            "read.sb1",
            text="",
            kind=gw.INBOUND_KIND_READ,
            at=t0 + timedelta(seconds=4),
            receipt=gw.Receipt(status=gw.DELIVERY_STATUS_READ, watermark=helpers.ts(t0 + timedelta(seconds=1))),
        ),
    ]
    items = [mapping.inbound_item(e) for e in events]
    async with app.service.repo.transaction() as tx:
        stats = await app.service.apply_inbound(tx, items, {it.contact_key: "ct-same-batch" for it in items})
    assert (stats.stored, stats.updates, stats.statuses) == (2, 2, 1)

    (conv,) = await conversations_of(stub_for(sp))
    first, echo = await messages_of(stub_for(sp), conv.conversation_id)
    assert first.text == "typo" and first.edited_at.ToDatetime(tzinfo=UTC) == t0 + timedelta(seconds=2)
    assert [(r.emoji, r.by) for r in first.reactions] == [("❤", "contact")]
    assert echo.status == gw.DELIVERY_STATUS_READ
    assert first.sequence < echo.sequence


async def test_next_inbound_after_close_opens_a_new_linked_conversation(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, "ch-1", "psid-f", "mid.f1", text="one")])
    stub = stub_for(sp, role="manager")
    (first,) = await helpers.wait_for(lambda: conversations_of(stub))
    await stub.CloseConversation(pb.CloseConversationRequest(conversation_id=first.conversation_id))
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, "ch-1", "psid-f", "mid.f2", text="two")])
    convs = await helpers.wait_for(lambda: _n(conversations_of(stub), 2))
    new = next(c for c in convs if c.conversation_id != first.conversation_id)
    assert new.status == res.CONVERSATION_STATUS_OPEN
    assert new.previous_conversation_id == first.conversation_id
    assert new.contact_id == first.contact_id
    assert [m.text for m in await messages_of(stub, new.conversation_id)] == ["two"]


async def test_contacts_outage_delays_ingest_without_losing_or_reordering(service, stub_for, helpers, contacts_service):
    app, _ = service
    sp = space()
    contacts_service.stop()
    try:
        await helpers.publish_inbound(
            app.rt.js, [helpers.inbound(sp, "ch-1", "psid-g", f"mid.g{i}", text=f"m{i}") for i in range(5)]
        )
        await asyncio.sleep(1.5)
        assert await conversations_of(stub_for(sp)) == []
    finally:
        contacts_service.start()
    stub = stub_for(sp)
    (conv,) = await helpers.wait_for(lambda: conversations_of(stub), timeout=60)
    msgs = await helpers.wait_for(lambda: _n(messages_of(stub, conv.conversation_id), 5), timeout=60)
    assert [m.text for m in msgs] == [f"m{i}" for i in range(5)]


async def test_event_the_contacts_service_refuses_is_dead_lettered_and_the_rest_applied(
    service, stub_for, helpers
) -> None:
    app, _ = service
    sp = space()
    bad = helpers.inbound(sp, "ch-1", "", "mid.h0", text="no contact id")  # the gateway never sends this
    await helpers.publish_inbound(app.rt.js, [bad, helpers.inbound(sp, "ch-1", "psid-h", "mid.h1", text="fine")])
    stub = stub_for(sp)
    (conv,) = await helpers.wait_for(lambda: conversations_of(stub))
    assert [m.text for m in await messages_of(stub, conv.conversation_id)] == ["fine"]
    dead = await helpers.wait_for(
        lambda: helpers.read_stream(app.rt.js, "dead_letter.conversations.>", gw.InboundEvent)
    )
    assert any(d.provider_message_id == "mid.h0" for d in dead)


async def test_an_event_the_database_refuses_is_set_aside_and_its_partition_goes_on(service, stub_for, helpers) -> None:
    app, _ = service
    sp = space()
    events = [
        helpers.inbound(sp, "ch-1", "psid-n", "mid.n1", text="before"),
        helpers.inbound(sp, "ch-1", "psid-n", "mid.n2", text="nul \x00 byte"),  # PostgreSQL cannot store NUL
        helpers.inbound(sp, "ch-1", "psid-n", "mid.n3", text="after", first_name="x" * 500),
    ]
    await helpers.publish_inbound(app.rt.js, events)
    stub = stub_for(sp)
    (conv,) = await helpers.wait_for(lambda: conversations_of(stub))
    msgs = await helpers.wait_for(lambda: _n(messages_of(stub, conv.conversation_id), 2))
    assert [m.text for m in msgs] == ["before", "after"]
    dead = await helpers.wait_for(
        lambda: _only(helpers.read_stream(app.rt.js, "dead_letter.conversations.>", gw.InboundEvent), "mid.n2")
    )
    assert len(dead) == 1


async def _only(coro, mid: str):
    return [d for d in await coro if d.provider_message_id == mid] or None
