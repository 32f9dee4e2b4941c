"""Protobuf <-> domain mapping, shared by the gRPC API and the event publisher."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from parley.contacts.v1 import contact_pb2, criteria_pb2, fields_pb2, tags_pb2, views_pb2
from parley_kit.errors import InvalidArgument

from parley_contacts.domain import (
    DAY_RANGE,
    AssigneeCond,
    AssigneeMatch,
    ChannelCond,
    Contact,
    FieldCond,
    FieldDef,
    FieldOp,
    FieldType,
    Group,
    Tag,
    TagCond,
    TagMatch,
    TimeCond,
    TimeOp,
    TimeTarget,
    View,
    format_value,
    in_day_range,
)

PROFILE_FIELDS = ("first_name", "last_name", "email", "phone", "country", "language", "avatar_url")


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def from_ts(value: Timestamp, what: str) -> datetime:
    """The UTC datetime of a Timestamp; InvalidArgument naming `what` when it is out of range."""
    try:
        at = value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        at = None
    if at is None or not in_day_range(at):
        raise InvalidArgument(
            f"{what} is not a valid timestamp (seconds {value.seconds}, nanos {value.nanos}); "
            f"it must fall within {DAY_RANGE} UTC"
        )
    return at


def contact_to_pb(contact: Contact, defs: dict[uuid.UUID, FieldDef]) -> contact_pb2.Contact:
    values = []
    for field_id, value in contact.values.items():
        definition = defs.get(field_id)
        if definition is not None:
            values.append(
                contact_pb2.FieldValue(
                    field_id=str(field_id), key=definition.key, value=format_value(definition.type, value)
                )
            )
    values.sort(key=lambda v: v.key)
    return contact_pb2.Contact(
        id=str(contact.id),
        space_id=contact.space_id,
        **{name: getattr(contact, name) or "" for name in PROFILE_FIELDS},
        assignee=contact_pb2.Assignee(user_id=contact.assignee_user_id or "", team_id=contact.assignee_team_id or ""),
        tag_ids=[str(t) for t in contact.tag_ids],
        identities=[
            contact_pb2.ChannelIdentity(
                id=str(i.id),
                channel_id=i.channel_id,
                channel_type=i.channel_type,
                external_id=i.external_id,  # type: ignore[arg-type]
                created_at=ts(i.created_at),
            )
            for i in contact.identities
        ],
        field_values=values,
        created_at=ts(contact.created_at),
        updated_at=ts(contact.updated_at),
        last_interaction_at=ts(contact.last_interaction_at),
        last_interaction_channel_id=contact.last_interaction_channel_id or "",
        last_interaction_channel_type=contact.last_interaction_channel_type,  # type: ignore[arg-type]
    )


def profile_from_pb(profile: contact_pb2.ContactProfile) -> dict[str, str | None]:
    """Only the fields present in the message; '' means clear."""
    return {name: getattr(profile, name) for name in PROFILE_FIELDS if profile.HasField(name)}


_FIELD_TYPES = {
    fields_pb2.FIELD_TYPE_TEXT: FieldType.TEXT,
    fields_pb2.FIELD_TYPE_NUMBER: FieldType.NUMBER,
    fields_pb2.FIELD_TYPE_DATE: FieldType.DATE,
    fields_pb2.FIELD_TYPE_DATETIME: FieldType.DATETIME,
    fields_pb2.FIELD_TYPE_CHECKBOX: FieldType.CHECKBOX,
    fields_pb2.FIELD_TYPE_LIST: FieldType.LIST,
    fields_pb2.FIELD_TYPE_EMAIL: FieldType.EMAIL,
    fields_pb2.FIELD_TYPE_PHONE: FieldType.PHONE,
    fields_pb2.FIELD_TYPE_URL: FieldType.URL,
}
_FIELD_TYPES_PB = {v: k for k, v in _FIELD_TYPES.items()}


def field_type_from_pb(value: int) -> str:
    if value not in _FIELD_TYPES:
        raise InvalidArgument("field type is required: text, number, date, datetime, checkbox, list, email, phone, url")
    return str(_FIELD_TYPES[value])  # type: ignore[index]


def field_to_pb(f: FieldDef) -> fields_pb2.FieldDefinition:
    return fields_pb2.FieldDefinition(
        id=str(f.id),
        key=f.key,
        label=f.label,
        description=f.description,
        type=_FIELD_TYPES_PB[f.type],
        options=list(f.options),
        created_at=ts(f.created_at),
        updated_at=ts(f.updated_at),
    )


def tag_to_pb(t: Tag) -> tags_pb2.Tag:
    return tags_pb2.Tag(
        id=str(t.id), name=t.name, color=t.color, description=t.description, created_at=ts(t.created_at)
    )


def view_to_pb(v: View) -> views_pb2.View:
    return views_pb2.View(
        id=str(v.id),
        name=v.name,
        owner=v.owner,
        shared=v.shared,
        criteria=criteria_to_pb(v.criteria),
        created_at=ts(v.created_at),
        updated_at=ts(v.updated_at),
    )


# -- criteria ---------------------------------------------------------------------------------------

_TAG_MATCH = {
    criteria_pb2.TAG_MATCH_HAS_ANY: TagMatch.ANY,
    criteria_pb2.TAG_MATCH_HAS_ALL: TagMatch.ALL,
    criteria_pb2.TAG_MATCH_HAS_NONE: TagMatch.NONE,
}
_FIELD_OP = {
    criteria_pb2.FIELD_OPERATOR_EQUALS: FieldOp.EQUALS,
    criteria_pb2.FIELD_OPERATOR_NOT_EQUALS: FieldOp.NOT_EQUALS,
    criteria_pb2.FIELD_OPERATOR_CONTAINS: FieldOp.CONTAINS,
    criteria_pb2.FIELD_OPERATOR_STARTS_WITH: FieldOp.STARTS_WITH,
    criteria_pb2.FIELD_OPERATOR_GREATER_THAN: FieldOp.GREATER_THAN,
    criteria_pb2.FIELD_OPERATOR_LESS_THAN: FieldOp.LESS_THAN,
    criteria_pb2.FIELD_OPERATOR_BETWEEN: FieldOp.BETWEEN,
    criteria_pb2.FIELD_OPERATOR_IS_SET: FieldOp.IS_SET,
    criteria_pb2.FIELD_OPERATOR_IS_NOT_SET: FieldOp.IS_NOT_SET,
}
_ASSIGNEE = {
    criteria_pb2.ASSIGNEE_MATCH_ME: AssigneeMatch.ME,
    criteria_pb2.ASSIGNEE_MATCH_UNASSIGNED: AssigneeMatch.UNASSIGNED,
    criteria_pb2.ASSIGNEE_MATCH_USER: AssigneeMatch.USER,
    criteria_pb2.ASSIGNEE_MATCH_TEAM: AssigneeMatch.TEAM,
}
_TIME_OP = {criteria_pb2.TIME_OPERATOR_WITHIN: TimeOp.WITHIN, criteria_pb2.TIME_OPERATOR_BEFORE: TimeOp.BEFORE}


def _inverse(mapping: dict[Any, Any]) -> dict[Any, Any]:
    return {v: k for k, v in mapping.items()}


def criteria_from_pb(criteria: criteria_pb2.Criteria) -> Group:
    """The domain form of criteria; InvalidArgument naming the node that is malformed."""
    return _group_from_pb(criteria.root, "root")


def _group_from_pb(group: criteria_pb2.CriteriaGroup, path: str) -> Group:
    if group.operator not in (0, criteria_pb2.GROUP_OPERATOR_AND, criteria_pb2.GROUP_OPERATOR_OR):
        raise InvalidArgument(f"criteria {path}: unknown group operator {group.operator}")
    children = tuple(_node_from_pb(n, f"{path}.{i}") for i, n in enumerate(group.nodes))
    return Group(any=group.operator == criteria_pb2.GROUP_OPERATOR_OR, children=children)


def _enum(mapping: dict[int, Any], value: int, what: str, path: str) -> Any:
    if value not in mapping:
        raise InvalidArgument(f"criteria {path}: {what} is missing or unknown")
    return mapping[value]


def _node_from_pb(node: criteria_pb2.CriteriaNode, path: str) -> Any:
    kind = node.WhichOneof("node")
    if kind is None:
        raise InvalidArgument(f"criteria {path}: empty node (set a group or a condition)")
    if kind == "group":
        return _group_from_pb(node.group, path)
    if kind == "tag":
        ids = []
        for raw in node.tag.tag_ids:
            try:
                ids.append(uuid.UUID(raw))
            except ValueError:
                raise InvalidArgument(f"criteria {path}: tag id '{raw}' is not a valid id") from None
        return TagCond(_enum(_TAG_MATCH, node.tag.match, "tag match", path), tuple(ids))
    if kind == "field":
        f = node.field
        field_id = None
        if f.field_id:
            try:
                field_id = uuid.UUID(f.field_id)
            except ValueError:
                raise InvalidArgument(f"criteria {path}: field id '{f.field_id}' is not a valid id") from None
        op = _enum(_FIELD_OP, f.operator, "field operator", path)
        return FieldCond(f.field, op, tuple(f.values), field_id)
    if kind == "channel":
        return ChannelCond(tuple(node.channel.channel_ids), tuple(int(t) for t in node.channel.channel_types))
    if kind == "assignee":
        return AssigneeCond(_enum(_ASSIGNEE, node.assignee.match, "assignee match", path), node.assignee.id)
    cond = node.last_interaction if kind == "last_interaction" else node.created
    target = TimeTarget.LAST_INTERACTION if kind == "last_interaction" else TimeTarget.CREATED
    op = _enum(_TIME_OP, cond.operator, "time operator", path)
    at = from_ts(cond.before, f"criteria {path}: 'before'") if cond.HasField("before") else None
    seconds = int(cond.duration.seconds) if cond.HasField("duration") else 0
    return TimeCond(target, op, seconds, at)


def criteria_to_pb(group: Group) -> criteria_pb2.Criteria:
    return criteria_pb2.Criteria(root=_group_to_pb(group))


def _group_to_pb(group: Group) -> criteria_pb2.CriteriaGroup:
    op = criteria_pb2.GROUP_OPERATOR_OR if group.any else criteria_pb2.GROUP_OPERATOR_AND
    return criteria_pb2.CriteriaGroup(operator=op, nodes=[_node_to_pb(c) for c in group.children])


def _node_to_pb(node: Any) -> criteria_pb2.CriteriaNode:
    if isinstance(node, Group):
        return criteria_pb2.CriteriaNode(group=_group_to_pb(node))
    if isinstance(node, TagCond):
        return criteria_pb2.CriteriaNode(
            tag=criteria_pb2.TagCondition(
                match=_inverse(_TAG_MATCH)[node.match], tag_ids=[str(t) for t in node.tag_ids]
            )
        )
    if isinstance(node, FieldCond):
        return criteria_pb2.CriteriaNode(
            field=criteria_pb2.FieldCondition(
                field=node.field,
                operator=_inverse(_FIELD_OP)[node.op],
                values=list(node.values),
                field_id=str(node.field_id) if node.field_id else "",
            )
        )
    if isinstance(node, ChannelCond):
        return criteria_pb2.CriteriaNode(
            channel=criteria_pb2.ChannelCondition(
                channel_ids=list(node.channel_ids),
                channel_types=list(node.channel_types),  # type: ignore[arg-type]
            )
        )
    if isinstance(node, AssigneeCond):
        return criteria_pb2.CriteriaNode(
            assignee=criteria_pb2.AssigneeCondition(match=_inverse(_ASSIGNEE)[node.match], id=node.id)
        )
    assert isinstance(node, TimeCond)
    cond = criteria_pb2.TimeCondition(operator=_inverse(_TIME_OP)[node.op])
    if node.seconds:
        cond.duration.seconds = node.seconds
    if node.at is not None:
        cond.before.CopyFrom(ts(node.at))
    if node.target is TimeTarget.LAST_INTERACTION:
        return criteria_pb2.CriteriaNode(last_interaction=cond)
    return criteria_pb2.CriteriaNode(created=cond)
