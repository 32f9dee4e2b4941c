"""The workspace service's stream `WORKSPACE` and the subjects other services consume.

Published by the workspace service through its outbox (`workspace.<entity>.<event>`, payloads in
`parley/workspace/v1/events.proto`); contacts and conversations consume member removals and team deletions
to release what was assigned to them. Nats-Msg-Id is `EventMeta.event_id`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parley_kit.nats.streams import StreamSpec

STREAM = "WORKSPACE"
SUBJECT_PREFIX = "workspace."
SUBJECTS = (f"{SUBJECT_PREFIX}>",)
MEMBER_REMOVED = "workspace.member.removed"
TEAM_DELETED = "workspace.team.deleted"
MAX_AGE = timedelta(days=7)


def stream_spec(replicas: int = 1, *, max_age: timedelta = MAX_AGE) -> StreamSpec:
    """The `WORKSPACE` stream; the workspace service and its consumers provision it alike."""
    from parley_kit.nats.streams import StreamSpec

    return StreamSpec(name=STREAM, subjects=SUBJECTS, max_age=max_age, replicas=replicas)
