from __future__ import annotations

from parley.conversations.v1 import conversations_service_pb2 as pb


async def test_inbound_message_opens_a_conversation(service, stub_for, helpers) -> None:
    app, _ = service
    js = app.rt.js
    await helpers.publish_inbound(js, [helpers.inbound("sp1", "ch1", "psid-1", "m1", text="hi there")])
    stub = stub_for("sp1")

    async def listed():
        r = await stub.ListConversations(pb.ListConversationsRequest())
        return r.conversations

    convs = await helpers.wait_for(listed)
    assert len(convs) == 1
    assert convs[0].last_message_text == "hi there"
