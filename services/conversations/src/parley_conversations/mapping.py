"""Protobuf <-> domain: the one place that knows both shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.timestamp_pb2 import Timestamp
from parley.channel_gateway.v1 import events_pb2 as gw
from parley.common.v1 import common_pb2 as common
from parley.conversations.v1 import resources_pb2 as pb
from parley_kit.contracts import messaging_window

from parley_conversations import models as m
from parley_conversations.domain import InboundItem, InboundKind, Profile, Receipt

CHANNEL_TYPES = {
    common.CHANNEL_TYPE_MESSENGER: messaging_window.MESSENGER,
    common.CHANNEL_TYPE_INSTAGRAM: messaging_window.INSTAGRAM,
    common.CHANNEL_TYPE_WHATSAPP: messaging_window.WHATSAPP,
    common.CHANNEL_TYPE_TELEGRAM: messaging_window.TELEGRAM,
    common.CHANNEL_TYPE_CUSTOM: messaging_window.CUSTOM,
    common.CHANNEL_TYPE_LINE: "line",  # no messaging window
    common.CHANNEL_TYPE_VIBER: "viber",  # no messaging window: the kit's rule has no entry for it
    common.CHANNEL_TYPE_TWILIO_SMS: "twilio_sms",  # no messaging window
}
CHANNEL_TYPE_PB = {v: k for k, v in CHANNEL_TYPES.items()}

INBOUND_KINDS: dict[int, InboundKind] = {
    gw.INBOUND_KIND_MESSAGE: InboundKind.MESSAGE,
    gw.INBOUND_KIND_ECHO: InboundKind.ECHO,
    gw.INBOUND_KIND_POSTBACK: InboundKind.POSTBACK,
    gw.INBOUND_KIND_REACTION: InboundKind.REACTION,
    gw.INBOUND_KIND_EDIT: InboundKind.EDIT,
    gw.INBOUND_KIND_DELIVERY: InboundKind.DELIVERY,
    gw.INBOUND_KIND_READ: InboundKind.READ,
    gw.INBOUND_KIND_STATUS: InboundKind.STATUS,
    gw.INBOUND_KIND_REFERRAL: InboundKind.REFERRAL,
    gw.INBOUND_KIND_OPTIN: InboundKind.OPTIN,
    gw.INBOUND_KIND_MEMBERSHIP: InboundKind.MEMBERSHIP,
    gw.INBOUND_KIND_UNKNOWN: InboundKind.UNKNOWN,
}
# Kinds added to the contract after this service was written are matched by name, so an older
# generated module still imports.
for _name, _kind in (("INBOUND_KIND_DELETE", InboundKind.DELETE), ("INBOUND_KIND_SYSTEM", InboundKind.SYSTEM)):
    if hasattr(gw, _name):
        INBOUND_KINDS[getattr(gw, _name)] = _kind

DELIVERY = {
    gw.DELIVERY_STATUS_QUEUED: m.DeliveryStatus.QUEUED,
    gw.DELIVERY_STATUS_SENT: m.DeliveryStatus.SENT,
    gw.DELIVERY_STATUS_DELIVERED: m.DeliveryStatus.DELIVERED,
    gw.DELIVERY_STATUS_READ: m.DeliveryStatus.READ,
    gw.DELIVERY_STATUS_FAILED: m.DeliveryStatus.FAILED,
}
DELIVERY_PB = {v.value: k for k, v in DELIVERY.items()}

TAGS = {
    gw.MESSAGE_TAG_HUMAN_AGENT: "human_agent",
    gw.MESSAGE_TAG_CONFIRMED_EVENT_UPDATE: "confirmed_event_update",
    gw.MESSAGE_TAG_POST_PURCHASE_UPDATE: "post_purchase_update",
    gw.MESSAGE_TAG_ACCOUNT_UPDATE: "account_update",
}
TAGS_PB = {v: k for k, v in TAGS.items()}

STATUS_PB = {
    m.ConversationStatus.OPEN.value: pb.CONVERSATION_STATUS_OPEN,
    m.ConversationStatus.CLOSED.value: pb.CONVERSATION_STATUS_CLOSED,
}
STATUS_FROM_PB = {v: k for k, v in STATUS_PB.items()}
SOURCE_PB = {
    m.ConversationSource.CONTACT.value: pb.CONVERSATION_SOURCE_CONTACT,
    m.ConversationSource.AGENT.value: pb.CONVERSATION_SOURCE_AGENT,
    m.ConversationSource.WORKFLOW.value: pb.CONVERSATION_SOURCE_WORKFLOW,
}
DIRECTION_PB = {
    m.Direction.INBOUND.value: pb.MESSAGE_DIRECTION_INBOUND,
    m.Direction.OUTBOUND.value: pb.MESSAGE_DIRECTION_OUTBOUND,
}
SENDER_PB = {
    m.SenderType.CONTACT.value: pb.SENDER_TYPE_CONTACT,
    m.SenderType.USER.value: pb.SENDER_TYPE_USER,
    m.SenderType.WORKFLOW.value: pb.SENDER_TYPE_WORKFLOW,
    m.SenderType.INTEGRATION.value: pb.SENDER_TYPE_INTEGRATION,
    m.SenderType.ECHO.value: pb.SENDER_TYPE_ECHO,
    m.SenderType.SYSTEM.value: pb.SENDER_TYPE_SYSTEM,
}
KIND_PB = {m.MessageKind.MESSAGE.value: pb.MESSAGE_KIND_MESSAGE, m.MessageKind.POSTBACK.value: pb.MESSAGE_KIND_POSTBACK}


# -- scalars -------------------------------------------------------------------------------------


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def from_ts(value: Timestamp, default: datetime | None = None) -> datetime | None:
    if value.seconds == 0 and value.nanos == 0:
        return default
    return value.ToDatetime(tzinfo=UTC)


def duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    out = Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


def to_dicts(messages: Any) -> list[dict[str, Any]]:
    return [MessageToDict(x, preserving_proto_field_name=True) for x in messages]


def to_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


# -- inbound ------------------------------------------------------------------------------------


def inbound_item(ev: gw.InboundEvent) -> InboundItem:
    """The domain view of a gateway event; ValueError when it cannot be applied."""
    if not ev.space_id or not ev.channel_id or not ev.contact_external_id:
        raise ValueError("inbound event lacks space_id, channel_id or contact_external_id")
    for name, value, limit in (
        ("space_id", ev.space_id, 64),
        ("channel_id", ev.channel_id, 64),
        ("contact_external_id", ev.contact_external_id, 256),
        ("provider_message_id", ev.provider_message_id, 256),
        ("target_provider_message_id", ev.target_provider_message_id, 256),
    ):
        if len(value) > limit:
            raise ValueError(f"inbound event {name} is longer than {limit} characters")
    kind = INBOUND_KINDS.get(ev.kind, InboundKind.UNKNOWN)
    occurred = from_ts(ev.provider_timestamp) or from_ts(ev.received_at) or datetime.now(UTC)
    receipt = None
    if ev.HasField("receipt"):
        r = ev.receipt
        receipt = Receipt(
            status=DELIVERY[r.status].value if r.status in DELIVERY else "",
            provider_message_ids=tuple(r.provider_message_ids),
            watermark=from_ts(r.watermark),
            error_code=r.error_code,
            error_message=r.error_message,
        )
    text_bits: list[str] = []
    for part in ev.parts:
        which = part.WhichOneof("part")
        if which == "text":
            text_bits.append(part.text.text)
        elif which == "media" and part.media.caption:
            text_bits.append(part.media.caption)
        elif which == "quick_reply":
            text_bits.append(part.quick_reply.title)
        elif which == "button_reply":
            text_bits.append(part.button_reply.title)
        elif which == "location":
            text_bits.append(part.location.name or part.location.address)
    p = ev.profile
    return InboundItem(
        event_id=ev.event_id,
        space_id=ev.space_id,
        channel_id=ev.channel_id,
        channel_type=CHANNEL_TYPES.get(ev.channel_type, messaging_window.CUSTOM),
        kind=kind,
        contact_external_id=ev.contact_external_id,
        occurred_at=occurred,
        profile=Profile(
            display_name=p.display_name,
            first_name=p.first_name,
            last_name=p.last_name,
            username=p.username,
            phone=p.phone,
            language=p.language,
            avatar_url=p.avatar_url,
        ),
        provider_message_id=ev.provider_message_id,
        parts=to_dicts(ev.parts),
        text="\n".join(b for b in text_bits if b),
        target_provider_message_id=ev.target_provider_message_id,
        reaction_emoji=ev.reaction.emoji,
        reaction_removed=ev.reaction.removed,
        receipt=receipt,
        payload=ev.payload,
        title=ev.title,
        provider_sequence=ev.provider_sequence,
        received_at=from_ts(ev.received_at),
    )


# -- resources ----------------------------------------------------------------------------------


def conversation(c: m.Conversation) -> pb.Conversation:
    metrics = pb.ConversationMetrics(
        first_response_time=duration(c.first_response_seconds),
        average_response_time=duration(c.response_seconds_total / c.responses if c.responses else None),
        responses=c.responses,
        resolution_time=duration(c.resolution_seconds),
        time_to_first_assignment=duration(
            (c.first_assigned_at - c.opened_at).total_seconds() if c.first_assigned_at else None
        ),
        incoming_messages=c.incoming_count,
        outgoing_messages=c.outgoing_count,
    )
    note = None
    if c.status == m.ConversationStatus.CLOSED:
        note = pb.ClosingNote(
            category_id=c.close_category_id or "",
            category_name=c.close_category_name or "",
            summary=c.close_summary or "",
        )
    return pb.Conversation(
        conversation_id=c.id,
        space_id=c.space_id,
        contact_id=c.contact_id,
        channel_id=c.channel_id,
        channel_type=CHANNEL_TYPE_PB.get(c.channel_type, common.CHANNEL_TYPE_UNSPECIFIED),
        status=STATUS_PB.get(c.status, pb.CONVERSATION_STATUS_UNSPECIFIED),
        source=SOURCE_PB.get(c.source, pb.CONVERSATION_SOURCE_UNSPECIFIED),
        opened_by=c.opened_by,
        opened_at=ts(c.opened_at),
        assignee_user_id=c.assignee_user_id or "",
        assignee_team_id=c.assignee_team_id or "",
        assigned_at=ts(c.assigned_at),
        closed_at=ts(c.closed_at),
        closed_by=c.closed_by or "",
        closing_note=note,
        previous_conversation_id=c.previous_conversation_id or "",
        last_message_at=ts(c.last_message_at),
        last_inbound_at=ts(c.last_inbound_at),
        last_agent_message_at=ts(c.last_agent_message_at),
        last_message_text=c.last_message_text or "",
        metrics=metrics,
    )


def closing_note(c: m.Conversation) -> pb.ClosingNote:
    return pb.ClosingNote(
        category_id=c.close_category_id or "",
        category_name=c.close_category_name or "",
        summary=c.close_summary or "",
    )


def message(msg: m.Message) -> pb.Message:
    parts = [ParseDict(p, gw.ContentPart()) for p in msg.parts or []]
    if not parts and msg.direction == m.Direction.OUTBOUND and msg.deleted_at is None:
        if msg.text:
            parts.append(gw.ContentPart(text=gw.TextPart(text=msg.text)))
        for a in msg.attachments or []:
            att = ParseDict(a, gw.OutboundAttachment())
            parts.append(
                gw.ContentPart(
                    media=gw.MediaPart(kind=att.kind, url=att.url, caption=att.caption, filename=att.filename)
                )
            )
    reactions = [
        pb.MessageReaction(emoji=r.get("emoji", ""), by=r.get("by", ""), reacted_at=ts(_dt(r.get("reacted_at"))))
        for r in msg.reactions or []
    ]
    return pb.Message(
        message_id=msg.id,
        space_id=msg.space_id,
        conversation_id=msg.conversation_id,
        contact_id=msg.contact_id,
        channel_id=msg.channel_id,
        direction=DIRECTION_PB.get(msg.direction, pb.MESSAGE_DIRECTION_UNSPECIFIED),
        sender_type=SENDER_PB.get(msg.sender_type, pb.SENDER_TYPE_UNSPECIFIED),
        sender=msg.sender,
        kind=KIND_PB.get(msg.kind, pb.MESSAGE_KIND_UNSPECIFIED),
        parts=parts,
        text=msg.text,
        attachments=[ParseDict(a, gw.OutboundAttachment()) for a in msg.attachments or []],
        quick_replies=[ParseDict(q, gw.OutboundQuickReply()) for q in msg.quick_replies or []],
        payload=msg.payload,
        status=DELIVERY_PB.get(msg.status or "", gw.DELIVERY_STATUS_UNSPECIFIED),
        error_code=msg.error_code,
        error_message=msg.error_message,
        provider_message_id=msg.provider_message_id or "",
        reply_to_message_id=msg.reply_to_message_id or "",
        reactions=reactions,
        edited_at=ts(msg.edited_at),
        deleted_at=ts(msg.deleted_at),
        sent_at=ts(msg.sent_at),
        delivered_at=ts(msg.delivered_at),
        read_at=ts(msg.read_at),
        created_at=ts(msg.created_at),
        shortcut_id=msg.shortcut_id or "",
        tag=TAGS_PB.get(msg.tag or "", gw.MESSAGE_TAG_UNSPECIFIED),
        template=ParseDict(msg.template, gw.OutboundTemplate()) if msg.template else None,
        sequence=msg.seq or 0,
    )


def assignment(a: m.Assignment) -> pb.Assignment:
    return pb.Assignment(
        user_id=a.user_id or "",
        team_id=a.team_id or "",
        assigned_by=a.assigned_by,
        assigned_at=ts(a.assigned_at),
        ended_at=ts(a.ended_at),
        ended_by=a.ended_by or "",
    )


def category(c: m.ClosingCategory) -> pb.ClosingCategory:
    return pb.ClosingCategory(
        category_id=c.id, space_id=c.space_id, name=c.name, archived=c.archived, created_at=ts(c.created_at)
    )


def settings(s: m.SpaceSettings) -> pb.SpaceSettings:
    return pb.SpaceSettings(
        space_id=s.space_id,
        closing_category_required=s.closing_category_required,
        closing_summary_required=s.closing_summary_required,
        auto_close_after=duration(s.auto_close_after_seconds or None),
    )


def shortcut(s: m.Shortcut) -> pb.Shortcut:
    return pb.Shortcut(
        shortcut_id=s.id,
        space_id=s.space_id,
        name=s.name,
        text=s.text,
        attachments=[ParseDict(a, gw.OutboundAttachment()) for a in s.attachments or []],
        quick_replies=[ParseDict(q, gw.OutboundQuickReply()) for q in s.quick_replies or []],
        created_by=s.created_by,
        created_at=ts(s.created_at),
        updated_at=ts(s.updated_at),
    )


def _dt(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
