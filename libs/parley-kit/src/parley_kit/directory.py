"""Who may be assigned in a space, and users' display names: the workspace service's directory.

A service that assigns contacts or conversations asks the workspace first, with its platform token and a
deadline: is user U a member of space S (`SpaceService.GetSpaceMember`), does team T belong to space S
(`TeamService.GetTeam`). A yes is reused for `ttl` seconds and dropped as soon as the workspace announces
the member's removal or the team's deletion (`follow()`: every replica hears those events); a no is never
cached, so a user added a moment ago is assignable at once. When the workspace cannot answer,
`require_assignee` raises `Unavailable`: an assignment is never accepted unchecked.

Display names (`{{user.name}}` in shortcuts) come from `UserService.GetUser`, cached 5 minutes; a failed
lookup gives an empty name (cosmetic, never an error).

An id longer than `MAX_ASSIGNEE_ID` is no user's or team's: every check (also `accept_any_assignee`) refuses
it with `InvalidArgument` before asking anything.

When a member leaves a space or a team is deleted, what was assigned to them is released: `releases_consumer()`
is the durable consumer of those WORKSPACE events and `AssigneeReleases` its handler, which calls the
service's own release functions (each releasing in bounded transactions until nothing is left). A release
that fails for a passing reason (the workspace or the service's database down) is retried until it succeeds,
however long that takes: only an event that can never be handled is dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from parley.workspace.v1 import events_pb2 as wev
from parley.workspace.v1 import (
    space_service_pb2,
    space_service_pb2_grpc,
    team_service_pb2,
    team_service_pb2_grpc,
    user_service_pb2,
    user_service_pb2_grpc,
)

from parley_kit import metrics
from parley_kit.contracts import workspace as workspace_contract
from parley_kit.errors import InvalidArgument, NotFound, Unavailable
from parley_kit.grpc_client import create_channel
from parley_kit.nats import ConsumerSpec, Delivery, PoisonMessage, dead_letter_subject, max_deliver_outlasting
from parley_kit.settings import AssigneeSettings

if TYPE_CHECKING:
    from parley_kit.runtime import ServiceRuntime

log = logging.getLogger(__name__)

Release = Callable[[str, str, str], Awaitable[int]]
"""`release(space_id, user_or_team_id, actor)`: unassign it everywhere in the space; how many changed."""
AssigneeCheck = Callable[[str, str, str], Awaitable[None]]
"""`check(space_id, user_id, team_id)`: returns when the (non-empty) user and team may be assigned in the
space; raises `InvalidArgument` for an id longer than `MAX_ASSIGNEE_ID`, `NotFound` naming each one that may
not, `Unavailable` when it cannot tell."""

MAX_ASSIGNEE_ID = 64
"""The longest user or team id a service keeps as an assignee (workspace ids are UUIDs)."""
RELEASES_BACKOFF = (timedelta(seconds=1), timedelta(seconds=5), timedelta(seconds=30))
NAME_TTL = 300.0
MAX_CACHED = 50_000
_K = TypeVar("_K")
_V = TypeVar("_V")
_E = TypeVar("_E", bound=PbMessage)


async def accept_any_assignee(space_id: str, user_id: str, team_id: str) -> None:
    """The check of a service started with PARLEY_ASSIGNEE_CHECK=off: every id that fits is accepted."""
    _check_lengths(user_id, team_id)


def _check_lengths(user_id: str, team_id: str) -> None:
    for what, value in (("user_id", user_id), ("team_id", team_id)):
        if len(value) > MAX_ASSIGNEE_ID:
            raise InvalidArgument(f"{what} is longer than {MAX_ASSIGNEE_ID} characters; nothing was changed")


class WorkspaceDirectory:
    """Membership, team and name lookups against the workspace service, with a short positive cache."""

    def __init__(self, channel: grpc.aio.Channel, *, service: str, ttl: float = 10.0, timeout: float = 2.0) -> None:
        self._channel = channel
        self._spaces = space_service_pb2_grpc.SpaceServiceStub(channel)
        self._teams = team_service_pb2_grpc.TeamServiceStub(channel)
        self._users = user_service_pb2_grpc.UserServiceStub(channel)
        self._service = service
        self._ttl = ttl
        self._timeout = timeout
        self._members: dict[tuple[str, str], float] = {}  # (space, user) -> expiry of a yes
        self._team_spaces: dict[str, tuple[str, float]] = {}  # team -> (its space, expiry)
        self._names: dict[str, tuple[float, str]] = {}
        self._subscriptions: list[Subscription] = []

    @classmethod
    def connect(
        cls, target: str, token: str, *, service: str, ttl: float = 10.0, timeout: float = 2.0
    ) -> WorkspaceDirectory:
        channel = create_channel(target, token=token, timeout=timeout, max_attempts=3)
        return cls(channel, service=service, ttl=ttl, timeout=timeout)

    # -- assignees ------------------------------------------------------------------------------------

    async def require_assignee(self, space_id: str, user_id: str, team_id: str) -> None:
        """An `AssigneeCheck`: the user must be a member of the space, the team one of its teams."""
        _check_lengths(user_id, team_id)
        member, team = await asyncio.gather(
            self.is_member(space_id, user_id) if user_id else _true(),
            self.has_team(space_id, team_id) if team_id else _true(),
        )
        problems = []
        if not member:
            problems.append(f"user '{user_id}' is not a member of this space")
        if not team:
            problems.append(f"team '{team_id}' is not a team of this space")
        if problems:
            raise NotFound("; ".join(problems))

    async def is_member(self, space_id: str, user_id: str, *, fresh: bool = False) -> bool:
        """Whether the user is a member of the space now (`fresh`: ask even when a yes is cached)."""
        key = (space_id, user_id)
        if not user_id.isprintable():  # no id holds control characters (the workspace would fail on a NUL)
            self._count("member", "no")
            return False
        if not fresh and self._members.get(key, 0.0) > time.monotonic():
            self._count("member", "cached")
            return True
        request = space_service_pb2.GetSpaceMemberRequest(space_id=space_id, user_id=user_id)
        try:
            await self._spaces.GetSpaceMember(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._members.pop(key, None)
                self._count("member", "no")
                return False
            raise self._unavailable("member", f"whether user '{user_id}' is a member of the space", exc) from None
        self._remember(self._members, key, time.monotonic() + self._ttl)
        self._count("member", "yes")
        return True

    async def has_team(self, space_id: str, team_id: str) -> bool:
        """Whether the team exists and belongs to the space."""
        if not team_id.isprintable():
            self._count("team", "no")
            return False
        cached = self._team_spaces.get(team_id)
        if cached is not None and cached[1] > time.monotonic():
            self._count("team", "cached")
            return cached[0] == space_id
        try:
            reply = await self._teams.GetTeam(team_service_pb2.GetTeamRequest(team_id=team_id), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._team_spaces.pop(team_id, None)
                self._count("team", "no")
                return False
            raise self._unavailable("team", f"whether team '{team_id}' belongs to the space", exc) from None
        self._remember(self._team_spaces, team_id, (reply.team.space_id, time.monotonic() + self._ttl))
        found = reply.team.space_id == space_id
        self._count("team", "yes" if found else "no")
        return found

    def forget_member(self, space_id: str, user_id: str) -> None:
        self._members.pop((space_id, user_id), None)

    def forget_team(self, team_id: str) -> None:
        self._team_spaces.pop(team_id, None)

    async def follow(self, nc: NatsClient) -> None:
        """Drop cached yes-answers the moment the workspace announces a removal or a deletion. A plain
        subscription (not a durable consumer), so every replica of the service hears every such event."""

        async def member_removed(msg: Msg) -> None:
            event = _decode(wev.MemberRemoved, msg)
            if event is not None:
                self.forget_member(event.space_id, event.user_id)

        async def team_deleted(msg: Msg) -> None:
            event = _decode(wev.TeamDeleted, msg)
            if event is not None:
                self.forget_team(event.team_id)

        self._subscriptions = [
            await nc.subscribe(workspace_contract.MEMBER_REMOVED, cb=member_removed),
            await nc.subscribe(workspace_contract.TEAM_DELETED, cb=team_deleted),
        ]

    # -- names ----------------------------------------------------------------------------------------

    async def display_name(self, user_id: str) -> str:
        """The user's display name; empty when unknown or when the workspace does not answer."""
        hit = self._names.get(user_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            reply = await self._users.GetUser(user_service_pb2.GetUserRequest(user_id=user_id), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            self._count("name", "no" if exc.code() == grpc.StatusCode.NOT_FOUND else "error")
            log.warning("workspace GetUser(%s) failed: %s %s", user_id, exc.code().name, exc.details())
            return ""
        self._count("name", "yes")
        name = reply.user.display_name
        self._remember(self._names, user_id, (time.monotonic() + NAME_TTL, name))
        return name

    async def close(self) -> None:
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception:  # the connection is already closed or draining: nothing left to undo
                log.debug("unsubscribe failed", exc_info=True)
        self._subscriptions = []
        await self._channel.close()

    # -- internals ------------------------------------------------------------------------------------

    def _count(self, kind: str, outcome: str) -> None:
        metrics.DIRECTORY_LOOKUPS.labels(self._service, kind, outcome).inc()

    def _unavailable(self, kind: str, what: str, exc: grpc.aio.AioRpcError) -> Unavailable:
        self._count(kind, "error")
        code = exc.code()
        log.warning("workspace lookup failed: %s %s", code.name, exc.details())
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return Unavailable(
                f"cannot check {what}: the workspace service refused this service's token ({code.name}: "
                f"{exc.details()}); nothing was changed; check PARLEY_SERVICE_TOKEN"
            )
        return Unavailable(
            f"cannot check {what}: the workspace service did not answer ({code.name}); nothing was changed; retry"
        )

    @staticmethod
    def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
        if len(cache) >= MAX_CACHED:
            cache.clear()  # a burst of distinct ids: start over rather than grow without bound
        cache[key] = value


async def _true() -> bool:
    return True


def _decode(kind: type[_E], msg: Msg) -> _E | None:
    event = kind()
    try:
        event.ParseFromString(msg.data)
    except DecodeError:
        log.warning("undecodable %s on %s; ignored", kind.__name__, msg.subject)
        return None
    return event


def releases_durable(service: str) -> str:
    return f"{service}--assignee-releases"


def releases_consumer(service: str, *, backoff: tuple[timedelta, ...] = RELEASES_BACKOFF) -> ConsumerSpec:
    """`<service>--assignee-releases`: member removals and team deletions, one at a time (in stream order).

    A release failing for a passing reason (the workspace asked whether the user is a member again, or the
    service's own database, down for minutes or hours) is retried at `backoff` until it succeeds: max_deliver
    outlasts the WORKSPACE stream's retention, so only a `PoisonMessage` is dead-lettered. A dead-lettered
    removal would leave the departed member assigned."""
    durable = releases_durable(service)
    return ConsumerSpec(
        stream=workspace_contract.STREAM,
        durable=durable,
        filter_subjects=(workspace_contract.MEMBER_REMOVED, workspace_contract.TEAM_DELETED),
        ack_wait=timedelta(seconds=60),
        max_deliver=max_deliver_outlasting(workspace_contract.MAX_AGE, backoff),
        backoff=backoff,
        max_ack_pending=20,
        dead_letter_subject=dead_letter_subject(service, durable),
    )


class AssigneeReleases:
    """Handler of `releases_consumer()`: a removed member's and a deleted team's assignments are released.

    A redelivered event finds nothing left to release. A member removal whose user is a member again
    (re-added since; asked fresh of the workspace) releases nothing: their assignments since are valid.
    The actor of the releases is the one who removed the member or deleted the team.
    """

    def __init__(self, *, release_member: Release, release_team: Release, directory: WorkspaceDirectory | None) -> None:
        self._release_member = release_member
        self._release_team = release_team
        self._directory = directory

    async def __call__(self, delivery: Delivery) -> None:
        if delivery.subject == workspace_contract.MEMBER_REMOVED:
            removed = _parse(wev.MemberRemoved, delivery)
            if not removed.space_id or not removed.user_id:
                raise PoisonMessage("member.removed without space_id or user_id")
            if self._directory is not None:
                self._directory.forget_member(removed.space_id, removed.user_id)
                if await self._directory.is_member(removed.space_id, removed.user_id, fresh=True):
                    log.info("user %s is a member of %s again; nothing released", removed.user_id, removed.space_id)
                    return
            await self._release_member(removed.space_id, removed.user_id, removed.meta.actor or "system")
        elif delivery.subject == workspace_contract.TEAM_DELETED:
            deleted = _parse(wev.TeamDeleted, delivery)
            if not deleted.space_id or not deleted.team_id:
                raise PoisonMessage("team.deleted without space_id or team_id")
            if self._directory is not None:
                self._directory.forget_team(deleted.team_id)
            await self._release_team(deleted.space_id, deleted.team_id, deleted.meta.actor or "system")


def _parse(kind: type[_E], delivery: Delivery) -> _E:
    event = kind()
    try:
        event.ParseFromString(delivery.data)
    except DecodeError as exc:
        raise PoisonMessage(f"undecodable {delivery.subject}: {exc}") from None
    return event


def from_settings(settings: AssigneeSettings) -> tuple[WorkspaceDirectory | None, AssigneeCheck]:
    """The directory (None without PARLEY_WORKSPACE_ADDR) and the assignee check the service applies: the
    directory's, or, with PARLEY_ASSIGNEE_CHECK=off, one that accepts any id (said once in the log)."""
    directory = None
    if settings.workspace_addr:
        directory = WorkspaceDirectory.connect(
            settings.workspace_addr,
            settings.service_token,
            service=settings.service_name,
            ttl=settings.assignee_cache_seconds,
            timeout=settings.assignee_timeout_seconds,
        )
    if settings.assignee_check:
        assert directory is not None  # AssigneeSettings refuses assignee_check without workspace_addr
        return directory, directory.require_assignee
    log.warning("PARLEY_ASSIGNEE_CHECK=off: users and teams are assigned without checking that they exist")
    return directory, accept_any_assignee


async def attach(rt: ServiceRuntime, settings: AssigneeSettings) -> tuple[WorkspaceDirectory | None, AssigneeCheck]:
    """`from_settings()` for a service's connected runtime: the directory follows the workspace's removals on
    the runtime's NATS connection and is closed when the runtime shuts down."""
    directory, check = from_settings(settings)
    if directory is not None:
        assert rt.nc is not None, "connect() the runtime first"
        await directory.follow(rt.nc)
        rt.add_closer(directory.close)
    return directory, check
