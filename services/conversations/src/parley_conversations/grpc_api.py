"""ConversationsService over gRPC: checks the caller's permission and space, maps protobuf <-> domain,
calls the domain. Never touches the database session.

Permissions (parley_kit.permissions):
  conversations.read    ListConversations, GetConversation, ListMessages, GetInboxCounts,
                        ListClosingCategories, GetSpaceSettings
  conversations.manage  OpenConversation, AssignConversation, UnassignConversation, CloseConversation,
                        ReopenConversation
  conversations.reply   SendMessage (and shortcuts.use when it sends a shortcut)
  shortcuts.use         GetShortcut, ListShortcuts, RenderShortcut
  shortcuts.manage      CreateShortcut, UpdateShortcut, DeleteShortcut
  space.settings        CreateClosingCategory, UpdateClosingCategory, UpdateSpaceSettings
  reports.read          GetReport
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from parley.common.v1 import common_pb2 as common
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import conversations_service_pb2_grpc as pb_grpc
from parley_kit.auth import Caller, current_caller
from parley_kit.errors import FailedPrecondition, InvalidArgument
from parley_kit.permissions import Permission

from parley_conversations import mapping, metrics
from parley_conversations.domain import Actor, ConversationFilter, PageRequest, SendInput
from parley_conversations.service import ConversationsService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ConversationsService"].full_name


def _scope(request: Any, permission: Permission) -> tuple[Caller, str]:
    caller = current_caller()
    space_id = caller.scoped_space(request.space_id)
    caller.require(permission, space_id)
    return caller, space_id


def _actor(caller: Caller) -> Actor:
    return Actor(caller.subject, name=str(caller.claims.get("name", "") or ""))


def _page(page: common.PageRequest) -> PageRequest:
    return PageRequest(size=page.page_size, token=page.page_token)


def _page_response(next_token: str, total: int = 0) -> common.PageResponse:
    return common.PageResponse(next_page_token=next_token, total_count=total)


def _dicts(items: Any) -> list[dict[str, Any]]:
    return [MessageToDict(x, preserving_proto_field_name=True) for x in items]


class ConversationsApi(pb_grpc.ConversationsServiceServicer):
    def __init__(self, service: ConversationsService) -> None:
        self.service = service

    # -- queries ----------------------------------------------------------------------------------

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConversationsResponse:
        _, space = _scope(request, Permission.CONVERSATIONS_READ)
        if request.unassigned and request.assignee_user_id:
            raise InvalidArgument("unassigned and assignee_user_id exclude each other; give one of them")
        f = ConversationFilter(
            status=mapping.STATUS_FROM_PB.get(request.status),
            assignee_user_id=request.assignee_user_id,
            assignee_team_id=request.assignee_team_id,
            unassigned=request.unassigned,
            channel_id=request.channel_id,
            contact_id=request.contact_id,
            order="opened_at" if request.order == pb.CONVERSATION_ORDER_OPENED_AT_DESC else "last_activity",
        )
        page = await self.service.list_conversations(space, f, _page(request.page))
        return pb.ListConversationsResponse(
            conversations=[mapping.conversation(c) for c in page.items],
            page=_page_response(page.next_token, page.total),
        )

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConversationResponse:
        _, space = _scope(request, Permission.CONVERSATIONS_READ)
        conv, assignments = await self.service.get_conversation(space, request.conversation_id)
        page = await self.service.list_messages(space, conv.id, _page(request.messages_page))
        return pb.GetConversationResponse(
            conversation=mapping.conversation(conv),
            assignments=[mapping.assignment(a) for a in assignments],
            messages=[mapping.message(m) for m in page.items],
            messages_page=_page_response(page.next_token, page.total),
        )

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMessagesResponse:
        _, space = _scope(request, Permission.CONVERSATIONS_READ)
        page = await self.service.list_messages(space, request.conversation_id, _page(request.page))
        return pb.ListMessagesResponse(
            messages=[mapping.message(m) for m in page.items], page=_page_response(page.next_token, page.total)
        )

    async def GetInboxCounts(
        self, request: pb.GetInboxCountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInboxCountsResponse:
        caller, space = _scope(request, Permission.CONVERSATIONS_READ)
        counts = await self.service.inbox_counts(space, caller.user_id)
        return pb.GetInboxCountsResponse(
            open=counts["open"],
            closed=counts["closed"],
            unassigned=counts["unassigned"],
            mine=counts["mine"] if caller.user_id else 0,
            by_user=[pb.AssigneeCount(id=i, open=n) for i, n in counts["by_user"]],
            by_team=[pb.AssigneeCount(id=i, open=n) for i, n in counts["by_team"]],
        )

    # -- lifecycle --------------------------------------------------------------------------------

    async def OpenConversation(
        self, request: pb.OpenConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.OpenConversationResponse:
        caller, space = _scope(request, Permission.CONVERSATIONS_MANAGE)
        conv = await self.service.open_conversation(
            _actor(caller),
            space,
            request.contact_id,
            request.channel_id,
            request.assignee_user_id,
            request.assignee_team_id,
        )
        return pb.OpenConversationResponse(conversation=mapping.conversation(conv))

    async def AssignConversation(
        self, request: pb.AssignConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.AssignConversationResponse:
        caller, space = _scope(request, Permission.CONVERSATIONS_MANAGE)
        conv, changed = await self.service.assign(
            _actor(caller), space, request.conversation_id, request.user_id, request.team_id
        )
        return pb.AssignConversationResponse(conversation=mapping.conversation(conv), changed=changed)

    async def UnassignConversation(
        self, request: pb.UnassignConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnassignConversationResponse:
        caller, space = _scope(request, Permission.CONVERSATIONS_MANAGE)
        conv, changed = await self.service.unassign(_actor(caller), space, request.conversation_id)
        return pb.UnassignConversationResponse(conversation=mapping.conversation(conv), changed=changed)

    async def CloseConversation(
        self, request: pb.CloseConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseConversationResponse:
        caller, space = _scope(request, Permission.CONVERSATIONS_MANAGE)
        conv = await self.service.close(
            _actor(caller), space, request.conversation_id, request.category_id, request.summary
        )
        return pb.CloseConversationResponse(conversation=mapping.conversation(conv))

    async def ReopenConversation(
        self, request: pb.ReopenConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReopenConversationResponse:
        caller, space = _scope(request, Permission.CONVERSATIONS_MANAGE)
        conv = await self.service.reopen(_actor(caller), space, request.conversation_id)
        return pb.ReopenConversationResponse(conversation=mapping.conversation(conv))

    # -- replies ----------------------------------------------------------------------------------

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.SendMessageResponse:
        caller, space = _scope(request, Permission.CONVERSATIONS_REPLY)
        if request.shortcut_id or request.shortcut_name:
            caller.require(Permission.SHORTCUTS_USE, space)
        if len(request.client_request_id) > 128:
            raise InvalidArgument("client_request_id is at most 128 characters")
        inp = SendInput(
            text=request.text,
            attachments=_dicts(request.attachments),
            quick_replies=_dicts(request.quick_replies),
            shortcut_id=request.shortcut_id,
            shortcut_name=request.shortcut_name,
            tag=mapping.TAGS.get(request.tag),
            template=mapping.to_dict(request.template) if request.HasField("template") else None,
            client_request_id=request.client_request_id,
        )
        try:
            msg = await self.service.send_message(_actor(caller), space, request.conversation_id, inp)
        except FailedPrecondition as exc:
            metrics.REPLIES_REFUSED.labels("window" if "window" in exc.message else "precondition").inc()
            raise
        except InvalidArgument:
            metrics.REPLIES_REFUSED.labels("invalid").inc()
            raise
        return pb.SendMessageResponse(message=mapping.message(msg))

    # -- shortcuts --------------------------------------------------------------------------------

    async def CreateShortcut(
        self, request: pb.CreateShortcutRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateShortcutResponse:
        caller, space = _scope(request, Permission.SHORTCUTS_MANAGE)
        shortcut = await self.service.create_shortcut(
            _actor(caller),
            space,
            request.name,
            request.text,
            _dicts(request.attachments),
            _dicts(request.quick_replies),
        )
        return pb.CreateShortcutResponse(shortcut=mapping.shortcut(shortcut))

    async def GetShortcut(
        self, request: pb.GetShortcutRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetShortcutResponse:
        _, space = _scope(request, Permission.SHORTCUTS_USE)
        return pb.GetShortcutResponse(
            shortcut=mapping.shortcut(await self.service.get_shortcut(space, request.shortcut_id))
        )

    async def ListShortcuts(
        self, request: pb.ListShortcutsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListShortcutsResponse:
        _, space = _scope(request, Permission.SHORTCUTS_USE)
        page = await self.service.list_shortcuts(space, request.name_prefix, _page(request.page))
        return pb.ListShortcutsResponse(
            shortcuts=[mapping.shortcut(s) for s in page.items], page=_page_response(page.next_token)
        )

    async def UpdateShortcut(
        self, request: pb.UpdateShortcutRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateShortcutResponse:
        _, space = _scope(request, Permission.SHORTCUTS_MANAGE)
        shortcut = await self.service.update_shortcut(
            space,
            request.shortcut_id,
            name=request.name if request.HasField("name") else None,
            text=request.text if request.HasField("text") else None,
            attachments=_dicts(request.attachments) if request.replace_attachments else None,
            quick_replies=_dicts(request.quick_replies) if request.replace_quick_replies else None,
        )
        return pb.UpdateShortcutResponse(shortcut=mapping.shortcut(shortcut))

    async def DeleteShortcut(
        self, request: pb.DeleteShortcutRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteShortcutResponse:
        _, space = _scope(request, Permission.SHORTCUTS_MANAGE)
        await self.service.delete_shortcut(space, request.shortcut_id)
        return pb.DeleteShortcutResponse()

    async def RenderShortcut(
        self, request: pb.RenderShortcutRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenderShortcutResponse:
        caller, space = _scope(request, Permission.SHORTCUTS_USE)
        text = await self.service.render_shortcut(
            _actor(caller), space, request.shortcut_id, request.shortcut_name, request.conversation_id
        )
        return pb.RenderShortcutResponse(text=text)

    # -- closing categories and settings ----------------------------------------------------------

    async def CreateClosingCategory(
        self, request: pb.CreateClosingCategoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateClosingCategoryResponse:
        _, space = _scope(request, Permission.SPACE_SETTINGS)
        category = await self.service.create_category(space, request.name)
        return pb.CreateClosingCategoryResponse(category=mapping.category(category))

    async def ListClosingCategories(
        self, request: pb.ListClosingCategoriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListClosingCategoriesResponse:
        _, space = _scope(request, Permission.CONVERSATIONS_READ)
        page = await self.service.list_categories(space, request.include_archived, _page(request.page))
        return pb.ListClosingCategoriesResponse(
            categories=[mapping.category(c) for c in page.items], page=_page_response(page.next_token)
        )

    async def UpdateClosingCategory(
        self, request: pb.UpdateClosingCategoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateClosingCategoryResponse:
        _, space = _scope(request, Permission.SPACE_SETTINGS)
        category = await self.service.update_category(
            space,
            request.category_id,
            name=request.name if request.HasField("name") else None,
            archived=request.archived if request.HasField("archived") else None,
        )
        return pb.UpdateClosingCategoryResponse(category=mapping.category(category))

    async def GetSpaceSettings(
        self, request: pb.GetSpaceSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSpaceSettingsResponse:
        _, space = _scope(request, Permission.CONVERSATIONS_READ)
        return pb.GetSpaceSettingsResponse(settings=mapping.settings(await self.service.get_settings(space)))

    async def UpdateSpaceSettings(
        self, request: pb.UpdateSpaceSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateSpaceSettingsResponse:
        _, space = _scope(request, Permission.SPACE_SETTINGS)
        settings = await self.service.update_settings(
            space,
            category_required=request.closing_category_required
            if request.HasField("closing_category_required")
            else None,
            summary_required=request.closing_summary_required if request.HasField("closing_summary_required") else None,
            auto_close_after=request.auto_close_after.ToTimedelta() if request.HasField("auto_close_after") else None,
        )
        return pb.UpdateSpaceSettingsResponse(settings=mapping.settings(settings))

    # -- reports ----------------------------------------------------------------------------------

    async def GetReport(self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext) -> pb.GetReportResponse:
        _, space = _scope(request, Permission.REPORTS_READ)
        if not request.HasField("start_time") or not request.HasField("end_time"):
            raise InvalidArgument("start_time and end_time are required")
        period = {
            pb.REPORT_PERIOD_UNSPECIFIED: "day",
            pb.REPORT_PERIOD_DAY: "day",
            pb.REPORT_PERIOD_WEEK: "week",
            pb.REPORT_PERIOD_MONTH: "month",
        }.get(request.period)
        if period is None:
            raise InvalidArgument("period must be DAY, WEEK or MONTH")
        start = mapping.from_ts(request.start_time)
        end = mapping.from_ts(request.end_time)
        if start is None or end is None:
            raise InvalidArgument("start_time and end_time must be real instants")
        r = await self.service.report(space, start, end, period, request.time_zone)

        def summary(values: tuple[int, float | None, float | None]) -> pb.DurationSummary:
            count, avg, median = values
            return pb.DurationSummary(
                count=count or 0,
                average=mapping.duration(float(avg)) if avg is not None else None,
                median=mapping.duration(float(median)) if median is not None else None,
            )

        def assignee(row: tuple[str, int, int, float | None, float | None]) -> pb.AssigneeReport:
            ident, opened, closed, frt, resolution = row
            return pb.AssigneeReport(
                id=ident,
                opened=opened,
                closed=closed,
                average_first_response_time=mapping.duration(float(frt)) if frt is not None else None,
                average_resolution_time=mapping.duration(float(resolution)) if resolution is not None else None,
            )

        return pb.GetReportResponse(
            periods=[pb.PeriodCount(period_start=mapping.ts(p), opened=o, closed=c) for p, o, c in r.periods],
            opened=r.opened,
            closed=r.closed,
            by_category=[
                pb.CategoryCount(category_id=cid or "", category_name=name, closed=n) for cid, name, n in r.by_category
            ],
            by_user=[assignee(row) for row in r.by_user],
            by_team=[assignee(row) for row in r.by_team],
            first_response_time=summary(r.first_response),
            resolution_time=summary(r.resolution),
            first_response_buckets=[
                pb.FirstResponseBucket(
                    label=label,
                    lower=mapping.duration(lower),
                    upper=mapping.duration(upper),
                    count=count,
                )
                for label, lower, upper, count in r.frt_buckets
            ],
        )
