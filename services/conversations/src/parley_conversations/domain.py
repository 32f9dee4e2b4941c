"""Plain data the domain works with: who acts, what came in, what goes out, and the events it emits.

Nothing here knows protobuf, gRPC, NATS or SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from parley_conversations.models import Conversation, Message


@dataclass(frozen=True)
class Actor:
    """Who asks for a change: "user:<id>", "service:<id>", "apikey:<id>", "contact:<id>" or "system"."""

    subject: str
    name: str = ""

    @property
    def kind(self) -> str:
        return self.subject.split(":", 1)[0]

    @property
    def user_id(self) -> str | None:
        return self.subject.split(":", 1)[1] if self.kind == "user" else None

    @property
    def is_human(self) -> bool:
        return self.kind == "user"


SYSTEM = Actor("system")


class InboundKind(StrEnum):
    MESSAGE = "message"
    ECHO = "echo"
    POSTBACK = "postback"
    REACTION = "reaction"
    EDIT = "edit"
    DELETE = "delete"
    DELIVERY = "delivery"
    READ = "read"
    STATUS = "status"
    REFERRAL = "referral"
    OPTIN = "optin"
    MEMBERSHIP = "membership"
    SYSTEM = "system"
    UNKNOWN = "unknown"


MESSAGE_KINDS = {InboundKind.MESSAGE, InboundKind.ECHO, InboundKind.POSTBACK}
CONTACT_ACTIVITY_KINDS = {
    InboundKind.MESSAGE,
    InboundKind.POSTBACK,
    InboundKind.REACTION,
    InboundKind.EDIT,
    InboundKind.DELETE,
    InboundKind.REFERRAL,
    InboundKind.OPTIN,
}
CHANGE_KINDS = {InboundKind.REACTION, InboundKind.EDIT, InboundKind.DELETE}
RECEIPT_KINDS = {InboundKind.DELIVERY, InboundKind.READ, InboundKind.STATUS}


@dataclass(frozen=True)
class Profile:
    display_name: str = ""
    first_name: str = ""
    last_name: str = ""
    username: str = ""
    phone: str = ""
    language: str = ""
    avatar_url: str = ""


@dataclass(frozen=True)
class Receipt:
    status: str  # DeliveryStatus value
    provider_message_ids: tuple[str, ...] = ()
    watermark: datetime | None = None
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class InboundItem:
    """One canonical inbound event, as the domain sees it."""

    event_id: str
    space_id: str
    channel_id: str
    channel_type: str
    kind: InboundKind
    contact_external_id: str
    occurred_at: datetime
    profile: Profile = field(default_factory=Profile)
    provider_message_id: str = ""
    parts: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    target_provider_message_id: str = ""
    reaction_emoji: str = ""
    reaction_removed: bool = False
    receipt: Receipt | None = None
    payload: str = ""
    title: str = ""
    provider_sequence: int = 0
    # When the gateway received it (time-to-visibility).
    received_at: datetime | None = None
    # Opaque to the domain: the trace context of this event's processing, given to the events it causes.
    trace: Any = field(default=None, compare=False, repr=False)

    @property
    def contact_key(self) -> tuple[str, str, str]:
        return (self.space_id, self.channel_id, self.contact_external_id)


@dataclass(frozen=True)
class StatusUpdate:
    """The gateway's outcome for one send request."""

    space_id: str
    channel_id: str
    message_id: str
    status: str
    provider_message_id: str = ""
    error_code: str = ""
    error_message: str = ""
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class FieldValue:
    """A custom field value as the contacts service announces it: the field's id, its key then, the value
    ("" = not set)."""

    field_id: str
    key: str
    value: str


@dataclass(frozen=True)
class ContactChange:
    """What an event of the contacts service says about one contact; None: not said."""

    space_id: str
    contact_id: str
    occurred_at: datetime
    actor: str = "service:contacts"
    first_name: str | None = None
    last_name: str | None = None
    fields: tuple[FieldValue, ...] = ()
    assignee: tuple[str, str] | None = None  # (user_id, team_id); ("", "") unassigns
    released: tuple[str, str] | None = None  # a release's departed (user_id, "") or deleted ("", team_id)


# The copy of a contact's custom values is keyed by field id. A value copied before field ids were kept
# (migration 0005) is keyed LEGACY_FIELD + key until the first event naming its field's id adopts it.
LEGACY_FIELD = "key:"
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class KnownField:
    """A custom field as this service knows it: its key, and the time of the rename that set it (None: learned
    from a value, which any rename overrides)."""

    field_id: str
    key: str
    key_at: datetime | None


def values_by_key(values: dict[str, Any], known: list[KnownField]) -> dict[str, Any]:
    """A contact's custom values (by field id) by key. Of fields that claim one key (a rename of the other one
    not seen yet), a field known by id wins over a legacy copy, then the latest renamed."""

    def rank(f: KnownField) -> tuple[bool, datetime]:
        return not f.field_id.startswith(LEGACY_FIELD), f.key_at or _NEVER

    chosen: dict[str, KnownField] = {}
    for f in known:
        if f.key not in chosen or rank(f) > rank(chosen[f.key]):
            chosen[f.key] = f
    return {key: values[f.field_id] for key, f in chosen.items() if f.field_id in values}


@dataclass(frozen=True)
class SendInput:
    text: str = ""
    attachments: list[dict[str, Any]] = field(default_factory=list)
    quick_replies: list[dict[str, Any]] = field(default_factory=list)
    shortcut_id: str = ""
    shortcut_name: str = ""
    tag: str | None = None
    template: dict[str, Any] | None = None
    client_request_id: str = ""


@dataclass(frozen=True)
class ConversationFilter:
    status: str | None = None
    assignee_user_id: str = ""
    assignee_team_id: str = ""
    unassigned: bool = False
    channel_id: str = ""
    contact_id: str = ""
    order: str = "last_activity"  # or "opened_at"


@dataclass(frozen=True)
class PageRequest:
    size: int = 0
    token: str = ""


T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_token: str = ""
    total: int = 0


# -- events the domain emits (turned into protobuf and put in the outbox by events.py) -----------


@dataclass(frozen=True)
class ConversationOpened:
    actor: Actor
    conversation: Conversation


@dataclass(frozen=True)
class ConversationAssigned:
    actor: Actor
    conversation: Conversation
    previous_user_id: str | None
    previous_team_id: str | None


@dataclass(frozen=True)
class ConversationClosed:
    actor: Actor
    conversation: Conversation


@dataclass(frozen=True)
class ConversationReopened:
    actor: Actor
    conversation: Conversation
    previous_conversation_id: str


@dataclass(frozen=True)
class MessageReceived:
    actor: Actor
    message: Message
    opened_conversation: bool


@dataclass(frozen=True)
class MessageSent:
    actor: Actor
    message: Message


@dataclass(frozen=True)
class MessageStatusChanged:
    """A status move, with the values as they were at that move (the message may move again in the same transaction)."""

    actor: Actor
    message: Message
    previous_status: str | None
    status: str
    provider_message_id: str = ""
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class MessageUpdated:
    actor: Actor
    message: Message
    change: str  # "reaction" | "edit" | "delete"


@dataclass(frozen=True)
class OutboundSend:
    """A send request for the channel gateway (its request_id is the message id)."""

    message: Message
    contact_external_id: str
    contact_last_inbound_at: datetime | None


DomainEvent = (
    ConversationOpened
    | ConversationAssigned
    | ConversationClosed
    | ConversationReopened
    | MessageReceived
    | MessageSent
    | MessageStatusChanged
    | MessageUpdated
    | OutboundSend
)
