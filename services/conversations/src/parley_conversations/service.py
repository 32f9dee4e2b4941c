"""Domain logic of the inbox. Knows nothing of protobuf, gRPC or NATS.

Conversation metrics (kept on the conversation row as messages come and go):
- first response time: from the contact's first message in the conversation to the first reply
  by a human agent after it (workflow, integration and echo messages do not count);
- response times: each time the contact writes while no reply is owed, a wait starts; the next
  human reply ends it. The average response time is the mean of those waits;
- resolution time: open to close;
- time to first assignment: open to the first assignment;
- incoming and outgoing message counts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from parley_kit.contracts import messaging_window
from parley_kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from parley_conversations import pagination, templates
from parley_conversations.domain import (
    CHANGE_KINDS,
    CONTACT_ACTIVITY_KINDS,
    MESSAGE_KINDS,
    RECEIPT_KINDS,
    SYSTEM,
    Actor,
    ContactChange,
    ConversationAssigned,
    ConversationClosed,
    ConversationFilter,
    ConversationOpened,
    ConversationReopened,
    InboundItem,
    InboundKind,
    MessageReceived,
    MessageSent,
    MessageStatusChanged,
    MessageUpdated,
    OutboundSend,
    Page,
    PageRequest,
    SendInput,
    StatusUpdate,
    values_by_key,
)
from parley_conversations.models import (
    STATUS_RANK,
    Assignment,
    ClosingCategory,
    Conversation,
    ConversationSource,
    ConversationStatus,
    DeliveryStatus,
    Direction,
    Message,
    MessageKind,
    SenderType,
    Shortcut,
    SpaceSettings,
    new_id,
)
from parley_conversations.repository import ContactKey, Repository, Tx

if TYPE_CHECKING:
    from parley_kit.directory import AssigneeCheck

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


SHORTCUT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_SUMMARY = 2000
MAX_CATEGORY_NAME = 120
MAX_SHORTCUT_TEXT = 4096
MAX_QUICK_REPLIES = 13
MAX_QUICK_REPLY_TITLE = 20
MAX_ATTACHMENTS = 10
MAX_AUTO_CLOSE = timedelta(days=90)
MIN_AUTO_CLOSE = timedelta(minutes=1)
TEXT_LIMITS = {
    messaging_window.MESSENGER: 2000,
    messaging_window.INSTAGRAM: 1000,
    messaging_window.WHATSAPP: 4096,
    messaging_window.TELEGRAM: 4096,
    messaging_window.CUSTOM: 10000,
}
PREVIEW = 200
FRT_BUCKETS = ("<30s", "30s-2m", "2-5m", "5-10m", "10-30m", "30m-1h", ">1h")


def check_window(
    channel_type: str, last_inbound_at: datetime | None, now: datetime, *, tag: str = "", is_template: bool = False
) -> None:
    """The kit's messaging-window rule for a reply: FAILED_PRECONDITION with its reason when it may not go now."""
    verdict = messaging_window.decide(channel_type, last_inbound_at, now, tag=tag, is_template=is_template)
    if not verdict.allowed:
        raise FailedPrecondition(verdict.reason)


@dataclass
class IngestStats:
    stored: int = 0
    duplicates: int = 0
    opened: int = 0
    statuses: int = 0
    updates: int = 0
    unmatched: int = 0
    # Per message-like event id: (conversation id, message id, opened the conversation, duplicate).
    outcomes: dict[str, tuple[str | None, str | None, bool, bool]] = field(default_factory=dict)


@dataclass
class Report:
    periods: list[tuple[datetime, int, int]] = field(default_factory=list)
    opened: int = 0
    closed: int = 0
    by_category: list[tuple[str | None, str, int]] = field(default_factory=list)
    by_user: list[tuple[str, int, int, float | None, float | None]] = field(default_factory=list)
    by_team: list[tuple[str, int, int, float | None, float | None]] = field(default_factory=list)
    first_response: tuple[int, float | None, float | None] = (0, None, None)
    resolution: tuple[int, float | None, float | None] = (0, None, None)
    frt_buckets: list[tuple[str, float, float | None, int]] = field(default_factory=list)


def source_for(actor: Actor) -> ConversationSource:
    return ConversationSource.WORKFLOW if actor.kind == "service" else ConversationSource.AGENT


def sender_for(actor: Actor) -> SenderType:
    return {
        "user": SenderType.USER,
        "service": SenderType.WORKFLOW,
        "apikey": SenderType.INTEGRATION,
    }.get(actor.kind, SenderType.SYSTEM)


def _preview(text: str, fallback: str = "") -> str:
    value = (text or fallback).strip().replace("\n", " ")
    return value[:PREVIEW]


def _seconds(delta: timedelta) -> float:
    return max(delta.total_seconds(), 0.0)


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


UserNames = Callable[[str], Awaitable[str]]


class ConversationsService:
    def __init__(
        self,
        repo: Repository,
        *,
        clock: Clock = utcnow,
        user_names: UserNames | None = None,
        assignees: AssigneeCheck | None = None,
        release_batch: int = 500,
    ) -> None:
        """`assignees` says whether a user and team may be assigned in a space (the workspace directory);
        without it nothing can be assigned. `release_batch`: conversations released per transaction when a
        member or team goes away."""
        self.repo = repo
        self.clock = clock
        self.user_names = user_names
        self.assignees = assignees
        self.release_batch = release_batch

    # ==== queries ================================================================================

    async def list_conversations(self, space_id: str, f: ConversationFilter, page: PageRequest) -> Page[Conversation]:
        size = pagination.page_size(page, default=50, maximum=200)
        query = pagination.fingerprint("conversations", space_id, f)
        after = pagination.decode(page.token, query, (datetime, str))
        async with self.repo.transaction() as tx:
            rows = await tx.list_conversations(space_id, f, size + 1, after)
            total = await tx.count_conversations(space_id, f)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            key = last.last_activity_at if f.order == "last_activity" else last.opened_at
            token = pagination.encode([key, last.id], query)
        return Page(rows, token, total)

    async def get_conversation(self, space_id: str, conversation_id: str) -> tuple[Conversation, list[Assignment]]:
        async with self.repo.transaction() as tx:
            conv = await self._conversation(tx, space_id, conversation_id)
            return conv, await tx.assignments(conv.id)

    async def list_messages(self, space_id: str, conversation_id: str, page: PageRequest) -> Page[Message]:
        size = pagination.page_size(page, default=50, maximum=500)
        query = pagination.fingerprint("messages", space_id, conversation_id)
        after = pagination.decode(page.token, query, (int,))
        async with self.repo.transaction() as tx:
            conv = await self._conversation(tx, space_id, conversation_id)
            rows = await tx.list_messages(conv.id, size + 1, after[0] if after else None)
            total = await tx.count_messages(conv.id)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = pagination.encode([rows[-1].seq], query)
        return Page(rows, token, total)

    async def inbox_counts(self, space_id: str, user_id: str | None) -> dict[str, Any]:
        async with self.repo.transaction() as tx:
            return await tx.inbox_counts(space_id, user_id)

    @staticmethod
    async def _conversation(tx: Tx, space_id: str, conversation_id: str, *, lock: bool = False) -> Conversation:
        if not conversation_id:
            raise InvalidArgument("conversation_id is required")
        conv = await tx.conversation(space_id, conversation_id, lock=lock)
        if conv is None:
            raise NotFound(f"conversation {conversation_id} not found")
        return conv

    # ==== lifecycle ==============================================================================

    async def open_conversation(
        self,
        actor: Actor,
        space_id: str,
        contact_id: str,
        channel_id: str,
        assignee_user_id: str = "",
        assignee_team_id: str = "",
    ) -> Conversation:
        if not contact_id or not channel_id:
            raise InvalidArgument("contact_id and channel_id are required")
        await self._require_assignee(space_id, assignee_user_id, assignee_team_id)
        now = self.clock()
        async with self.repo.transaction() as tx:
            identity = await tx.contact_channel(space_id, contact_id, channel_id)
            if identity is None:
                raise FailedPrecondition(
                    f"contact {contact_id} has never written on channel {channel_id}; a conversation can only be "
                    "opened on a channel where the contact has an identity"
                )
            existing = await tx.open_conversation(space_id, contact_id, channel_id, lock=True)
            if existing is not None:
                raise FailedPrecondition(
                    f"contact {contact_id} already has an open conversation on this channel: {existing.id}"
                )
            latest = (await tx.latest_conversations([(space_id, contact_id, channel_id)])).get(
                (space_id, contact_id, channel_id)
            )
            conv = self._new_conversation(
                space_id=space_id,
                contact_id=contact_id,
                channel_id=channel_id,
                channel_type=identity.channel_type,
                external_id=identity.external_id,
                source=source_for(actor),
                opened_by=actor.subject,
                opened_at=now,
                previous_id=latest.id if latest is not None else None,
            )
            tx.add(conv)
            await tx.flush()
            if assignee_user_id or assignee_team_id:
                self._assign(
                    tx, conv, actor, assignee_user_id or None, assignee_team_id or None, now, None, event=False
                )
            else:
                await self._inherit_assignees(tx, [conv])
            tx.emit(ConversationOpened(actor, conv))
        return conv

    async def assign(
        self, actor: Actor, space_id: str, conversation_id: str, user_id: str, team_id: str
    ) -> tuple[Conversation, bool]:
        if not user_id and not team_id:
            raise InvalidArgument("name a user_id and/or a team_id to assign to (UnassignConversation removes both)")
        await self._require_assignee(space_id, user_id, team_id)
        now = self.clock()
        async with self.repo.transaction() as tx:
            conv = await self._conversation(tx, space_id, conversation_id, lock=True)
            self._require_open(conv, "assign")
            if (conv.assignee_user_id, conv.assignee_team_id) == (user_id or None, team_id or None):
                return conv, False
            current = await tx.current_assignment(conv.id)
            self._assign(tx, conv, actor, user_id or None, team_id or None, now, current)
        return conv, True

    async def unassign(self, actor: Actor, space_id: str, conversation_id: str) -> tuple[Conversation, bool]:
        now = self.clock()
        async with self.repo.transaction() as tx:
            conv = await self._conversation(tx, space_id, conversation_id, lock=True)
            self._require_open(conv, "unassign")
            if conv.assignee_user_id is None and conv.assignee_team_id is None:
                return conv, False
            self._assign(tx, conv, actor, None, None, now, await tx.current_assignment(conv.id))
        return conv, True

    async def _require_assignee(self, space_id: str, user_id: str, team_id: str) -> None:
        """The user must be a member of the space and the team one of its teams (the kit's check: INVALID_ARGUMENT
        for an overlong id, NOT_FOUND naming each, UNAVAILABLE when the workspace cannot say), before anything
        changes."""
        if not user_id and not team_id:
            return
        if self.assignees is None:
            raise FailedPrecondition("this process has no workspace directory to check assignees; nothing changed")
        await self.assignees(space_id, user_id, team_id)

    async def release_member(self, space_id: str, user_id: str, actor: str) -> int:
        """A member left the space: unassign them from its open conversations (a team assigned with them stays).
        Bounded transactions of `release_batch` conversations until none is left, so a redelivered event finds
        nothing to do; one conversation.assigned per conversation. Returns how many changed."""
        return await self._release(space_id, Actor(actor), user_id=user_id)

    async def release_team(self, space_id: str, team_id: str, actor: str) -> int:
        """A team was deleted: unassign it from the space's open conversations (a user assigned with it stays)."""
        return await self._release(space_id, Actor(actor), team_id=team_id)

    async def _release(self, space_id: str, actor: Actor, *, user_id: str = "", team_id: str = "") -> int:
        released = 0
        while True:
            now = self.clock()
            async with self.repo.transaction() as tx:
                convs = await tx.open_conversations_assigned(
                    space_id, user_id or None, team_id or None, self.release_batch
                )
                current = await tx.current_assignments([conv.id for conv in convs])
                for conv in convs:
                    remaining = _without(conv, user_id, team_id)
                    assert remaining is not None  # it holds them: that is how it was found
                    self._assign(tx, conv, actor, *remaining, now, current.get(conv.id))
            if not convs:  # not "fewer than a batch": a row changed concurrently is skipped, not counted
                return released
            released += len(convs)

    @staticmethod
    def _assign(
        tx: Tx,
        conv: Conversation,
        actor: Actor,
        user_id: str | None,
        team_id: str | None,
        now: datetime,
        current: Assignment | None,
        *,
        event: bool = True,
    ) -> None:
        """Give the conversation this assignee (both None: unassigned): its `current` assignment row ends, a new
        one starts; one conversation.assigned, unless `event` is False (a conversation being opened, whose
        opened event carries its assignee)."""
        previous = (conv.assignee_user_id, conv.assignee_team_id)
        if current is not None:
            current.ended_at, current.ended_by = now, actor.subject
        conv.assignee_user_id, conv.assignee_team_id = user_id, team_id
        if user_id is None and team_id is None:
            conv.assigned_at = None
        else:
            conv.assigned_at = now
            if conv.first_assigned_at is None:
                conv.first_assigned_at = now
            tx.add(
                Assignment(
                    space_id=conv.space_id,
                    conversation_id=conv.id,
                    user_id=user_id,
                    team_id=team_id,
                    assigned_by=actor.subject,
                    assigned_at=now,
                )
            )
        if event:
            tx.emit(ConversationAssigned(actor, conv, *previous))

    @staticmethod
    def _require_open(conv: Conversation, action: str) -> None:
        if conv.status != ConversationStatus.OPEN:
            raise FailedPrecondition(
                f"conversation {conv.id} is closed; cannot {action} it (ReopenConversation starts a new one)"
            )

    async def close(
        self, actor: Actor, space_id: str, conversation_id: str, category_id: str, summary: str
    ) -> Conversation:
        summary = (summary or "").strip()
        if len(summary) > MAX_SUMMARY:
            raise InvalidArgument(f"summary is {len(summary)} characters; the limit is {MAX_SUMMARY}")
        now = self.clock()
        async with self.repo.transaction() as tx:
            conv = await self._conversation(tx, space_id, conversation_id, lock=True)
            if conv.status != ConversationStatus.OPEN:
                raise FailedPrecondition(
                    f"conversation {conv.id} is already closed (at {conv.closed_at:%Y-%m-%d %H:%M:%S}Z)"
                )
            settings = await tx.space_settings(space_id)
            category: ClosingCategory | None = None
            if category_id:
                category = await tx.category(space_id, category_id)
                if category is None:
                    raise InvalidArgument(
                        f"closing category {category_id} does not exist in this space; ListClosingCategories shows them"
                    )
                if category.archived:
                    raise FailedPrecondition(f"closing category '{category.name}' is archived; choose another one")
            missing = []
            if settings is not None and settings.closing_category_required and category is None:
                missing.append("a closing category (category_id)")
            if settings is not None and settings.closing_summary_required and not summary:
                missing.append("a summary")
            if missing:
                raise FailedPrecondition(f"this space requires {' and '.join(missing)} to close a conversation")
            self._close(conv, actor, now, category, summary)
            tx.emit(ConversationClosed(actor, conv))
        return conv

    @staticmethod
    def _close(
        conv: Conversation,
        actor: Actor,
        now: datetime,
        category: ClosingCategory | None,
        summary: str,
        *,
        auto: bool = False,
    ) -> None:
        conv.status = ConversationStatus.CLOSED.value
        conv.closed_at = now
        conv.closed_by = actor.subject
        conv.close_category_id = category.id if category else None
        conv.close_category_name = category.name if category else None
        conv.close_summary = summary
        conv.auto_closed = auto
        conv.resolution_seconds = _seconds(now - conv.opened_at)
        conv.awaiting_reply_since = None
        conv.last_activity_at = max(conv.last_activity_at, now)

    async def reopen(self, actor: Actor, space_id: str, conversation_id: str) -> Conversation:
        now = self.clock()
        async with self.repo.transaction() as tx:
            old = await self._conversation(tx, space_id, conversation_id, lock=True)
            if old.status == ConversationStatus.OPEN:
                raise FailedPrecondition(f"conversation {old.id} is open; only a closed conversation can be reopened")
            other = await tx.open_conversation(space_id, old.contact_id, old.channel_id, lock=True)
            if other is not None:
                raise FailedPrecondition(
                    f"the contact already has an open conversation on this channel ({other.id}); use it instead"
                )
            conv = self._new_conversation(
                space_id=space_id,
                contact_id=old.contact_id,
                channel_id=old.channel_id,
                channel_type=old.channel_type,
                external_id=old.contact_external_id,
                source=source_for(actor),
                opened_by=actor.subject,
                opened_at=now,
                previous_id=old.id,
            )
            tx.add(conv)
            await tx.flush()
            await self._inherit_assignees(tx, [conv])
            tx.emit(ConversationReopened(actor, conv, old.id))
        return conv

    async def _inherit_assignees(self, tx: Tx, convs: Sequence[Conversation]) -> None:
        """A new conversation starts assigned to its contact's assignee (from the contacts service)."""
        snapshots = await tx.contacts(c.contact_id for c in convs if c.assignee_user_id is None)
        for conv in convs:
            contact = snapshots.get(conv.contact_id)
            if contact is None or (contact.assignee_user_id is None and contact.assignee_team_id is None):
                continue
            if conv.assignee_user_id is not None or conv.assignee_team_id is not None:
                continue
            self._assign(
                tx,
                conv,
                Actor("service:contacts"),
                contact.assignee_user_id,
                contact.assignee_team_id,
                conv.opened_at,
                None,
                event=False,
            )

    @staticmethod
    def _new_conversation(
        *,
        space_id: str,
        contact_id: str,
        channel_id: str,
        channel_type: str,
        external_id: str,
        source: ConversationSource,
        opened_by: str,
        opened_at: datetime,
        previous_id: str | None,
    ) -> Conversation:
        return Conversation(
            id=new_id(),
            space_id=space_id,
            contact_id=contact_id,
            channel_id=channel_id,
            channel_type=channel_type,
            contact_external_id=external_id,
            status=ConversationStatus.OPEN.value,
            source=source.value,
            opened_by=opened_by,
            opened_at=opened_at,
            previous_conversation_id=previous_id,
            last_activity_at=opened_at,
            last_message_text="",
            auto_closed=False,
            responses=0,
            response_seconds_total=0.0,
            incoming_count=0,
            outgoing_count=0,
        )

    async def auto_close_due(self, limit: int = 200) -> int:
        """Close conversations idle past their space's auto-close period; safe to run in every replica."""
        now = self.clock()
        async with self.repo.transaction() as tx:
            due = await tx.due_for_auto_close(now, limit)
            for conv, seconds in due:
                summary = f"Closed automatically after {_human(timedelta(seconds=seconds))} without a reply"
                self._close(conv, SYSTEM, now, None, summary, auto=True)
                tx.emit(ConversationClosed(SYSTEM, conv))
        return len(due)

    # ==== replies ================================================================================

    async def send_message(self, actor: Actor, space_id: str, conversation_id: str, inp: SendInput) -> Message:
        now = self.clock()
        async with self.repo.transaction() as tx:
            conv = await self._conversation(tx, space_id, conversation_id, lock=True)
            if inp.client_request_id:
                existing = await tx.message_by_client_request(conv.id, inp.client_request_id)
                if existing is not None:
                    return existing
            if conv.status != ConversationStatus.OPEN:
                raise FailedPrecondition(
                    f"conversation {conv.id} is closed; reopen it (ReopenConversation) to reply to the contact"
                )
            text, attachments, quick_replies = inp.text, inp.attachments, inp.quick_replies
            shortcut: Shortcut | None = None
            if inp.shortcut_id or inp.shortcut_name:
                shortcut = await self._shortcut(tx, space_id, inp.shortcut_id, inp.shortcut_name)
                if not text and shortcut.text:
                    text = templates.render(shortcut.text, await self._render_context(tx, conv, actor, shortcut.text))
                attachments = attachments or list(shortcut.attachments)
                quick_replies = quick_replies or list(shortcut.quick_replies)
            self._validate_reply(conv.channel_type, text, attachments, quick_replies, inp)
            identity = await tx.contact_channel(space_id, conv.contact_id, conv.channel_id)
            last_inbound = identity.last_inbound_at if identity is not None else None
            check_window(conv.channel_type, last_inbound, now, tag=inp.tag or "", is_template=inp.template is not None)
            msg = Message(
                id=new_id(),
                space_id=space_id,
                conversation_id=conv.id,
                contact_id=conv.contact_id,
                channel_id=conv.channel_id,
                direction=Direction.OUTBOUND.value,
                sender_type=sender_for(actor).value,
                sender=actor.subject,
                kind=MessageKind.MESSAGE.value,
                parts=[],
                text=text,
                attachments=attachments,
                quick_replies=quick_replies,
                payload="",
                template=inp.template,
                tag=inp.tag,
                shortcut_id=shortcut.id if shortcut else None,
                client_request_id=inp.client_request_id or None,
                status=DeliveryStatus.QUEUED.value,
                error_code="",
                error_message="",
                provider_sequence=0,
                reactions=[],
                sent_at=now,
                created_at=now,
            )
            tx.add(msg)
            self._count_outgoing(conv, msg, now, human=actor.is_human)
            tx.emit(MessageSent(actor, msg), OutboundSend(msg, conv.contact_external_id, last_inbound))
        return msg

    @staticmethod
    def _validate_reply(
        channel_type: str,
        text: str,
        attachments: Sequence[dict[str, Any]],
        quick_replies: Sequence[dict[str, Any]],
        inp: SendInput,
    ) -> None:
        if not text.strip() and not attachments and inp.template is None:
            raise InvalidArgument("a reply needs text, an attachment or a template")
        limit = TEXT_LIMITS.get(channel_type, 4096)
        if len(text) > limit:
            raise InvalidArgument(f"text is {len(text)} characters; {channel_type} allows at most {limit}")
        if len(attachments) > MAX_ATTACHMENTS:
            raise InvalidArgument(f"at most {MAX_ATTACHMENTS} attachments per message")
        for att in attachments:
            url = str(att.get("url", ""))
            if not url.startswith(("https://", "http://")):
                raise InvalidArgument(f"attachment url must be an http(s) URL, got {url!r}")
        if len(quick_replies) > MAX_QUICK_REPLIES:
            raise InvalidArgument(f"at most {MAX_QUICK_REPLIES} quick replies per message")
        for qr in quick_replies:
            title = str(qr.get("title", ""))
            if not title or len(title) > MAX_QUICK_REPLY_TITLE:
                raise InvalidArgument(f"quick reply titles need 1 to {MAX_QUICK_REPLY_TITLE} characters, got {title!r}")
        if inp.template is not None and not inp.template.get("name"):
            raise InvalidArgument("a template needs its name")

    @staticmethod
    def _count_outgoing(conv: Conversation, msg: Message, now: datetime, *, human: bool) -> None:
        conv.outgoing_count += 1
        conv.last_message_at = _later(conv.last_message_at, msg.sent_at)
        conv.last_message_text = _preview(msg.text, "[attachment]")
        conv.last_activity_at = max(conv.last_activity_at, msg.sent_at)
        if not human:
            return
        conv.last_agent_message_at = now
        if conv.awaiting_reply_since is not None:
            conv.responses += 1
            conv.response_seconds_total += _seconds(now - conv.awaiting_reply_since)
            conv.awaiting_reply_since = None
        if conv.first_response_at is None and conv.first_inbound_at is not None:
            conv.first_response_at = now
            conv.first_response_seconds = _seconds(now - conv.first_inbound_at)

    async def render_shortcut(
        self, actor: Actor, space_id: str, shortcut_id: str, shortcut_name: str, conversation_id: str
    ) -> str:
        async with self.repo.transaction() as tx:
            conv = await self._conversation(tx, space_id, conversation_id)
            shortcut = await self._shortcut(tx, space_id, shortcut_id, shortcut_name)
            return templates.render(shortcut.text, await self._render_context(tx, conv, actor, shortcut.text))

    async def _render_context(self, tx: Tx, conv: Conversation, actor: Actor, template: str) -> templates.RenderContext:
        user_name = actor.name
        wants_user = any(v.startswith("user.") for v in templates.variables(template))
        if wants_user and not user_name and actor.user_id and self.user_names is not None:
            user_name = await self.user_names(actor.user_id)
        contact = await tx.contact(conv.contact_id)
        if contact is None:
            return templates.RenderContext(user_name=user_name)
        keys = templates.field_keys(template)
        known = await tx.known_fields(conv.space_id, keys) if keys else []
        return templates.RenderContext(
            contact_first_name=contact.first_name,
            contact_last_name=contact.last_name,
            contact_name=contact.display_name,
            contact_fields=values_by_key(contact.fields or {}, known),
            user_name=user_name,
        )

    # ==== shortcuts ==============================================================================

    @staticmethod
    async def _shortcut(tx: Tx, space_id: str, shortcut_id: str, name: str) -> Shortcut:
        shortcut = await (tx.shortcut(space_id, shortcut_id) if shortcut_id else tx.shortcut_by_name(space_id, name))
        if shortcut is None:
            raise NotFound(f"shortcut {shortcut_id or name} not found")
        return shortcut

    @staticmethod
    def _validate_shortcut(
        name: str, text: str, attachments: Sequence[dict[str, Any]], quick_replies: Sequence[dict[str, Any]]
    ) -> None:
        if not SHORTCUT_NAME.match(name):
            raise InvalidArgument(
                f"shortcut name {name!r} must be 1-64 lowercase letters, digits, '-' or '_' starting with a letter "
                "or digit"
            )
        if not text.strip() and not attachments:
            raise InvalidArgument("a shortcut needs text or attachments")
        if len(text) > MAX_SHORTCUT_TEXT:
            raise InvalidArgument(f"shortcut text is {len(text)} characters; the limit is {MAX_SHORTCUT_TEXT}")
        templates.validate(text)
        ConversationsService._validate_reply("", text or "x", attachments, quick_replies, SendInput())

    async def create_shortcut(
        self,
        actor: Actor,
        space_id: str,
        name: str,
        text: str,
        attachments: list[dict[str, Any]],
        quick_replies: list[dict[str, Any]],
    ) -> Shortcut:
        name = name.strip()
        self._validate_shortcut(name, text, attachments, quick_replies)
        now = self.clock()
        async with self.repo.transaction() as tx:
            if await tx.shortcut_by_name(space_id, name) is not None:
                raise AlreadyExists(f"a shortcut named '{name}' already exists in this space")
            shortcut = Shortcut(
                id=new_id(),
                space_id=space_id,
                name=name,
                text=text,
                attachments=attachments,
                quick_replies=quick_replies,
                created_by=actor.subject,
                created_at=now,
                updated_at=now,
            )
            tx.add(shortcut)
        return shortcut

    async def get_shortcut(self, space_id: str, shortcut_id: str) -> Shortcut:
        async with self.repo.transaction() as tx:
            return (
                await self._shortcut(tx, space_id, shortcut_id, "") if shortcut_id else _raise_required("shortcut_id")
            )

    async def list_shortcuts(self, space_id: str, prefix: str, page: PageRequest) -> Page[Shortcut]:
        size = pagination.page_size(page, default=100, maximum=500)
        query = pagination.fingerprint("shortcuts", space_id, prefix)
        after = pagination.decode(page.token, query, (str,))
        async with self.repo.transaction() as tx:
            rows = await tx.list_shortcuts(space_id, prefix, size + 1, after[0] if after else None)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = pagination.encode([rows[-1].name], query)
        return Page(rows, token, 0)

    async def update_shortcut(
        self,
        space_id: str,
        shortcut_id: str,
        *,
        name: str | None,
        text: str | None,
        attachments: list[dict[str, Any]] | None,
        quick_replies: list[dict[str, Any]] | None,
    ) -> Shortcut:
        async with self.repo.transaction() as tx:
            shortcut = (
                await self._shortcut(tx, space_id, shortcut_id, "") if shortcut_id else _raise_required("shortcut_id")
            )
            new_name = name.strip() if name is not None else shortcut.name
            new_text = text if text is not None else shortcut.text
            new_att = attachments if attachments is not None else list(shortcut.attachments)
            new_qr = quick_replies if quick_replies is not None else list(shortcut.quick_replies)
            self._validate_shortcut(new_name, new_text, new_att, new_qr)
            if new_name != shortcut.name and await tx.shortcut_by_name(space_id, new_name) is not None:
                raise AlreadyExists(f"a shortcut named '{new_name}' already exists in this space")
            shortcut.name, shortcut.text = new_name, new_text
            shortcut.attachments, shortcut.quick_replies = new_att, new_qr
            shortcut.updated_at = self.clock()
        return shortcut

    async def delete_shortcut(self, space_id: str, shortcut_id: str) -> None:
        async with self.repo.transaction() as tx:
            shortcut = (
                await self._shortcut(tx, space_id, shortcut_id, "") if shortcut_id else _raise_required("shortcut_id")
            )
            await tx.delete(shortcut)

    # ==== closing categories and settings ========================================================

    async def create_category(self, space_id: str, name: str) -> ClosingCategory:
        name = " ".join(name.split())
        if not name or len(name) > MAX_CATEGORY_NAME:
            raise InvalidArgument(f"a closing category name needs 1 to {MAX_CATEGORY_NAME} characters")
        async with self.repo.transaction() as tx:
            if await tx.category_by_name(space_id, name) is not None:
                raise AlreadyExists(f"a closing category named '{name}' already exists in this space")
            category = ClosingCategory(
                id=new_id(), space_id=space_id, name=name, archived=False, created_at=self.clock()
            )
            tx.add(category)
        return category

    async def list_categories(self, space_id: str, include_archived: bool, page: PageRequest) -> Page[ClosingCategory]:
        size = pagination.page_size(page, default=100, maximum=500)
        query = pagination.fingerprint("categories", space_id, include_archived)
        after = pagination.decode(page.token, query, (str, str))
        async with self.repo.transaction() as tx:
            rows = await tx.list_categories(space_id, include_archived, size + 1, after)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = pagination.encode([rows[-1].name, rows[-1].id], query)
        return Page(rows, token, 0)

    async def update_category(
        self, space_id: str, category_id: str, *, name: str | None, archived: bool | None
    ) -> ClosingCategory:
        async with self.repo.transaction() as tx:
            category = await tx.category(space_id, category_id)
            if category is None:
                raise NotFound(f"closing category {category_id} not found")
            if name is not None:
                name = " ".join(name.split())
                if not name or len(name) > MAX_CATEGORY_NAME:
                    raise InvalidArgument(f"a closing category name needs 1 to {MAX_CATEGORY_NAME} characters")
                other = await tx.category_by_name(space_id, name)
                if other is not None and other.id != category.id:
                    raise AlreadyExists(f"a closing category named '{name}' already exists in this space")
                category.name = name
            if archived is not None:
                category.archived = archived
        return category

    async def get_settings(self, space_id: str) -> SpaceSettings:
        async with self.repo.transaction() as tx:
            settings = await tx.space_settings(space_id)
        return settings or self._default_settings(space_id)

    def _default_settings(self, space_id: str) -> SpaceSettings:
        return SpaceSettings(
            space_id=space_id,
            closing_category_required=False,
            closing_summary_required=False,
            auto_close_after_seconds=0,
            updated_at=self.clock(),
        )

    async def update_settings(
        self,
        space_id: str,
        *,
        category_required: bool | None,
        summary_required: bool | None,
        auto_close_after: timedelta | None,
    ) -> SpaceSettings:
        if auto_close_after and not MIN_AUTO_CLOSE <= auto_close_after <= MAX_AUTO_CLOSE:
            raise InvalidArgument("auto_close_after must be 0 (off) or between 1 minute and 90 days")
        async with self.repo.transaction() as tx:
            settings = await tx.space_settings(space_id)
            if settings is None:
                settings = self._default_settings(space_id)
                tx.add(settings)
            if category_required is not None:
                settings.closing_category_required = category_required
            if summary_required is not None:
                settings.closing_summary_required = summary_required
            if auto_close_after is not None:
                settings.auto_close_after_seconds = int(auto_close_after.total_seconds())
            settings.updated_at = self.clock()
        return settings

    # ==== reports ================================================================================

    async def report(self, space_id: str, start: datetime, end: datetime, period: str, time_zone: str) -> Report:
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidArgument("start_time and end_time are required")
        if end <= start:
            raise InvalidArgument("end_time must be after start_time")
        if end - start > timedelta(days=366):
            raise InvalidArgument("a report covers at most 366 days; narrow the range")
        if period not in ("day", "week", "month"):
            raise InvalidArgument("period must be day, week or month")
        tz_name = time_zone or "UTC"
        try:
            tz = ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument(f"unknown time zone {tz_name!r}; use an IANA name such as Europe/Paris") from None
        async with self.repo.transaction() as tx:
            raw = await tx.report(space_id, start, end, period, tz_name)
        opened = {_utc(p): n for p, n in raw["opened"]}
        closed = {_utc(p): n for p, n in raw["closed"]}
        report = Report()
        for p in _periods(start, end, period, tz):
            report.periods.append((p, opened.pop(p, 0), closed.pop(p, 0)))
        report.opened = sum(n for _, n, _ in report.periods) + sum(opened.values())
        report.closed = sum(n for _, _, n in report.periods) + sum(closed.values())
        report.by_category = [(cid, name or "", n) for cid, name, n in raw["by_category"]]
        report.by_user = [tuple(r) for r in raw["by_user"]]  # type: ignore[misc]
        report.by_team = [tuple(r) for r in raw["by_team"]]  # type: ignore[misc]
        report.first_response = tuple(raw["frt"])  # type: ignore[assignment]
        report.resolution = tuple(raw["resolution"])  # type: ignore[assignment]
        edges: list[int] = raw["frt_edges"]
        lowers = [0, *edges]
        uppers: list[float | None] = [*edges, None]
        report.frt_buckets = [
            (label, float(lowers[i]), None if uppers[i] is None else float(uppers[i]), raw["frt_buckets"].get(i, 0))
            for i, label in enumerate(FRT_BUCKETS)
        ]
        return report

    # ==== ingest ================================================================================

    async def apply_inbound(
        self,
        tx: Tx,
        items: Sequence[InboundItem],
        contact_ids: dict[tuple[str, str, str], str],
        reported: dict[tuple[str, str, str], datetime] | None = None,
    ) -> IngestStats:
        """Apply one batch of inbound events, in order, inside `tx`.

        `contact_ids` maps (space_id, channel_id, contact_external_id) to the contact id (resolved by
        the caller through the contacts service). Idempotent: a provider message already stored is skipped.
        """
        stats = IngestStats()
        now = self.clock()
        await self._remember_contacts(tx, items, contact_ids, now, reported or {})

        def key_of(it: InboundItem) -> ContactKey:
            return (it.space_id, contact_ids[it.contact_key], it.channel_id)

        # -- messages, postbacks and echoes: dedupe, then decide the conversation of each ----------
        message_items = [it for it in items if it.kind in MESSAGE_KINDS and it.contact_key in contact_ids]
        pairs = [(it.channel_id, _pmid(it)) for it in message_items]
        seen = await tx.existing_provider_ids(pairs)
        fresh: list[InboundItem] = []
        for it, pair in zip(message_items, pairs, strict=True):
            if pair in seen:
                stats.duplicates += 1
                stats.outcomes[it.event_id] = (None, None, False, True)
                continue
            seen.add(pair)
            fresh.append(it)
        keys = {key_of(it) for it in fresh}
        current = await tx.open_conversations(keys)
        latest = await tx.latest_conversations(keys - current.keys())
        targets_wanted = [
            (it.channel_id, it.target_provider_message_id) for it in items if it.target_provider_message_id
        ]
        targets = await tx.messages_by_provider_ids(targets_wanted, lock=True)

        plan: list[tuple[InboundItem, Conversation, bool]] = []
        new_convs: list[Conversation] = []
        for it in fresh:
            key = key_of(it)
            conv = current.get(key)
            opened = False
            if conv is None and it.kind == InboundKind.ECHO:
                conv = latest.get(key)  # an echo after a close joins the last conversation, it does not reopen
            if conv is None:
                previous = latest.get(key)
                is_echo = it.kind == InboundKind.ECHO
                conv = self._new_conversation(
                    space_id=it.space_id,
                    contact_id=key[1],
                    channel_id=it.channel_id,
                    channel_type=it.channel_type,
                    external_id=it.contact_external_id,
                    source=ConversationSource.AGENT if is_echo else ConversationSource.CONTACT,
                    opened_by="system" if is_echo else f"contact:{key[1]}",
                    opened_at=it.occurred_at,
                    previous_id=previous.id if previous is not None else None,
                )
                current[key] = conv
                new_convs.append(conv)
                opened = True
            plan.append((it, conv, opened))
        if new_convs:
            tx.add(*new_convs)
            await tx.flush()
            await self._inherit_assignees(tx, new_convs)

        new_by_pmid: dict[tuple[str, str], Message] = {}
        new_messages: list[Message] = []
        for it, conv, opened in plan:
            with tx.traced(it.trace):
                new_messages.append(self._apply_message(tx, it, conv, opened, targets, new_by_pmid, stats, now))
        # One bulk INSERT; the new messages join the session (so later changes to them are saved) only when
        # a change or receipt in this batch may touch them.
        changes = [it for it in items if it.kind in CHANGE_KINDS]
        receipts = [it for it in items if it.kind in RECEIPT_KINDS and it.receipt is not None]
        await tx.insert_messages(new_messages, track=bool(changes or receipts))

        # -- reactions, edits and deletions of stored messages ---------------------------------------
        for it in changes:
            pair = (it.channel_id, it.target_provider_message_id)
            target = new_by_pmid.get(pair) or targets.get(pair)
            if target is None:
                stats.unmatched += 1
                continue
            change = self._apply_change(it, target)
            if change:
                stats.updates += 1
                with tx.traced(it.trace):
                    tx.emit(MessageUpdated(Actor(f"contact:{target.contact_id}"), target, change))

        # -- delivery and read receipts, provider statuses -------------------------------------------
        if receipts:
            await self._apply_receipts(tx, receipts, contact_ids, new_by_pmid, stats, now)
        return stats

    def _apply_message(
        self,
        tx: Tx,
        it: InboundItem,
        conv: Conversation,
        opened: bool,
        targets: dict[tuple[str, str], Message],
        new_by_pmid: dict[tuple[str, str], Message],
        stats: IngestStats,
        now: datetime,
    ) -> Message:
        """The new message, postback or echo in `conv` (opened for it when `opened`), to be inserted."""
        contact_actor = Actor(f"contact:{conv.contact_id}")
        if opened:
            stats.opened += 1
            tx.emit(ConversationOpened(SYSTEM if it.kind == InboundKind.ECHO else contact_actor, conv))
        reply_to = None
        if it.target_provider_message_id:
            target = new_by_pmid.get((it.channel_id, it.target_provider_message_id)) or targets.get(
                (it.channel_id, it.target_provider_message_id)
            )
            reply_to = target.id if target is not None else None
        msg = self._inbound_message(it, conv, reply_to, now)
        new_by_pmid[(it.channel_id, msg.provider_message_id or "")] = msg
        stats.stored += 1
        stats.outcomes[it.event_id] = (conv.id, msg.id, opened, False)
        if it.kind == InboundKind.ECHO:
            self._count_outgoing(conv, msg, now, human=False)
            tx.emit(MessageSent(SYSTEM, msg))
        else:
            self._count_incoming(conv, msg)
            tx.emit(MessageReceived(contact_actor, msg, opened))
        return msg

    async def _remember_contacts(
        self,
        tx: Tx,
        items: Sequence[InboundItem],
        contact_ids: dict[tuple[str, str, str], str],
        now: datetime,
        reported: dict[tuple[str, str, str], datetime],
    ) -> None:
        identities: dict[tuple[str, str], dict[str, Any]] = {}
        profiles: dict[str, dict[str, Any]] = {}
        for it in items:
            contact_id = contact_ids.get(it.contact_key)
            if contact_id is None:
                continue
            row = identities.setdefault(
                (it.channel_id, it.contact_external_id),
                {
                    "channel_id": it.channel_id,
                    "external_id": it.contact_external_id,
                    "space_id": it.space_id,
                    "contact_id": contact_id,
                    "channel_type": it.channel_type,
                    "last_inbound_at": None,
                    "interaction_reported_at": reported.get(it.contact_key),
                },
            )
            if it.kind in CONTACT_ACTIVITY_KINDS:
                row["last_inbound_at"] = _later(row["last_inbound_at"], it.occurred_at)
            p = it.profile
            if contact_id not in profiles and (p.first_name or p.last_name or p.display_name):
                profiles[contact_id] = {  # hints, cut to the columns' sizes
                    "contact_id": contact_id,
                    "space_id": it.space_id,
                    "first_name": p.first_name[:200],
                    "last_name": p.last_name[:200],
                    "display_name": (p.display_name or " ".join(x for x in (p.first_name, p.last_name) if x))[:400],
                    "fields": {},
                    "updated_at": now,
                }
        await tx.upsert_contact_channels(sorted(identities.values(), key=lambda r: (r["channel_id"], r["external_id"])))
        await tx.upsert_contacts(sorted(profiles.values(), key=lambda r: r["contact_id"]))

    @staticmethod
    def _inbound_message(it: InboundItem, conv: Conversation, reply_to: str | None, now: datetime) -> Message:
        echo = it.kind == InboundKind.ECHO
        return Message(
            id=new_id(),
            space_id=it.space_id,
            conversation_id=conv.id,
            contact_id=conv.contact_id,
            channel_id=it.channel_id,
            direction=(Direction.OUTBOUND if echo else Direction.INBOUND).value,
            sender_type=(SenderType.ECHO if echo else SenderType.CONTACT).value,
            sender="" if echo else f"contact:{conv.contact_id}",
            kind=(MessageKind.POSTBACK if it.kind == InboundKind.POSTBACK else MessageKind.MESSAGE).value,
            parts=it.parts,
            text=it.text or (it.title if it.kind == InboundKind.POSTBACK else ""),
            attachments=[],
            quick_replies=[],
            payload=it.payload,
            template=None,
            tag=None,
            status=DeliveryStatus.SENT.value if echo else None,
            error_code="",
            error_message="",
            provider_message_id=_pmid(it),
            provider_sequence=it.provider_sequence,
            reply_to_message_id=reply_to,
            reactions=[],
            shortcut_id=None,
            client_request_id=None,
            edited_at=None,
            deleted_at=None,
            sent_at=it.occurred_at,
            delivered_at=None,
            read_at=None,
            created_at=now,
        )

    @staticmethod
    def _count_incoming(conv: Conversation, msg: Message) -> None:
        at = msg.sent_at
        conv.incoming_count += 1
        conv.last_message_at = _later(conv.last_message_at, at)
        conv.last_message_text = _preview(msg.text, "[attachment]")
        conv.last_activity_at = max(conv.last_activity_at, at)
        conv.last_inbound_at = _later(conv.last_inbound_at, at)
        if conv.first_inbound_at is None:
            conv.first_inbound_at = at
        if conv.awaiting_reply_since is None:
            conv.awaiting_reply_since = at

    @staticmethod
    def _apply_change(it: InboundItem, target: Message) -> str | None:
        if it.kind == InboundKind.REACTION:
            by = "contact"
            kept = [r for r in target.reactions if r.get("by") != by]
            if not it.reaction_removed and it.reaction_emoji:
                kept.append({"emoji": it.reaction_emoji, "by": by, "reacted_at": it.occurred_at.isoformat()})
            if kept == target.reactions:
                return None
            target.reactions = kept
            return "reaction"
        if it.kind == InboundKind.EDIT:
            if target.edited_at is not None and target.edited_at >= it.occurred_at:
                return None
            target.parts = it.parts
            target.text = it.text
            target.edited_at = it.occurred_at
            return "edit"
        if target.deleted_at is not None:
            return None
        target.deleted_at = it.occurred_at
        target.parts = []
        target.text = ""
        return "delete"

    async def _apply_receipts(
        self,
        tx: Tx,
        receipts: Sequence[InboundItem],
        contact_ids: dict[tuple[str, str, str], str],
        new_by_pmid: dict[tuple[str, str], Message],
        stats: IngestStats,
        now: datetime,
    ) -> None:
        wanted = [(it.channel_id, pid) for it in receipts for pid in it.receipt.provider_message_ids]  # type: ignore[union-attr]
        by_pmid = {**(await tx.messages_by_provider_ids(wanted, lock=True)), **new_by_pmid}
        unknown = [(it.channel_id, it.contact_external_id) for it in receipts if it.contact_key not in contact_ids]
        known_contacts = await tx.contact_ids_by_external(unknown)
        pending: list[dict[str, Any]] = []
        for it in receipts:
            receipt = it.receipt
            assert receipt is not None
            status = receipt.status or (
                DeliveryStatus.READ if it.kind == InboundKind.READ else DeliveryStatus.DELIVERED
            )
            for pid in receipt.provider_message_ids:
                msg = by_pmid.get((it.channel_id, pid))
                if msg is None:
                    pending.append(
                        {
                            "channel_id": it.channel_id,
                            "provider_message_id": pid,
                            "status": status,
                            "occurred_at": it.occurred_at,
                            "error_code": receipt.error_code,
                            "error_message": receipt.error_message,
                            "created_at": now,
                        }
                    )
                    stats.unmatched += 1
                    continue
                with tx.traced(it.trace):
                    self._advance(tx, msg, status, it.occurred_at, receipt.error_code, receipt.error_message, stats)
            if receipt.watermark is not None:
                await tx.raise_watermark(
                    it.channel_id, it.contact_external_id, read=status == DeliveryStatus.READ, at=receipt.watermark
                )
                contact_id = contact_ids.get(it.contact_key) or known_contacts.get(
                    (it.channel_id, it.contact_external_id)
                )
                if contact_id is None:
                    continue
                below = [s.value for s in DeliveryStatus if STATUS_RANK[s] < STATUS_RANK[DeliveryStatus(status)]]
                below = [s for s in below if s not in (DeliveryStatus.QUEUED, DeliveryStatus.FAILED)]
                for msg in await tx.outbound_up_to(it.channel_id, contact_id, receipt.watermark, below):
                    with tx.traced(it.trace):
                        self._advance(tx, msg, status, it.occurred_at, "", "", stats)
        await tx.add_pending_receipts(pending)

    @staticmethod
    def _advance(
        tx: Tx,
        msg: Message,
        status: str,
        at: datetime,
        error_code: str,
        error_message: str,
        stats: IngestStats | None = None,
    ) -> bool:
        """Move an outbound message's status forward (never back); emit MessageStatusChanged when it moved."""
        current = msg.status
        if current is None or msg.direction != Direction.OUTBOUND:
            return False
        new = DeliveryStatus(status)
        cur = DeliveryStatus(current)
        if new == DeliveryStatus.FAILED:
            if cur not in (DeliveryStatus.QUEUED, DeliveryStatus.SENT):
                return False
            msg.error_code, msg.error_message = error_code, error_message
        elif cur == DeliveryStatus.FAILED or STATUS_RANK[new] <= STATUS_RANK[cur]:
            return False
        msg.status = new.value
        if new == DeliveryStatus.SENT:
            msg.sent_at = at
        if new in (DeliveryStatus.DELIVERED, DeliveryStatus.READ) and msg.delivered_at is None:
            msg.delivered_at = at
        if new == DeliveryStatus.READ:
            msg.read_at = at
        tx.emit(
            MessageStatusChanged(
                SYSTEM, msg, cur.value, new.value, msg.provider_message_id or "", msg.error_code, msg.error_message
            )
        )
        if stats is not None:
            stats.statuses += 1
        return True

    async def apply_status(self, update: StatusUpdate) -> bool:
        """The gateway's outcome for a send request (request_id = message id). False when unknown/unchanged."""
        async with self.repo.transaction() as tx:
            msg = await tx.message(update.space_id, update.message_id, lock=True)
            if msg is None:
                return False
            at = update.occurred_at or self.clock()
            if update.provider_message_id and msg.provider_message_id is None:
                pair = (msg.channel_id, update.provider_message_id)
                twin = (await tx.messages_by_provider_ids([pair], lock=True)).get(pair)
                if twin is not None and twin.id != msg.id and twin.sender_type == SenderType.ECHO:
                    # The provider echoed our own send before we learnt its id: keep ours, drop the echo.
                    conv = await tx.conversation(twin.space_id, twin.conversation_id, lock=True)
                    if conv is not None:
                        conv.outgoing_count = max(conv.outgoing_count - 1, 0)
                    await tx.delete(twin)
                    await tx.flush()
                msg.provider_message_id = update.provider_message_id
                await tx.flush()
            changed = self._advance(tx, msg, update.status, at, update.error_code, update.error_message)
            if update.provider_message_id:
                for pending in await tx.take_pending_receipts(msg.channel_id, update.provider_message_id):
                    changed |= self._advance(
                        tx, msg, pending.status, pending.occurred_at, pending.error_code, pending.error_message
                    )
            if msg.status == DeliveryStatus.SENT:
                # A Messenger watermark that arrived before this status covers the message too.
                identity = await tx.contact_channel(msg.space_id, msg.contact_id, msg.channel_id)
                if identity is not None:
                    for status, mark in (
                        (DeliveryStatus.READ, identity.read_watermark),
                        (DeliveryStatus.DELIVERED, identity.delivered_watermark),
                    ):
                        if mark is not None and msg.sent_at <= mark:
                            changed |= self._advance(tx, msg, status, mark, "", "")
                            break
            return changed


class ContactFollower:
    """Keeps conversations in step with the contacts service's events: the contact's assignee is the
    assignee of the contact's open conversations (and of new ones), except that a release (a member left, a
    team was deleted) only removes that one from the conversations still holding them; names and custom
    field values feed shortcuts; an erased contact's conversations are erased; a merged contact's are
    re-pointed."""

    def __init__(self, service: ConversationsService) -> None:
        self.service = service

    async def changed(self, change: ContactChange) -> int:
        """Apply a created/updated/field/assigned event; the number of conversations re-assigned."""
        svc = self.service
        now = svc.clock()
        reassigned = 0
        async with svc.repo.transaction() as tx:
            # Fields first (a field seen for the first time may adopt legacy copies of other contacts).
            keys = {f.field_id: f.key for f in change.fields}
            deleted = await tx.learn_fields(change.space_id, keys) if keys else set()
            contact = await tx.contact_for_update(change.space_id, change.contact_id, now)
            if contact is None:
                return 0
            at = change.occurred_at
            names = change.first_name is not None or change.last_name is not None
            if names and (contact.names_at is None or at >= contact.names_at):
                if change.first_name is not None:
                    contact.first_name = change.first_name[:200]
                if change.last_name is not None:
                    contact.last_name = change.last_name[:200]
                contact.display_name = " ".join(x for x in (contact.first_name, contact.last_name) if x)[:400]
                contact.names_at = at
            if change.fields:
                # By field id (a rename changes only its key); a deleted field's values are not copied.
                fields, stamps = dict(contact.fields or {}), dict(contact.fields_at or {})
                for f in change.fields:
                    seen = stamps.get(f.field_id)
                    if f.field_id in deleted or (seen is not None and datetime.fromisoformat(seen) > at):
                        continue
                    if f.value:
                        fields[f.field_id] = f.value
                    else:
                        fields.pop(f.field_id, None)
                    stamps[f.field_id] = at.isoformat()
                contact.fields, contact.fields_at = fields, stamps
            if change.assignee is not None and (contact.assignee_at is None or at >= contact.assignee_at):
                user_id, team_id = (change.assignee[0] or None), (change.assignee[1] or None)
                contact.assignee_user_id, contact.assignee_team_id, contact.assignee_at = user_id, team_id, at
                actor = Actor(change.actor or "service:contacts")
                moves: list[tuple[Conversation, tuple[str | None, str | None]]] = []
                for conv in await tx.open_conversations_of_contact(change.space_id, change.contact_id):
                    # A release removes the departed one only where it still holds (this service releases its
                    # own conversations too): a conversation someone else took stays theirs.
                    target = (user_id, team_id) if change.released is None else _without(conv, *change.released)
                    if target is not None and target != (conv.assignee_user_id, conv.assignee_team_id):
                        moves.append((conv, target))
                current = await tx.current_assignments([conv.id for conv, _ in moves])
                for conv, (new_user, new_team) in moves:
                    svc._assign(tx, conv, actor, new_user, new_team, now, current.get(conv.id))
                reassigned = len(moves)
            contact.updated_at = now
        return reassigned

    async def field_renamed(self, space_id: str, field_id: str, old_key: str, new_key: str, at: datetime) -> None:
        """A custom field's key changed: its values (copied by id) render under the new key. A late or repeated
        rename (older than the one that set the current key) changes nothing."""
        async with self.service.repo.transaction() as tx:
            await tx.rename_field(space_id, field_id, old_key, new_key, at)

    async def field_deleted(self, space_id: str, field_id: str, key: str, at: datetime) -> None:
        """A custom field was deleted: its copies go, and values of it arriving later are ignored."""
        async with self.service.repo.transaction() as tx:
            await tx.delete_field(space_id, field_id, key, at)

    async def erased(self, space_id: str, contact_ids: Sequence[str]) -> int:
        async with self.service.repo.transaction() as tx:
            return sum([await tx.erase_contact(space_id, cid) for cid in contact_ids])

    async def merged(self, space_id: str, merged_id: str, survivor: ContactChange) -> None:
        """Re-point the merged contact's records to the survivor; where both have an open conversation on
        one channel, the merged one's is closed first (one open conversation per contact and channel)."""
        svc = self.service
        now = svc.clock()
        actor = Actor(survivor.actor or "service:contacts")
        async with svc.repo.transaction() as tx:
            kept = {c.channel_id for c in await tx.open_conversations_of_contact(space_id, survivor.contact_id)}
            for conv in await tx.open_conversations_of_contact(space_id, merged_id):
                if conv.channel_id in kept:
                    svc._close(conv, actor, now, None, f"Contact merged into {survivor.contact_id}")
                    tx.emit(ConversationClosed(actor, conv))
            await tx.flush()
            await tx.repoint_contact(space_id, merged_id, survivor.contact_id)
        await self.changed(survivor)


def _without(conv: Conversation, user_id: str, team_id: str) -> tuple[str | None, str | None] | None:
    """The conversation's assignee without the departed user (or deleted team); None when it holds neither."""
    if user_id and conv.assignee_user_id == user_id:
        return None, conv.assignee_team_id
    if team_id and conv.assignee_team_id == team_id:
        return conv.assignee_user_id, None
    return None


def _pmid(it: InboundItem) -> str:
    return it.provider_message_id or f"event:{it.event_id}"


def _raise_required(name: str) -> Any:
    raise InvalidArgument(f"{name} is required")


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day(s)"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour(s)"
    return f"{seconds // 60} minute(s)"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _periods(start: datetime, end: datetime, period: str, tz: ZoneInfo) -> list[datetime]:
    """Period starts (as UTC instants) covering [start, end), with boundaries in `tz`."""
    local = start.astimezone(tz)
    if period == "day":
        cur = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "week":
        cur = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        cur = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    out: list[datetime] = []
    while cur.astimezone(UTC) < end:
        out.append(cur.replace(tzinfo=tz).astimezone(UTC))
        naive = cur.replace(tzinfo=None)
        if period == "day":
            naive += timedelta(days=1)
        elif period == "week":
            naive += timedelta(days=7)
        else:
            naive = (
                naive.replace(year=naive.year + 1, month=1)
                if naive.month == 12
                else naive.replace(month=naive.month + 1)
            )
        cur = naive.replace(tzinfo=tz)
    return out
