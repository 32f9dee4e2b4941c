"""`parley conversations ...`, `parley shortcuts ...` and `parley reports ...`: the inbox from a terminal.

Every command takes --json, --token and (for platform-wide service tokens) --space.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from parley.channel_gateway.v1 import events_pb2 as gw
from parley.conversations.v1 import conversations_service_pb2 as pb
from parley.conversations.v1 import conversations_service_pb2_grpc as pb_grpc
from parley.conversations.v1 import resources_pb2 as res

from parley_cli.common import call, emit, rpc_command, to_dict

SERVICE = "conversations"
STUB = pb_grpc.ConversationsServiceStub
STATUSES = {"open": res.CONVERSATION_STATUS_OPEN, "closed": res.CONVERSATION_STATUS_CLOSED}
TAGS = {
    "human_agent": gw.MESSAGE_TAG_HUMAN_AGENT,
    "confirmed_event_update": gw.MESSAGE_TAG_CONFIRMED_EVENT_UPDATE,
    "post_purchase_update": gw.MESSAGE_TAG_POST_PURCHASE_UPDATE,
    "account_update": gw.MESSAGE_TAG_ACCOUNT_UPDATE,
}
MEDIA = {
    "image": gw.MEDIA_KIND_IMAGE,
    "video": gw.MEDIA_KIND_VIDEO,
    "audio": gw.MEDIA_KIND_AUDIO,
    "file": gw.MEDIA_KIND_FILE,
}
PERIODS = {"day": pb.REPORT_PERIOD_DAY, "week": pb.REPORT_PERIOD_WEEK, "month": pb.REPORT_PERIOD_MONTH}
CONVERSATION_COLUMNS = ["conversation_id", "status", "contact_id", "channel_type", "assignee_user_id",
                        "assignee_team_id", "last_message_at", "last_message_text"]  # fmt: skip


def space_option(fn: Any) -> Any:
    return click.option("--space", "space_id", default="", help="Space id (needed with platform-wide tokens).")(fn)


async def rpc(method: str, request: Any, token_value: str | None) -> Any:
    return await call(SERVICE, STUB, method, request, token_value=token_value)


def _page(size: int, token: str) -> dict[str, Any]:
    return {"page_size": size, "page_token": token}


def _conversation_row(c: res.Conversation) -> dict[str, Any]:
    row = to_dict(c)
    row["status"] = res.ConversationStatus.Name(c.status).removeprefix("CONVERSATION_STATUS_").lower()
    row["channel_type"] = row.get("channel_type", "").removeprefix("CHANNEL_TYPE_").lower()
    return row


def _message_row(m: res.Message) -> dict[str, Any]:
    return {
        "sequence": m.sequence,
        "sent_at": m.sent_at.ToDatetime(tzinfo=UTC).isoformat() if m.HasField("sent_at") else "",
        "direction": res.MessageDirection.Name(m.direction).removeprefix("MESSAGE_DIRECTION_").lower(),
        "sender": m.sender or res.SenderType.Name(m.sender_type).removeprefix("SENDER_TYPE_").lower(),
        "text": m.text or ("[attachment]" if m.parts else ""),
        "status": gw.DeliveryStatus.Name(m.status).removeprefix("DELIVERY_STATUS_").lower() if m.status else "",
    }


def _timestamp(value: str) -> Timestamp:
    """An ISO date or date-time (UTC unless it says otherwise)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date such as 2026-11-01 or 2026-11-01T09:00") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    out = Timestamp()
    out.FromDatetime(parsed)
    return out


# == parley conversations ===========================================================================


@click.group()
def conversations() -> None:
    """Conversations: list, show, reply, assign, close, reopen."""


@conversations.command("list")
@click.option("--status", type=click.Choice(sorted(STATUSES)), help="Only open or closed conversations.")
@click.option("--assignee", default="", help="Only those assigned to this user id.")
@click.option("--team", default="", help="Only those assigned to this team id.")
@click.option("--unassigned", is_flag=True, help="Only those without an assigned user.")
@click.option("--channel", default="", help="Only this channel id.")
@click.option("--contact", default="", help="Only this contact id.")
@click.option("--page-size", default=50, show_default=True)
@click.option("--page-token", default="", help="next_page_token of a previous page.")
@click.option("--all", "all_pages", is_flag=True, help="Follow every page.")
@rpc_command(space_option)
async def list_conversations(status: str | None, assignee: str, team: str, unassigned: bool, channel: str,
                             contact: str, page_size: int, page_token: str, all_pages: bool, space_id: str,
                             token_value: str | None, as_json: bool) -> None:  # fmt: skip
    """List conversations, most recent activity first."""
    rows: list[res.Conversation] = []
    token = page_token
    while True:
        reply = await rpc(
            "ListConversations",
            pb.ListConversationsRequest(
                space_id=space_id,
                status=STATUSES.get(status or "", 0),  # type: ignore[arg-type]
                assignee_user_id=assignee,
                assignee_team_id=team,
                unassigned=unassigned,
                channel_id=channel,
                contact_id=contact,
                page=_page(page_size, token),
            ),
            token_value,
        )
        rows += list(reply.conversations)
        token = reply.page.next_page_token
        if not all_pages or not token:
            break
    if as_json:
        emit({"conversations": [to_dict(c) for c in rows], "next_page_token": token}, True)
        return
    emit([_conversation_row(c) for c in rows], False, CONVERSATION_COLUMNS)
    if token:
        click.echo(f"(more: --page-token {token})")


@conversations.command("show")
@click.argument("conversation_id")
@click.option("--messages", "message_count", default=50, show_default=True, help="How many messages to show.")
@rpc_command(space_option)
async def show(conversation_id: str, message_count: int, space_id: str, token_value: str | None, as_json: bool) -> None:
    """One conversation with its assignment history and messages, oldest first."""
    reply = await rpc(
        "GetConversation",
        pb.GetConversationRequest(
            space_id=space_id, conversation_id=conversation_id, messages_page={"page_size": message_count}
        ),
        token_value,
    )
    if as_json:
        emit(reply, True)
        return
    emit(_conversation_row(reply.conversation), False, CONVERSATION_COLUMNS)
    metrics = to_dict(reply.conversation.metrics)
    if metrics:
        click.echo("\nmetrics: " + ", ".join(f"{k}={v}" for k, v in sorted(metrics.items())))
    if reply.assignments:
        click.echo("\nassignments:")
        emit(list(reply.assignments), False, ["user_id", "team_id", "assigned_by", "assigned_at", "ended_at"])
    click.echo("\nmessages:")
    emit([_message_row(m) for m in reply.messages], False, ["sequence", "sent_at", "direction", "sender", "text",
                                                             "status"])  # fmt: skip


@conversations.command("reply")
@click.argument("conversation_id")
@click.option("--text", default="", help="The message text.")
@click.option("--attach", multiple=True, help="Attachment URL, optionally KIND:URL (image, video, audio, file).")
@click.option("--quick-reply", multiple=True, help="Quick reply TITLE or TITLE=PAYLOAD.")
@click.option("--shortcut", default="", help="Send this shortcut (by name), rendered for the contact.")
@click.option("--tag", type=click.Choice(sorted(TAGS)), help="Messenger/Instagram message tag.")
@click.option("--template", default="", help="WhatsApp template name.")
@click.option("--language", default="en", show_default=True, help="WhatsApp template language.")
@click.option("--param", multiple=True, help="WhatsApp template body parameter (repeat, in order).")
@click.option("--request-id", default="", help="Idempotency key: a retry with the same key sends once.")
@rpc_command(space_option)
async def reply(conversation_id: str, text: str, attach: tuple[str, ...], quick_reply: tuple[str, ...],
                shortcut: str, tag: str | None, template: str, language: str, param: tuple[str, ...],
                request_id: str, space_id: str, token_value: str | None, as_json: bool) -> None:  # fmt: skip
    """Reply to the contact (stored as queued, then sent by the channel gateway)."""
    attachments = []
    for item in attach:
        kind, sep, url = item.partition(":")
        if sep and kind in MEDIA and not url.startswith("//"):
            attachments.append(gw.OutboundAttachment(kind=MEDIA[kind], url=url))
        else:
            attachments.append(gw.OutboundAttachment(kind=gw.MEDIA_KIND_FILE, url=item))
    quick = []
    for item in quick_reply:
        title, _, payload = item.partition("=")
        quick.append(gw.OutboundQuickReply(title=title, payload=payload or title))
    request = pb.SendMessageRequest(
        space_id=space_id,
        conversation_id=conversation_id,
        text=text,
        attachments=attachments,
        quick_replies=quick,
        shortcut_name=shortcut,
        tag=TAGS.get(tag or "", 0),  # type: ignore[arg-type]
        client_request_id=request_id,
    )
    if template:
        request.template.CopyFrom(gw.OutboundTemplate(name=template, language=language, body_parameters=list(param)))
    sent = await rpc("SendMessage", request, token_value)
    emit(sent.message if as_json else _message_row(sent.message), as_json)


@conversations.command("open")
@click.option("--contact", required=True, help="Contact id.")
@click.option("--channel", required=True, help="Channel id the contact has written on.")
@click.option("--user", default="", help="Assign to this user.")
@click.option("--team", default="", help="Assign to this team.")
@rpc_command(space_option)
async def open_conversation(contact: str, channel: str, user: str, team: str, space_id: str, token_value: str | None,
                            as_json: bool) -> None:  # fmt: skip
    """Open a conversation with a contact."""
    reply = await rpc(
        "OpenConversation",
        pb.OpenConversationRequest(
            space_id=space_id, contact_id=contact, channel_id=channel, assignee_user_id=user, assignee_team_id=team
        ),
        token_value,
    )
    emit(reply.conversation if as_json else _conversation_row(reply.conversation), as_json, None)


@conversations.command("assign")
@click.argument("conversation_id")
@click.option("--user", default="", help="User id.")
@click.option("--team", default="", help="Team id.")
@rpc_command(space_option)
async def assign(conversation_id: str, user: str, team: str, space_id: str, token_value: str | None,
                 as_json: bool) -> None:  # fmt: skip
    """Assign to a user and/or a team (replaces the current assignment)."""
    if not user and not team:
        raise click.UsageError("give --user and/or --team (use `unassign` to remove the assignment)")
    reply = await rpc(
        "AssignConversation",
        pb.AssignConversationRequest(space_id=space_id, conversation_id=conversation_id, user_id=user, team_id=team),
        token_value,
    )
    emit(reply if as_json else _conversation_row(reply.conversation), as_json, CONVERSATION_COLUMNS)


@conversations.command("unassign")
@click.argument("conversation_id")
@rpc_command(space_option)
async def unassign(conversation_id: str, space_id: str, token_value: str | None, as_json: bool) -> None:
    """Remove the user and team assignment."""
    reply = await rpc(
        "UnassignConversation",
        pb.UnassignConversationRequest(space_id=space_id, conversation_id=conversation_id),
        token_value,
    )
    emit(reply if as_json else _conversation_row(reply.conversation), as_json, CONVERSATION_COLUMNS)


@conversations.command("close")
@click.argument("conversation_id")
@click.option("--category", default="", help="Closing category id or name.")
@click.option("--summary", default="", help="Closing summary.")
@rpc_command(space_option)
async def close(conversation_id: str, category: str, summary: str, space_id: str, token_value: str | None,
                as_json: bool) -> None:  # fmt: skip
    """Close with a closing note (the space decides whether category and summary are required)."""
    category_id = await _category_id(category, space_id, token_value) if category else ""
    reply = await rpc(
        "CloseConversation",
        pb.CloseConversationRequest(
            space_id=space_id, conversation_id=conversation_id, category_id=category_id, summary=summary
        ),
        token_value,
    )
    emit(reply.conversation if as_json else _conversation_row(reply.conversation), as_json, CONVERSATION_COLUMNS)


async def _category_id(value: str, space_id: str, token_value: str | None) -> str:
    reply = await rpc(
        "ListClosingCategories",
        pb.ListClosingCategoriesRequest(space_id=space_id, page={"page_size": 500}, include_archived=True),
        token_value,
    )
    for c in reply.categories:
        if value in (c.category_id, c.name) or value.lower() == c.name.lower():
            return str(c.category_id)
    names = ", ".join(c.name for c in reply.categories if not c.archived) or "none defined"
    raise click.BadParameter(f"no closing category {value!r}; this space has: {names}", param_hint="--category")


@conversations.command("reopen")
@click.argument("conversation_id")
@rpc_command(space_option)
async def reopen(conversation_id: str, space_id: str, token_value: str | None, as_json: bool) -> None:
    """Open a new conversation following a closed one."""
    reply = await rpc(
        "ReopenConversation",
        pb.ReopenConversationRequest(space_id=space_id, conversation_id=conversation_id),
        token_value,
    )
    emit(reply.conversation if as_json else _conversation_row(reply.conversation), as_json, CONVERSATION_COLUMNS)


@conversations.command("counts")
@rpc_command(space_option)
async def counts(space_id: str, token_value: str | None, as_json: bool) -> None:
    """Open/closed/unassigned/mine counts, and open conversations per user and team."""
    reply = await rpc("GetInboxCounts", pb.GetInboxCountsRequest(space_id=space_id), token_value)
    if as_json:
        emit(reply, True)
        return
    emit({"open": reply.open, "closed": reply.closed, "unassigned": reply.unassigned, "mine": reply.mine}, False)
    if reply.by_user:
        click.echo("\nby user:")
        emit(list(reply.by_user), False, ["id", "open"])
    if reply.by_team:
        click.echo("\nby team:")
        emit(list(reply.by_team), False, ["id", "open"])


@conversations.group("categories")
def categories() -> None:
    """Closing categories of the space."""


@categories.command("list")
@click.option("--archived", is_flag=True, help="Include archived categories.")
@rpc_command(space_option)
async def categories_list(archived: bool, space_id: str, token_value: str | None, as_json: bool) -> None:
    """List the closing categories."""
    reply = await rpc(
        "ListClosingCategories",
        pb.ListClosingCategoriesRequest(space_id=space_id, include_archived=archived, page={"page_size": 500}),
        token_value,
    )
    emit(list(reply.categories), as_json, ["category_id", "name", "archived"])


@categories.command("create")
@click.argument("name")
@rpc_command(space_option)
async def categories_create(name: str, space_id: str, token_value: str | None, as_json: bool) -> None:
    """Create a closing category."""
    reply = await rpc(
        "CreateClosingCategory", pb.CreateClosingCategoryRequest(space_id=space_id, name=name), token_value
    )
    emit(reply.category, as_json, ["category_id", "name", "archived"])


@categories.command("update")
@click.argument("category_id")
@click.option("--name", default=None, help="New name.")
@click.option("--archive/--unarchive", default=None, help="Archive (keep for reports, hide from closing).")
@rpc_command(space_option)
async def categories_update(category_id: str, name: str | None, archive: bool | None, space_id: str,
                            token_value: str | None, as_json: bool) -> None:  # fmt: skip
    """Rename or (un)archive a closing category."""
    request = pb.UpdateClosingCategoryRequest(space_id=space_id, category_id=category_id)
    if name is not None:
        request.name = name
    if archive is not None:
        request.archived = archive
    reply = await rpc("UpdateClosingCategory", request, token_value)
    emit(reply.category, as_json, ["category_id", "name", "archived"])


@conversations.group("settings")
def settings() -> None:
    """The space's inbox settings: closing note rules and auto-close."""


@settings.command("show")
@rpc_command(space_option)
async def settings_show(space_id: str, token_value: str | None, as_json: bool) -> None:
    """Show the inbox settings."""
    reply = await rpc("GetSpaceSettings", pb.GetSpaceSettingsRequest(space_id=space_id), token_value)
    emit(reply.settings, as_json)


@settings.command("set")
@click.option("--require-category/--no-require-category", default=None)
@click.option("--require-summary/--no-require-summary", default=None)
@click.option("--auto-close-minutes", type=int, default=None, help="Close after this much inactivity; 0 turns it off.")
@rpc_command(space_option)
async def settings_set(require_category: bool | None, require_summary: bool | None, auto_close_minutes: int | None,
                       space_id: str, token_value: str | None, as_json: bool) -> None:  # fmt: skip
    """Change the inbox settings (unset options keep their value)."""
    request = pb.UpdateSpaceSettingsRequest(space_id=space_id)
    if require_category is not None:
        request.closing_category_required = require_category
    if require_summary is not None:
        request.closing_summary_required = require_summary
    if auto_close_minutes is not None:
        request.auto_close_after.CopyFrom(Duration(seconds=auto_close_minutes * 60))
    reply = await rpc("UpdateSpaceSettings", request, token_value)
    emit(reply.settings, as_json)


# == parley shortcuts ===============================================================================

SHORTCUT_COLUMNS = ["shortcut_id", "name", "text"]


@click.group()
def shortcuts() -> None:
    """Reply shortcuts shared in the space ({{contact.first_name}}, {{contact.fields.<key>}}, {{user.name}})."""


@shortcuts.command("list")
@click.option("--prefix", default="", help="Only names starting with this.")
@rpc_command(space_option)
async def shortcuts_list(prefix: str, space_id: str, token_value: str | None, as_json: bool) -> None:
    """List shortcuts by name."""
    rows: list[res.Shortcut] = []
    token = ""
    while True:
        reply = await rpc(
            "ListShortcuts",
            pb.ListShortcutsRequest(space_id=space_id, name_prefix=prefix, page=_page(500, token)),
            token_value,
        )
        rows += list(reply.shortcuts)
        token = reply.page.next_page_token
        if not token:
            break
    emit(rows, as_json, SHORTCUT_COLUMNS)


@shortcuts.command("show")
@click.argument("shortcut_id")
@rpc_command(space_option)
async def shortcuts_show(shortcut_id: str, space_id: str, token_value: str | None, as_json: bool) -> None:
    """Show one shortcut."""
    reply = await rpc("GetShortcut", pb.GetShortcutRequest(space_id=space_id, shortcut_id=shortcut_id), token_value)
    emit(reply.shortcut, as_json)


def _shortcut_parts(attach: tuple[str, ...], quick_reply: tuple[str, ...]) -> tuple[list[Any], list[Any]]:
    attachments = [gw.OutboundAttachment(kind=gw.MEDIA_KIND_FILE, url=u) for u in attach]
    quick = []
    for item in quick_reply:
        title, _, payload = item.partition("=")
        quick.append(gw.OutboundQuickReply(title=title, payload=payload or title))
    return attachments, quick


@shortcuts.command("create")
@click.argument("name")
@click.option("--text", required=True, help="Template text, e.g. 'Hi {{contact.first_name|there}}'.")
@click.option("--attach", multiple=True, help="Attachment URL.")
@click.option("--quick-reply", multiple=True, help="Quick reply TITLE or TITLE=PAYLOAD.")
@rpc_command(space_option)
async def shortcuts_create(name: str, text: str, attach: tuple[str, ...], quick_reply: tuple[str, ...],
                           space_id: str, token_value: str | None, as_json: bool) -> None:  # fmt: skip
    """Create a shortcut (managers)."""
    attachments, quick = _shortcut_parts(attach, quick_reply)
    reply = await rpc(
        "CreateShortcut",
        pb.CreateShortcutRequest(space_id=space_id, name=name, text=text, attachments=attachments, quick_replies=quick),
        token_value,
    )
    emit(reply.shortcut, as_json, SHORTCUT_COLUMNS)


@shortcuts.command("update")
@click.argument("shortcut_id")
@click.option("--name", default=None)
@click.option("--text", default=None)
@rpc_command(space_option)
async def shortcuts_update(shortcut_id: str, name: str | None, text: str | None, space_id: str,
                           token_value: str | None, as_json: bool) -> None:  # fmt: skip
    """Rename a shortcut or change its text (managers)."""
    request = pb.UpdateShortcutRequest(space_id=space_id, shortcut_id=shortcut_id)
    if name is not None:
        request.name = name
    if text is not None:
        request.text = text
    reply = await rpc("UpdateShortcut", request, token_value)
    emit(reply.shortcut, as_json, SHORTCUT_COLUMNS)


@shortcuts.command("delete")
@click.argument("shortcut_id")
@rpc_command(space_option)
async def shortcuts_delete(shortcut_id: str, space_id: str, token_value: str | None, as_json: bool) -> None:
    """Delete a shortcut (managers)."""
    await rpc("DeleteShortcut", pb.DeleteShortcutRequest(space_id=space_id, shortcut_id=shortcut_id), token_value)
    emit({"deleted": shortcut_id}, as_json)


@shortcuts.command("render")
@click.argument("name")
@click.option("--conversation", "conversation_id", required=True, help="Render for this conversation's contact.")
@rpc_command(space_option)
async def shortcuts_render(name: str, conversation_id: str, space_id: str, token_value: str | None,
                           as_json: bool) -> None:  # fmt: skip
    """Show the text a shortcut would send in a conversation."""
    reply = await rpc(
        "RenderShortcut",
        pb.RenderShortcutRequest(space_id=space_id, shortcut_name=name, conversation_id=conversation_id),
        token_value,
    )
    if as_json:
        emit(reply, True)
    else:
        click.echo(reply.text)


# == parley reports =================================================================================


@click.group()
def reports() -> None:
    """Conversation reports (managers)."""


@reports.command("conversations")
@click.option("--from", "start", default=None, help="Start (ISO date/time, UTC unless given); default 7 days ago.")
@click.option("--to", "end", default=None, help="End, exclusive (ISO date/time); default now.")
@click.option("--period", type=click.Choice(sorted(PERIODS)), default="day", show_default=True)
@click.option("--tz", "time_zone", default="UTC", show_default=True, help="IANA time zone for period boundaries.")
@rpc_command(space_option)
async def reports_conversations(start: str | None, end: str | None, period: str, time_zone: str, space_id: str,
                                token_value: str | None, as_json: bool) -> None:  # fmt: skip
    """Opened/closed per period, by closing category, assignee and team; response and resolution times."""
    now = datetime.now(UTC)
    start_ts = _timestamp(start) if start else _timestamp((now - timedelta(days=7)).isoformat())
    end_ts = _timestamp(end) if end else _timestamp(now.isoformat())
    reply = await rpc(
        "GetReport",
        pb.GetReportRequest(
            space_id=space_id, start_time=start_ts, end_time=end_ts, period=PERIODS[period], time_zone=time_zone
        ),
        token_value,
    )
    if as_json:
        emit(reply, True)
        return
    click.echo(f"opened {reply.opened}, closed {reply.closed}")
    emit([{"period": p.period_start.ToDatetime(tzinfo=UTC).isoformat(), "opened": p.opened, "closed": p.closed}
          for p in reply.periods], False, ["period", "opened", "closed"])  # fmt: skip
    for title, summary in (("first response", reply.first_response_time), ("resolution", reply.resolution_time)):
        if summary.count:
            click.echo(
                f"{title}: {summary.count} conversations, average {summary.average.ToTimedelta()}, "
                f"median {summary.median.ToTimedelta()}"
            )
    click.echo("\nfirst response time:")
    emit([{"bucket": b.label, "conversations": b.count} for b in reply.first_response_buckets], False)
    if reply.by_category:
        click.echo("\nby closing category:")
        emit([{"category": c.category_name or "(none)", "closed": c.closed} for c in reply.by_category], False)
    for title, rows in (("by user", reply.by_user), ("by team", reply.by_team)):
        if rows:
            click.echo(f"\n{title}:")
            emit(list(rows), False, ["id", "opened", "closed", "average_first_response_time",
                                     "average_resolution_time"])  # fmt: skip


GROUPS = (conversations, shortcuts, reports)
