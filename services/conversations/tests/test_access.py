"""The permission matrix on every RPC, authentication, and cross-space isolation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import conversations_service_pb2_grpc as pb_grpc
from parley_conversations.grpc_api import SERVICE_NAME
from parley_kit.grpc_client import create_channel
from parley_kit.permissions import Permission, allows


def _ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


NOW = datetime.now(UTC)
ANY_ID = str(uuid.uuid4())

# Every RPC of ConversationsService, the permission it needs, and a request that passes validation far
# enough for the permission check to be the first thing that can refuse it.
MATRIX: dict[str, tuple[Permission, object]] = {
    "ListConversations": (Permission.CONVERSATIONS_READ, pb.ListConversationsRequest()),
    "GetConversation": (Permission.CONVERSATIONS_READ, pb.GetConversationRequest(conversation_id=ANY_ID)),
    "ListMessages": (Permission.CONVERSATIONS_READ, pb.ListMessagesRequest(conversation_id=ANY_ID)),
    "GetInboxCounts": (Permission.CONVERSATIONS_READ, pb.GetInboxCountsRequest()),
    "OpenConversation": (Permission.CONVERSATIONS_MANAGE, pb.OpenConversationRequest(contact_id="c", channel_id="ch")),
    "AssignConversation": (
        Permission.CONVERSATIONS_MANAGE,
        pb.AssignConversationRequest(conversation_id=ANY_ID, user_id="u"),
    ),
    "UnassignConversation": (Permission.CONVERSATIONS_MANAGE, pb.UnassignConversationRequest(conversation_id=ANY_ID)),
    "CloseConversation": (Permission.CONVERSATIONS_MANAGE, pb.CloseConversationRequest(conversation_id=ANY_ID)),
    "ReopenConversation": (Permission.CONVERSATIONS_MANAGE, pb.ReopenConversationRequest(conversation_id=ANY_ID)),
    "SendMessage": (Permission.CONVERSATIONS_REPLY, pb.SendMessageRequest(conversation_id=ANY_ID, text="hi")),
    "CreateShortcut": (
        Permission.SHORTCUTS_MANAGE,
        pb.CreateShortcutRequest(name=f"s{uuid.uuid4().hex[:6]}", text="t"),
    ),
    "GetShortcut": (Permission.SHORTCUTS_USE, pb.GetShortcutRequest(shortcut_id=ANY_ID)),
    "ListShortcuts": (Permission.SHORTCUTS_USE, pb.ListShortcutsRequest()),
    "UpdateShortcut": (Permission.SHORTCUTS_MANAGE, pb.UpdateShortcutRequest(shortcut_id=ANY_ID, text="t")),
    "DeleteShortcut": (Permission.SHORTCUTS_MANAGE, pb.DeleteShortcutRequest(shortcut_id=ANY_ID)),
    "RenderShortcut": (
        Permission.SHORTCUTS_USE,
        pb.RenderShortcutRequest(shortcut_id=ANY_ID, conversation_id=ANY_ID),
    ),
    "CreateClosingCategory": (
        Permission.SPACE_SETTINGS,
        pb.CreateClosingCategoryRequest(name=f"c{uuid.uuid4().hex[:6]}"),
    ),
    "ListClosingCategories": (Permission.CONVERSATIONS_READ, pb.ListClosingCategoriesRequest()),
    "UpdateClosingCategory": (Permission.SPACE_SETTINGS, pb.UpdateClosingCategoryRequest(category_id=ANY_ID, name="n")),
    "GetSpaceSettings": (Permission.CONVERSATIONS_READ, pb.GetSpaceSettingsRequest()),
    "UpdateSpaceSettings": (Permission.SPACE_SETTINGS, pb.UpdateSpaceSettingsRequest(closing_summary_required=False)),
    "GetReport": (
        Permission.REPORTS_READ,
        pb.GetReportRequest(start_time=_ts(NOW - timedelta(days=1)), end_time=_ts(NOW)),
    ),
}


def test_the_matrix_covers_every_rpc() -> None:
    methods = set(pb.DESCRIPTOR.services_by_name["ConversationsService"].methods_by_name)
    assert set(MATRIX) == methods
    assert SERVICE_NAME == "parley.conversations.v1.ConversationsService"


@pytest.mark.parametrize("role", ["agent", "manager", "owner", "system"])
async def test_every_rpc_enforces_the_permission_matrix(service, stub_for, role: str) -> None:
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    stub = stub_for("*" if role == "system" else sp, role=role)
    for method, (permission, request) in MATRIX.items():
        req = type(request)()
        req.CopyFrom(request)
        if role == "system":
            req.space_id = sp
        try:
            await getattr(stub, method)(req)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        if allows(role, permission):
            assert code != grpc.StatusCode.PERMISSION_DENIED, f"{role} should be allowed {method}"
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, f"{role} should be denied {method}, got {code}"


async def test_calls_without_a_valid_token_are_unauthenticated(service) -> None:
    _, target = service
    for token in ("", "not-a-jwt"):
        async with create_channel(target, token=token, max_attempts=2) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.ConversationsServiceStub(ch).ListConversations(pb.ListConversationsRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_another_space_never_sees_or_changes_a_conversation(service, stub_for, helpers, admin) -> None:
    app, _ = service
    a, b = f"sp-{uuid.uuid4().hex[:8]}", await admin.space()
    member_of_b = await admin.member(b)  # a valid assignee in B: only the conversation can be not found
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(a, f"ch-{a}", "psid-x", f"{a}-1")])
    owner_a = stub_for(a, role="owner")

    async def listed():
        return (await owner_a.ListConversations(pb.ListConversationsRequest())).conversations

    (conv,) = await helpers.wait_for(listed)
    cid = conv.conversation_id
    shortcut = (await owner_a.CreateShortcut(pb.CreateShortcutRequest(name="only-a", text="hi"))).shortcut
    category = (await owner_a.CreateClosingCategory(pb.CreateClosingCategoryRequest(name="Only A"))).category

    owner_b = stub_for(b, role="owner")
    assert list((await owner_b.ListConversations(pb.ListConversationsRequest())).conversations) == []
    assert list((await owner_b.ListShortcuts(pb.ListShortcutsRequest())).shortcuts) == []
    assert list((await owner_b.ListClosingCategories(pb.ListClosingCategoriesRequest())).categories) == []
    counts = await owner_b.GetInboxCounts(pb.GetInboxCountsRequest())
    assert (counts.open, counts.closed) == (0, 0)
    not_found = [
        owner_b.GetConversation(pb.GetConversationRequest(conversation_id=cid)),
        owner_b.ListMessages(pb.ListMessagesRequest(conversation_id=cid)),
        owner_b.AssignConversation(pb.AssignConversationRequest(conversation_id=cid, user_id=member_of_b)),
        owner_b.UnassignConversation(pb.UnassignConversationRequest(conversation_id=cid)),
        owner_b.CloseConversation(pb.CloseConversationRequest(conversation_id=cid)),
        owner_b.ReopenConversation(pb.ReopenConversationRequest(conversation_id=cid)),
        owner_b.SendMessage(pb.SendMessageRequest(conversation_id=cid, text="hi")),
        owner_b.GetShortcut(pb.GetShortcutRequest(shortcut_id=shortcut.shortcut_id)),
        owner_b.DeleteShortcut(pb.DeleteShortcutRequest(shortcut_id=shortcut.shortcut_id)),
        owner_b.UpdateClosingCategory(pb.UpdateClosingCategoryRequest(category_id=category.category_id, name="x")),
        owner_b.RenderShortcut(pb.RenderShortcutRequest(shortcut_id=shortcut.shortcut_id, conversation_id=cid)),
    ]
    for call in not_found:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
    # naming space A with a space-B token is refused; a system token naming B still cannot reach A's records
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await owner_b.GetConversation(pb.GetConversationRequest(space_id=a, conversation_id=cid))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    system = stub_for("*", role="system", subject="service:automation")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await system.GetConversation(pb.GetConversationRequest(space_id=b, conversation_id=cid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await system.GetConversation(pb.GetConversationRequest(conversation_id=cid))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # platform-wide tokens must name the space
    # and nothing changed in A
    still = (await owner_a.GetConversation(pb.GetConversationRequest(conversation_id=cid))).conversation
    assert still.status == conv.status and not still.assignee_user_id
