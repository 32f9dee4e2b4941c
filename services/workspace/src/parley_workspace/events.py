"""Events of the workspace service: subjects, the WORKSPACE stream, and domain event -> protobuf.

Every event goes through the transactional outbox (written in the transaction of its change),
so a change and its event are committed together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.common.v1 import common_pb2
from parley.workspace.v1 import events_pb2 as ev
from parley_kit.contracts import workspace as workspace_contract
from parley_kit.nats.streams import StreamSpec
from parley_kit.outbox import enqueue
from sqlalchemy.ext.asyncio import AsyncSession

from parley_workspace import grpc_api as g
from parley_workspace.service import Event

STREAM = workspace_contract.STREAM
SUBJECT_PREFIX = workspace_contract.SUBJECT_PREFIX
SUBJECTS = list(workspace_contract.SUBJECTS)


def stream_spec(replicas: int = 1) -> StreamSpec:
    """The WORKSPACE stream: every workspace event, kept a week; declared once in the shared contract its
    consumers (contacts, conversations) provision too."""
    return workspace_contract.stream_spec(replicas)


def subject_of(kind: str) -> str:
    """workspace.<entity>.<event>, e.g. workspace.member.added."""
    return SUBJECT_PREFIX + kind


def _org_changed(e: Event) -> Message:
    d = e.data
    return ev.OrganizationMemberChanged(
        organization_id=d["organization_id"],
        user_id=d["user_id"],
        previous_role=g.ORG_ROLE_TO_PB.get(d.get("previous_role", ""), 0),
        role=g.ORG_ROLE_TO_PB.get(d.get("role", ""), 0),
    )


_BUILDERS: dict[str, Callable[[Event], Message]] = {
    "space.created": lambda e: ev.SpaceCreated(space=g.space_pb_of(e.data["space"])),
    "space.updated": lambda e: ev.SpaceUpdated(space=g.space_pb_of(e.data["space"])),
    "member.added": lambda e: ev.MemberAdded(
        space_id=e.space_id,
        user_id=e.data["user_id"],
        role=g.SPACE_ROLE_TO_PB[e.data["role"]],
        organization_id=e.data["organization_id"],
    ),
    "member.role_changed": lambda e: ev.MemberRoleChanged(
        space_id=e.space_id,
        user_id=e.data["user_id"],
        previous_role=g.SPACE_ROLE_TO_PB[e.data["previous_role"]],
        role=g.SPACE_ROLE_TO_PB[e.data["role"]],
    ),
    "member.removed": lambda e: ev.MemberRemoved(
        space_id=e.space_id,
        user_id=e.data["user_id"],
        previous_role=g.SPACE_ROLE_TO_PB[e.data["previous_role"]],
        removed_from_team_ids=e.data["removed_from_team_ids"],
    ),
    "org_member.added": _org_changed,
    "org_member.role_changed": _org_changed,
    "org_member.removed": _org_changed,
    "team.created": lambda e: ev.TeamCreated(team=g.team_pb_of(e.data["team"], e.data["member_count"])),
    "team.renamed": lambda e: ev.TeamRenamed(
        team=g.team_pb_of(e.data["team"], e.data["member_count"]), previous_name=e.data["previous_name"]
    ),
    "team.deleted": lambda e: ev.TeamDeleted(team_id=e.data["team_id"], space_id=e.space_id, name=e.data["name"]),
    "team.member_added": lambda e: ev.TeamMemberAdded(team_id=e.data["team_id"], user_id=e.data["user_id"]),
    "team.member_removed": lambda e: ev.TeamMemberRemoved(team_id=e.data["team_id"], user_id=e.data["user_id"]),
    "availability.changed": lambda e: ev.AvailabilityChanged(
        space_id=e.space_id,
        user_id=e.data["user_id"],
        previous_status=g.AVAILABILITY_TO_PB[e.data["previous_status"]],
        status=g.AVAILABILITY_TO_PB[e.data["status"]],
    ),
    "business_hours.changed": lambda e: ev.BusinessHoursChanged(business_hours=g.hours_pb(e.data["hours"])),
    "api_key.revoked": lambda e: ev.ApiKeyRevoked(api_key_id=e.data["api_key_id"], space_id=e.space_id),
}

KINDS = tuple(_BUILDERS)


def to_message(event: Event) -> Message:
    """The protobuf message for a domain event, with its EventMeta filled in."""
    message = _BUILDERS[event.kind](event)
    occurred = Timestamp()
    occurred.FromDatetime(event.occurred_at)
    meta: Any = message.meta  # type: ignore[attr-defined]
    meta.CopyFrom(
        common_pb2.EventMeta(event_id=event.event_id, occurred_at=occurred, space_id=event.space_id, actor=event.actor)
    )
    return message


async def write_event(session: AsyncSession, event: Event) -> None:
    """The repository's event writer: the event goes to the outbox in the change's own transaction."""
    await enqueue(session, subject_of(event.kind), to_message(event), msg_id=event.event_id)
