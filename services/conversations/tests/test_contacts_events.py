"""Following the contacts service (the real one): the contact's assignee, names and custom fields,
erasure and merges."""

from __future__ import annotations

import uuid

import grpc
import pytest
from parley.contacts.v1 import contact_pb2 as cmsg
from parley.contacts.v1 import contacts_service_pb2 as cpb
from parley.contacts.v1 import fields_pb2 as fpb
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import events_pb2 as ev
from parley.conversations.v1 import resources_pb2 as res


def space() -> str:
    return f"sp-{uuid.uuid4().hex[:8]}"


async def _open(app, stub, helpers, sp: str, contact: str, channel: str | None = None, mid: str = "1"):
    before = {c.conversation_id for c in (await stub.ListConversations(pb.ListConversationsRequest())).conversations}
    await helpers.publish_inbound(
        app.rt.js, [helpers.inbound(sp, channel or f"ch-{sp}", contact, f"{sp}-{contact}-{mid}", first_name="Ada")]
    )

    async def found():
        r = await stub.ListConversations(pb.ListConversationsRequest())
        return [c for c in r.conversations if c.conversation_id not in before] or None

    return (await helpers.wait_for(found))[0]


async def _get(stub, conversation_id: str):
    return (await stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation_id))).conversation


async def test_conversations_follow_the_contacts_assignee(
    service, stub_for, helpers, contacts_stub, workspace_service
) -> None:
    app, _ = service
    admin = workspace_service.admin
    sp = await admin.space()
    u5, t2 = await admin.member(sp), await admin.team(sp)
    agent = stub_for(sp)
    contacts = contacts_stub(sp, subject="user:boss")
    conv = await _open(app, agent, helpers, sp, "psid-1")
    await contacts.AssignContacts(
        cpb.AssignContactsRequest(contact_ids=[conv.contact_id], assignee=cmsg.Assignee(user_id=u5, team_id=t2))
    )

    async def assigned_to(user: str):
        c = await _get(agent, conv.conversation_id)
        return c if c.assignee_user_id == user else None

    got = await helpers.wait_for(lambda: assigned_to(u5))
    assert got.assignee_team_id == t2
    history = (await agent.GetConversation(pb.GetConversationRequest(conversation_id=conv.conversation_id))).assignments
    assert [(a.user_id, a.team_id, a.assigned_by) for a in history] == [(u5, t2, "user:boss")]

    # a new conversation of that contact starts with the contact's assignee
    await agent.CloseConversation(pb.CloseConversationRequest(conversation_id=conv.conversation_id))
    new = await _open(app, agent, helpers, sp, "psid-1", mid="2")
    assert (new.assignee_user_id, new.assignee_team_id) == (u5, t2)

    await contacts.AssignContacts(cpb.AssignContactsRequest(contact_ids=[conv.contact_id], assignee=cmsg.Assignee()))
    await helpers.wait_for(lambda: assigned_to_new_none(agent, new.conversation_id))
    events = [
        e
        for e in await helpers.read_stream(app.rt.js, "conversations.conversation.assigned", ev.ConversationAssigned)
        if e.meta.space_id == sp
    ]
    assert [(e.conversation.conversation_id, e.user_id, e.previous_user_id) for e in events] == [
        (conv.conversation_id, u5, ""),
        (new.conversation_id, "", u5),
    ]


async def assigned_to_new_none(agent, conversation_id: str):
    c = await _get(agent, conversation_id)
    return c if not c.assignee_user_id and not c.assignee_team_id else None


async def test_shortcuts_use_the_names_and_fields_the_contacts_service_publishes(
    service, stub_for, helpers, contacts_stub
) -> None:
    app, _ = service
    sp = space()
    manager = stub_for(sp, role="manager")
    contacts = contacts_stub(sp)
    conv = await _open(app, manager, helpers, sp, "psid-2")
    await contacts.CreateField(cpb.CreateFieldRequest(key="plan", label="Plan", type=fpb.FIELD_TYPE_TEXT))
    await contacts.UpdateContact(
        cpb.UpdateContactRequest(
            contact_id=conv.contact_id, profile=cmsg.ContactProfile(first_name="Adele"), field_values={"plan": "gold"}
        )
    )
    await manager.CreateShortcut(
        pb.CreateShortcutRequest(name="plan", text="{{contact.first_name}}: {{contact.fields.plan}}")
    )

    async def rendered():
        try:
            r = await manager.RenderShortcut(
                pb.RenderShortcutRequest(shortcut_name="plan", conversation_id=conv.conversation_id)
            )
        except grpc.aio.AioRpcError:
            return None
        return r.text if r.text == "Adele: gold" else None

    assert await helpers.wait_for(rendered) == "Adele: gold"


async def test_an_erased_contact_leaves_no_conversation(service, stub_for, helpers, contacts_stub) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    conv = await _open(app, agent, helpers, sp, "psid-3")
    await contacts_stub(sp).DeleteContact(cpb.DeleteContactRequest(contact_id=conv.contact_id))

    async def gone():
        try:
            await _get(agent, conv.conversation_id)
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    await helpers.wait_for(gone)
    assert list((await agent.ListConversations(pb.ListConversationsRequest())).conversations) == []


async def test_a_merged_contacts_conversations_move_to_the_survivor(service, stub_for, helpers, contacts_stub) -> None:
    app, _ = service
    sp = space()
    agent = stub_for(sp)
    contacts = contacts_stub(sp)
    survivor = await _open(app, agent, helpers, sp, "psid-s", channel=f"ch-a-{sp}")
    other_channel = await _open(app, agent, helpers, sp, "psid-m", channel=f"ch-b-{sp}")
    same_channel = await _open(app, agent, helpers, sp, "psid-n", channel=f"ch-a-{sp}")
    for merged in (other_channel, same_channel):
        await contacts.MergeContacts(
            cpb.MergeContactsRequest(survivor_contact_id=survivor.contact_id, merged_contact_id=merged.contact_id)
        )

    async def moved():
        convs = [await _get(agent, c.conversation_id) for c in (other_channel, same_channel)]
        return convs if all(c.contact_id == survivor.contact_id for c in convs) else None

    moved_other, moved_same = await helpers.wait_for(moved)
    assert moved_other.status == res.CONVERSATION_STATUS_OPEN  # its channel had no open conversation of the survivor
    assert moved_same.status == res.CONVERSATION_STATUS_CLOSED  # one open conversation per contact and channel
    assert (await _get(agent, survivor.conversation_id)).status == res.CONVERSATION_STATUS_OPEN
    mine = await agent.ListConversations(
        pb.ListConversationsRequest(contact_id=survivor.contact_id, status=res.CONVERSATION_STATUS_OPEN)
    )
    assert sorted(c.channel_id for c in mine.conversations) == sorted([f"ch-a-{sp}", f"ch-b-{sp}"])


@pytest.fixture(autouse=True)
def _uses_real_contacts(contacts_service) -> None:
    """These tests talk to the real contacts service."""
