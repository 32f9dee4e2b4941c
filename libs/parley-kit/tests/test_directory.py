"""WorkspaceDirectory against the real workspace service: members, teams, the positive cache and its
eviction by workspace events, names, and a clear UNAVAILABLE when the workspace cannot answer."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta

import grpc
import nats
import pytest
from nats.js.api import DeliverPolicy
from opentelemetry.context import Context
from parley.common.v1.common_pb2 import EventMeta
from parley.workspace.v1 import events_pb2 as wev
from parley.workspace.v1 import space_service_pb2_grpc
from parley_kit import directory as d
from parley_kit.auth import SigningKey, TokenIssuer
from parley_kit.contracts import workspace as contract
from parley_kit.errors import InvalidArgument, NotFound, Unavailable
from parley_kit.local.servers import free_port
from parley_kit.nats import ConsumerRunner, Delivery, PoisonMessage, dead_letter_stream, provision
from parley_kit.settings import AssigneeSettings, load_settings
from parley_kit.testing.processes import WorkspaceProcess
from prometheus_client import REGISTRY


def lookups(kind: str, outcome: str) -> float:
    labels = {"service": "tests", "kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("parley_directory_lookups_total", labels) or 0.0


@pytest.fixture(scope="module")
async def directory(workspace_service: WorkspaceProcess, mint_token: object) -> AsyncIterator[d.WorkspaceDirectory]:
    token = mint_token(space_id="*", role="system", subject="service:tests")  # type: ignore[operator]
    found = d.WorkspaceDirectory.connect(workspace_service.target, token, service="tests", ttl=300.0)
    yield found
    await found.close()


async def test_a_member_and_a_team_of_the_space_may_be_assigned(
    workspace_service: WorkspaceProcess, directory: d.WorkspaceDirectory
) -> None:
    admin = workspace_service.admin
    space = await admin.space()
    user, team = await admin.member(space), await admin.team(space)
    await directory.require_assignee(space, user, team)
    await directory.require_assignee(space, user, "")
    await directory.require_assignee(space, "", team)


async def test_strangers_typos_and_other_spaces_are_not_found_each_named(
    workspace_service: WorkspaceProcess, directory: d.WorkspaceDirectory
) -> None:
    admin = workspace_service.admin
    space, other = await admin.space(), await admin.space()
    user, team = await admin.member(space), await admin.team(space)
    outsider, foreign_team = await admin.member(other), await admin.team(other)
    for user_id, team_id, message in [
        ("u-typo", "", "user 'u-typo' is not a member of this space"),
        ("u\x00x", "t\nx", "user 'u\x00x' is not a member of this space; team 't\nx' is not a team"),
        (outsider, "", f"user '{outsider}' is not a member of this space"),
        ("", "t-typo", "team 't-typo' is not a team of this space"),
        ("", foreign_team, f"team '{foreign_team}' is not a team of this space"),
        (outsider, foreign_team, f"user '{outsider}' is not a member of this space; team '{foreign_team}' is not"),
        (user, foreign_team, f"team '{foreign_team}' is not a team of this space"),
        (outsider, team, f"user '{outsider}' is not a member"),
    ]:
        with pytest.raises(NotFound) as info:
            await directory.require_assignee(space, user_id, team_id)
        assert message in info.value.message


async def test_a_yes_is_cached_and_a_no_is_not(
    workspace_service: WorkspaceProcess, directory: d.WorkspaceDirectory
) -> None:
    admin = workspace_service.admin
    space = await admin.space()
    user = await admin.member(space)
    asked = lookups("member", "no")
    assert not await directory.is_member(space, user + "x")
    assert not await directory.is_member(space, user + "x")
    assert lookups("member", "no") == asked + 2  # each no asks again
    assert await directory.is_member(space, user)
    cached = lookups("member", "cached")
    assert await directory.is_member(space, user)
    assert lookups("member", "cached") == cached + 1
    # someone added after a no is assignable at once
    newcomer = await admin.member(await admin.space())
    assert not await directory.is_member(space, newcomer)
    await admin.add_member(space, newcomer)
    assert await directory.is_member(space, newcomer)


async def test_removals_and_deletions_drop_the_cached_yes_at_once(
    workspace_service: WorkspaceProcess, directory: d.WorkspaceDirectory, nats_url: str
) -> None:
    admin = workspace_service.admin
    space = await admin.space()
    user, team = await admin.member(space), await admin.team(space)
    nc = await nats.connect(nats_url)
    try:
        await directory.follow(nc)
        assert await directory.is_member(space, user) and await directory.has_team(space, team)
        await admin.remove_member(space, user)
        await admin.delete_team(team)
        deadline = time.monotonic() + 10  # the cache would keep them 300 s
        while await directory.is_member(space, user) or await directory.has_team(space, team):
            assert time.monotonic() < deadline, "the workspace's events did not evict the cached answers"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    assert await directory.is_member(space, user, fresh=True) is False


async def test_fresh_asks_the_workspace_even_when_a_yes_is_cached(
    workspace_service: WorkspaceProcess, directory: d.WorkspaceDirectory
) -> None:
    admin = workspace_service.admin
    space = await admin.space()
    user = await admin.member(space)
    assert await directory.is_member(space, user)
    await admin.remove_member(space, user)  # no follow(): only the cache remembers
    assert await directory.is_member(space, user)
    assert not await directory.is_member(space, user, fresh=True)
    assert not await directory.is_member(space, user)


async def test_display_names_and_an_empty_name_when_unknown(
    workspace_service: WorkspaceProcess, directory: d.WorkspaceDirectory
) -> None:
    admin = workspace_service.admin
    space = await admin.space()
    user = await admin.member(space, display_name="Juan Pérez")
    assert await directory.display_name(user) == "Juan Pérez"
    assert await directory.display_name("u-nobody") == ""


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("where", ["nothing listens", "never answers"])
async def test_a_workspace_that_cannot_answer_is_unavailable_within_the_deadline(
    where: str, black_hole: str, mint_token: object
) -> None:
    target = f"127.0.0.1:{free_port()}" if where == "nothing listens" else black_hole
    token = mint_token(space_id="*", role="system", subject="service:tests")  # type: ignore[operator]
    down = d.WorkspaceDirectory.connect(target, token, service="tests", timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="the workspace service did not answer"):
            await down.require_assignee("s1", "u1", "t1")
        assert await down.display_name("u1") == ""
    finally:
        await down.close()
    assert time.monotonic() - started < 3


async def test_a_refused_token_is_unavailable_and_names_the_setting(workspace_service: WorkspaceProcess) -> None:
    forged = TokenIssuer(SigningKey.generate("other")).issue(space_id="*", role="system", subject="service:x")
    refused = d.WorkspaceDirectory.connect(workspace_service.target, forged, service="tests")
    try:
        with pytest.raises(Unavailable, match="PARLEY_SERVICE_TOKEN"):
            await refused.is_member("s1", "u1")
    finally:
        await refused.close()


def test_a_service_without_the_workspace_address_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE_URL", "postgresql://x@localhost/x")
    monkeypatch.delenv("PARLEY_WORKSPACE_ADDR", raising=False)
    monkeypatch.delenv("PARLEY_ASSIGNEE_CHECK", raising=False)
    with pytest.raises(SystemExit):
        load_settings(AssigneeSettings, service_name="contacts")
    assert "PARLEY_ASSIGNEE_CHECK: Value error, set PARLEY_WORKSPACE_ADDR" in capsys.readouterr().err
    monkeypatch.setenv("PARLEY_WORKSPACE_ADDR", "workspace:50051")
    monkeypatch.delenv("PARLEY_SERVICE_TOKEN", raising=False)
    with pytest.raises(SystemExit):
        load_settings(AssigneeSettings, service_name="contacts")
    assert "PARLEY_ASSIGNEE_CHECK: Value error, set PARLEY_SERVICE_TOKEN" in capsys.readouterr().err
    monkeypatch.delenv("PARLEY_WORKSPACE_ADDR")
    monkeypatch.setenv("PARLEY_ASSIGNEE_CHECK", "off")
    settings = load_settings(AssigneeSettings, service_name="contacts")
    assert settings.assignee_check is False
    directory, check = d.from_settings(settings)
    assert directory is None and check is d.accept_any_assignee


def delivery(subject: str, data: bytes) -> Delivery:
    return Delivery(None, data, {}, subject, "", "", 1, 0, Context())


async def test_releases_call_the_service_with_the_removals_actor_and_refuse_poison() -> None:
    calls: list[tuple[str, str, str, str]] = []

    async def member(space_id: str, user_id: str, actor: str) -> int:
        calls.append(("member", space_id, user_id, actor))
        return 1

    async def team(space_id: str, team_id: str, actor: str) -> int:
        calls.append(("team", space_id, team_id, actor))
        return 1

    releases = d.AssigneeReleases(release_member=member, release_team=team, directory=None)
    removed = wev.MemberRemoved(meta=EventMeta(actor="user:owner"), space_id="s1", user_id="u1")
    await releases(delivery(contract.MEMBER_REMOVED, removed.SerializeToString()))
    deleted = wev.TeamDeleted(space_id="s1", team_id="t1")
    await releases(delivery(contract.TEAM_DELETED, deleted.SerializeToString()))
    assert calls == [("member", "s1", "u1", "user:owner"), ("team", "s1", "t1", "system")]
    for subject, data in [
        (contract.MEMBER_REMOVED, b"\xff\xff\xff"),
        (contract.MEMBER_REMOVED, wev.MemberRemoved(space_id="s1").SerializeToString()),
        (contract.TEAM_DELETED, wev.TeamDeleted(team_id="t1").SerializeToString()),
    ]:
        with pytest.raises(PoisonMessage):
            await releases(delivery(subject, data))
    assert len(calls) == 2


async def test_an_id_longer_than_any_user_or_team_id_is_invalid_before_anything_is_asked(mint_token: object) -> None:
    token = mint_token(space_id="*", role="system", subject="service:tests")  # type: ignore[operator]
    down = d.WorkspaceDirectory.connect(f"127.0.0.1:{free_port()}", token, service="tests", timeout=0.5)
    long = "u" * (d.MAX_ASSIGNEE_ID + 1)
    asked = lookups("member", "error") + lookups("team", "error")
    try:
        for check in (down.require_assignee, d.accept_any_assignee):
            with pytest.raises(InvalidArgument, match=f"user_id is longer than {d.MAX_ASSIGNEE_ID} characters"):
                await check("s1", long, "")
            with pytest.raises(InvalidArgument, match=f"team_id is longer than {d.MAX_ASSIGNEE_ID} characters"):
                await check("s1", "", long)
        assert lookups("member", "error") + lookups("team", "error") == asked  # the workspace was not asked
        await d.accept_any_assignee("s1", "u" * d.MAX_ASSIGNEE_ID, "t" * d.MAX_ASSIGNEE_ID)
    finally:
        await down.close()


def test_the_releases_consumer_retries_for_longer_than_the_workspace_stream_keeps_an_event() -> None:
    for backoff in (d.RELEASES_BACKOFF, (timedelta(milliseconds=20),)):
        spec = d.releases_consumer("tests", backoff=backoff)
        waited = sum((spec.retry_delay(n) or 0.0) for n in range(1, spec.max_deliver))
        assert waited >= contract.MAX_AGE.total_seconds()


class FlakyWorkspace(space_service_pb2_grpc.SpaceServiceServicer):
    """A workspace that answers UNAVAILABLE while `down`, then says the user is no member."""

    def __init__(self) -> None:
        self.down = True

    async def GetSpaceMember(self, request: object, context: grpc.aio.ServicerContext) -> object:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
        await context.abort(grpc.StatusCode.NOT_FOUND, "not a member")


async def test_a_removal_is_released_after_a_workspace_outage_longer_than_ten_deliveries(
    nats_url: str, mint_token: object
) -> None:
    workspace = FlakyWorkspace()
    server = grpc.aio.server()
    space_service_pb2_grpc.add_SpaceServiceServicer_to_server(workspace, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    service = f"rel{uuid.uuid4().hex[:8]}"
    space = f"s-{service}"
    # Only events published from now on: earlier tests' removals would compete for the deliveries.
    spec = replace(
        d.releases_consumer(service, backoff=(timedelta(milliseconds=20),)), deliver_policy=DeliverPolicy.NEW
    )
    token = mint_token(space_id="*", role="system", subject="service:tests")  # type: ignore[operator]
    directory = d.WorkspaceDirectory.connect(f"127.0.0.1:{port}", token, service="tests", timeout=2.0)
    released: list[tuple[str, str, str]] = []
    deliveries: list[int] = []

    async def member(space_id: str, user_id: str, actor: str) -> int:
        if space_id == space:
            released.append((space_id, user_id, actor))
        return 1

    releases = d.AssigneeReleases(release_member=member, release_team=member, directory=directory)

    async def handler(delivery: Delivery) -> None:
        if wev.MemberRemoved.FromString(delivery.data).space_id == space:
            deliveries.append(delivery.num_delivered)
            workspace.down = len(deliveries) <= 12  # longer than the 10 deliveries releases used to get
        await releases(delivery)

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await provision(js, [contract.stream_spec(), dead_letter_stream(service)], [spec])
    runner = ConsumerRunner(js, spec, handler, service=service, message_type=None)
    await runner.start()
    try:
        removed = wev.MemberRemoved(meta=EventMeta(actor="user:owner"), space_id=space, user_id="u-gone")
        await js.publish(contract.MEMBER_REMOVED, removed.SerializeToString())
        deadline = time.monotonic() + 30
        while not released:
            assert time.monotonic() < deadline, f"not released after {len(deliveries)} deliveries"
            await asyncio.sleep(0.05)
        assert released == [(space, "u-gone", "user:owner")]
        assert deliveries[-1] == 13
        dead = await js.stream_info(dead_letter_stream(service).name)
        assert dead.state.messages == 0
    finally:
        await runner.stop()
        await directory.close()
        await server.stop(None)
        await nc.close()
