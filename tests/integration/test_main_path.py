"""The main path through real processes: a signed Messenger webhook reaches an agent's inbox, the agent's reply
reaches the (fake) Graph API, the delivery receipt comes back, and the closed conversation has its metrics.

Everything runs as `make run` starts it (the launcher on free ports: nats-server, PostgreSQL, workspace, contacts,
conversations, and the gateway's serve, web and worker processes); the only stand-in is the Graph API.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from parley.channel_gateway.v1 import channel_service_pb2 as chpb
from parley.channel_gateway.v1 import events_pb2 as gwpb
from parley.common.v1 import common_pb2 as common
from parley.contacts.v1 import contacts_service_pb2 as cpb
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import resources_pb2 as res
from parley_e2e import FakeGraph, Platform, SpaceClient, eventually, messenger_delivery, messenger_message

PAGE_ID = str(104_000_000_000_000 + uuid.uuid4().int % 10**12)  # one active channel per Page, platform-wide


@dataclass
class Space:
    owner: SpaceClient
    channel_id: str


@pytest.fixture(scope="module")
def space(platform: Platform) -> Space:
    owner = platform.bootstrap(f"Acme Support {uuid.uuid4().hex[:6]}", "Helpdesk", "dana@acme.example.com", force=True)
    channel = owner.connect_messenger(PAGE_ID, name="Acme on Messenger")
    assert channel.status == chpb.CHANNEL_STATUS_ACTIVE
    return Space(owner, channel.channel_id)


def _psid() -> str:
    return str(7_100_000_000_000_000 + uuid.uuid4().int % 10**15)


def _post(platform: Platform, body: bytes) -> None:
    status, answer = platform.post_webhook("/webhooks/messenger", body)
    assert (status, answer) == (200, {"status": "ok", "published": 1, "ignored": 0}), (status, answer)


def _messages(owner: SpaceClient, conversation_id: str) -> list[res.Message]:
    request = pb.ListMessagesRequest(
        space_id=owner.space_id, conversation_id=conversation_id, page=common.PageRequest(page_size=100)
    )
    return list(owner.conversations.ListMessages(request).messages)


def _find_by_text(owner: SpaceClient, text: str) -> tuple[res.Conversation, list[res.Message]]:
    """The conversation holding a message with `text` (the inbox's newest conversations) and its messages."""
    page = owner.conversations.ListConversations(
        pb.ListConversationsRequest(space_id=owner.space_id, page=common.PageRequest(page_size=50))
    )
    for conversation in page.conversations:
        if conversation.last_message_text == text:
            return conversation, _messages(owner, conversation.conversation_id)
    raise AssertionError(f"no conversation shows {text!r} yet")


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


def test_a_messenger_message_is_answered_delivered_and_closed_with_correct_metrics(
    platform: Platform, space: Space, fake_graph: FakeGraph
) -> None:
    owner, psid = space.owner, _psid()
    written_at_ms = int(time.time() * 1000) - 3000  # the person wrote 3 s before the webhook arrived
    _post(platform, messenger_message(PAGE_ID, psid, f"m_in_{psid}", "Where is my order?", timestamp_ms=written_at_ms))

    # The contact exists (contacts gRPC) with the Messenger identity.
    conversation, messages = eventually(lambda: _find_by_text(owner, "Where is my order?"))
    contact = owner.contacts.GetContact(
        cpb.GetContactRequest(space_id=owner.space_id, contact_id=conversation.contact_id)
    )
    identities = [(i.channel_id, i.channel_type, i.external_id) for i in contact.contact.identities]
    assert identities == [(space.channel_id, common.CHANNEL_TYPE_MESSENGER, psid)]
    assert contact.contact.last_interaction_at.ToMilliseconds() == written_at_ms

    # A conversation was opened by the contact, with the message stored once, inbound.
    assert conversation.status == res.CONVERSATION_STATUS_OPEN
    assert conversation.source == res.CONVERSATION_SOURCE_CONTACT
    assert conversation.channel_id == space.channel_id
    assert conversation.channel_type == common.CHANNEL_TYPE_MESSENGER
    assert [(m.direction, m.sender_type, m.text) for m in messages] == [
        (res.MESSAGE_DIRECTION_INBOUND, res.SENDER_TYPE_CONTACT, "Where is my order?")
    ]
    assert messages[0].provider_message_id == f"m_in_{psid}"

    # The agent replies; the gateway's worker calls the Send API once, correctly.
    sent = owner.conversations.SendMessage(
        pb.SendMessageRequest(
            space_id=owner.space_id, conversation_id=conversation.conversation_id, text="It ships today!"
        )
    ).message
    assert (sent.direction, sent.sender_type, sent.status) == (
        res.MESSAGE_DIRECTION_OUTBOUND,
        res.SENDER_TYPE_USER,
        gwpb.DELIVERY_STATUS_QUEUED,
    )
    call = fake_graph.wait_for(lambda r: r.json.get("recipient", {}).get("id") == psid)
    assert call.method == "POST"
    assert call.path == f"/v21.0/{PAGE_ID}/messages"
    assert call.headers.get("Authorization") == "Bearer EAAGe2etestpageaccesstoken0123456789"
    assert call.json == {
        "recipient": {"id": psid},
        "messaging_type": "RESPONSE",
        "message": {"text": "It ships today!"},
    }
    assert len([r for r in fake_graph.received("/messages") if r.json["recipient"]["id"] == psid]) == 1

    # The gateway's "sent" status reaches conversations with the provider's message id.
    def status_is(status: int) -> res.Message:
        reply = next(m for m in _messages(owner, conversation.conversation_id) if m.message_id == sent.message_id)
        assert reply.status == status, gwpb.DeliveryStatus.Name(reply.status)
        return reply

    reply = eventually(lambda: status_is(gwpb.DELIVERY_STATUS_SENT))
    assert reply.provider_message_id.startswith("m_out_")

    # Messenger's delivery receipt (mids and watermark) moves the reply to delivered.
    _post(platform, messenger_delivery(PAGE_ID, psid, [reply.provider_message_id]))
    delivered = eventually(lambda: status_is(gwpb.DELIVERY_STATUS_DELIVERED))
    assert delivered.HasField("delivered_at")

    # The space requires a closing category and a summary: a close without them is refused, with them it closes.
    owner.conversations.UpdateSpaceSettings(
        pb.UpdateSpaceSettingsRequest(
            space_id=owner.space_id, closing_category_required=True, closing_summary_required=True
        )
    )
    category = owner.conversations.CreateClosingCategory(
        pb.CreateClosingCategoryRequest(space_id=owner.space_id, name="Order status")
    ).category
    close = pb.CloseConversationRequest(space_id=owner.space_id, conversation_id=conversation.conversation_id)
    with pytest.raises(grpc.RpcError) as refused:
        owner.conversations.CloseConversation(close)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "category" in (refused.value.details() or "")
    close.category_id, close.summary = category.category_id, "Told the customer the order ships today."
    closed = owner.conversations.CloseConversation(close).conversation
    assert closed.status == res.CONVERSATION_STATUS_CLOSED
    assert (closed.closing_note.category_id, closed.closing_note.category_name, closed.closing_note.summary) == (
        category.category_id,
        "Order status",
        "Told the customer the order ships today.",
    )

    # The metrics: first response measured from the contact's message to the agent's reply; one message each way.
    got = owner.conversations.GetConversation(
        pb.GetConversationRequest(space_id=owner.space_id, conversation_id=conversation.conversation_id)
    ).conversation
    metrics = got.metrics
    first_response = metrics.first_response_time.ToTimedelta().total_seconds()
    assert metrics.HasField("first_response_time")
    assert 3.0 <= first_response < 120, first_response
    expected = (sent.created_at.ToMilliseconds() - written_at_ms) / 1000
    assert first_response == pytest.approx(expected, abs=0.01)
    assert (metrics.incoming_messages, metrics.outgoing_messages, metrics.responses) == (1, 1, 1)
    assert metrics.resolution_time.ToTimedelta().total_seconds() >= first_response
    assert got.closed_by == f"user:{owner.user_id}"


def test_the_same_webhook_delivered_three_times_stores_one_message(platform: Platform, space: Space) -> None:
    owner, psid = space.owner, _psid()
    body = messenger_message(PAGE_ID, psid, f"m_dup_{psid}", "Hello? (sent 3 times)")
    for _ in range(3):
        _post(platform, body)  # every delivery is acknowledged: the provider must stop retrying
    # A later message of the same contact: once it is visible, everything before it on the contact's ordered
    # stream has been applied.
    _post(platform, messenger_message(PAGE_ID, psid, f"m_after_{psid}", "Anyone there?"))
    conversation, messages = eventually(lambda: _find_by_text(owner, "Anyone there?"))
    assert [(m.text, m.provider_message_id) for m in messages] == [
        ("Hello? (sent 3 times)", f"m_dup_{psid}"),
        ("Anyone there?", f"m_after_{psid}"),
    ]
    assert conversation.metrics.incoming_messages == 2


def test_another_space_cannot_see_or_touch_this_space_s_conversation_or_contact(
    platform: Platform, space: Space
) -> None:
    owner, psid = space.owner, _psid()
    _post(platform, messenger_message(PAGE_ID, psid, f"m_iso_{psid}", "Private question"))
    conversation, _ = eventually(lambda: _find_by_text(owner, "Private question"))

    other = platform.bootstrap(f"Globex {uuid.uuid4().hex[:6]}", "Sales", "hank@globex.example.com", force=True)
    assert other.space_id != owner.space_id
    conversation_id, contact_id = conversation.conversation_id, conversation.contact_id

    # Records of another space do not exist for this token...
    assert _code(lambda: other.conversations.GetConversation(
        pb.GetConversationRequest(conversation_id=conversation_id))) == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert _code(lambda: other.conversations.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id))) == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert _code(lambda: other.conversations.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation_id, text="hi"))) == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert _code(lambda: other.conversations.CloseConversation(
        pb.CloseConversationRequest(conversation_id=conversation_id))) == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert _code(lambda: other.contacts.GetContact(
        cpb.GetContactRequest(contact_id=contact_id))) == grpc.StatusCode.NOT_FOUND  # fmt: skip
    assert _code(lambda: other.channels.GetChannel(
        chpb.GetChannelRequest(channel_id=space.channel_id))) == grpc.StatusCode.NOT_FOUND  # fmt: skip
    # ...its lists do not show them...
    listed = other.conversations.ListConversations(pb.ListConversationsRequest()).conversations
    assert conversation_id not in {c.conversation_id for c in listed}
    assert contact_id not in {c.id for c in other.contacts.ListContacts(cpb.ListContactsRequest()).contacts}
    # ...and naming the other space outright is refused.
    assert _code(lambda: other.conversations.GetConversation(
        pb.GetConversationRequest(space_id=owner.space_id, conversation_id=conversation_id)
    )) == grpc.StatusCode.PERMISSION_DENIED  # fmt: skip
    assert _code(lambda: other.contacts.GetContact(
        cpb.GetContactRequest(space_id=owner.space_id, contact_id=contact_id)
    )) == grpc.StatusCode.PERMISSION_DENIED  # fmt: skip

    # Nothing changed in the first space.
    after = owner.conversations.GetConversation(
        pb.GetConversationRequest(space_id=owner.space_id, conversation_id=conversation_id)
    ).conversation
    assert after.status == res.CONVERSATION_STATUS_OPEN
    assert after.metrics.outgoing_messages == 0
