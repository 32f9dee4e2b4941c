"""Assignees are real members and teams of the space (asked of the real workspace service), and stay so:
a member who leaves the space and a deleted team are released from their contacts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import nats
import pytest
from opentelemetry.context import Context
from parley.contacts.v1 import contact_pb2, events_pb2
from parley.contacts.v1 import contacts_service_pb2 as pb
from parley.contacts.v1 import contacts_service_pb2_grpc as pb_grpc
from parley.workspace.v1 import events_pb2 as workspace_events
from parley_contacts.config import Settings
from parley_contacts.models import outbox
from parley_contacts.repository import Repository
from parley_contacts.server import build
from parley_contacts.service import Actor, ContactsService
from parley_kit.auth import SigningKey, jwks
from parley_kit.contracts import workspace as workspace_contract
from parley_kit.db import session_factory
from parley_kit.directory import AssigneeReleases, WorkspaceDirectory
from parley_kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from parley_kit.grpc_client import create_channel
from parley_kit.local.servers import free_port
from parley_kit.nats import Delivery
from parley_kit.testing.processes import WorkspaceAdmin, WorkspaceProcess
from parley_kit.testing.service import running
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from .conftest import RecordingSink

AGENT = Actor(subject="user:agent1", user_id="agent1")


async def assignees(service: ContactsService, space: str, ids: list[uuid.UUID]) -> list[tuple[Any, Any]]:
    out = []
    for contact_id in ids:
        contact, _ = await service.get_contact(space, str(contact_id))
        out.append((contact.assignee_user_id, contact.assignee_team_id))
    return out


# -- the check, at the service -----------------------------------------------------------------------


async def test_members_and_teams_of_the_space_are_assigned(
    service: ContactsService, space: str, admin: WorkspaceAdmin
) -> None:
    user, team = await admin.member(space), await admin.team(space)
    c = await service.create_contact(space, AGENT, {})
    assert await service.assign(space, AGENT, [str(c.id)], user, team) == 1
    assert await assignees(service, space, [c.id]) == [(user, team)]


async def test_strangers_typos_and_other_spaces_ids_are_not_found_and_change_nothing(
    service: ContactsService, space: str, admin: WorkspaceAdmin, sink: RecordingSink
) -> None:
    user, team = await admin.member(space), await admin.team(space)
    other = await admin.space()
    outsider, foreign_team = await admin.member(other), await admin.team(other)
    c = await service.create_contact(space, AGENT, {})
    await service.assign(space, AGENT, [str(c.id)], user, team)
    before = len(sink.of("contact.assigned", space))
    for user_id, team_id, message in [
        ("u-typo", "", "user 'u-typo' is not a member of this space"),
        (outsider, "", f"user '{outsider}' is not a member of this space"),
        ("", "t-typo", "team 't-typo' is not a team of this space"),
        (user, foreign_team, f"team '{foreign_team}' is not a team of this space"),
    ]:
        with pytest.raises(NotFound) as info:
            await service.assign(space, AGENT, [str(c.id)], user_id, team_id)
        assert message in info.value.message
    assert await assignees(service, space, [c.id]) == [(user, team)]
    assert len(sink.of("contact.assigned", space)) == before


async def test_an_id_longer_than_any_user_or_team_id_is_invalid_and_changes_nothing(
    service: ContactsService, space: str, sink: RecordingSink
) -> None:
    c = await service.create_contact(space, AGENT, {})
    for user_id, team_id, what in [("u" * 65, "", "user_id"), ("", "t" * 65, "team_id")]:
        with pytest.raises(InvalidArgument, match=f"{what} is longer than 64 characters"):
            await service.assign(space, AGENT, [str(c.id)], user_id, team_id)
    assert await assignees(service, space, [c.id]) == [(None, None)]
    assert sink.of("contact.assigned", space) == []


@pytest.fixture(scope="module")
async def down_directory(mint_token: Callable[..., str]) -> AsyncIterator[WorkspaceDirectory]:
    """A directory whose workspace is down (nothing listens on its port)."""
    token = mint_token(space_id="*", role="system", subject="service:contacts")
    found = WorkspaceDirectory.connect(f"127.0.0.1:{free_port()}", token, service="contacts", timeout=0.5)
    yield found
    await found.close()


async def test_a_workspace_that_cannot_answer_makes_assign_unavailable_and_changes_nothing(
    engine: AsyncEngine, sink: RecordingSink, down_directory: WorkspaceDirectory, space: str, admin: WorkspaceAdmin
) -> None:
    blind = ContactsService(Repository(session_factory(engine), sink), assignees=down_directory.require_assignee)
    user = await admin.member(space)
    c = await blind.create_contact(space, AGENT, {})
    with pytest.raises(Unavailable, match="nothing was changed"):
        await blind.assign(space, AGENT, [str(c.id)], user, "")
    assert await assignees(blind, space, [c.id]) == [(None, None)]
    assert sink.of("contact.assigned", space) == []


async def test_unassigning_needs_no_check(
    engine: AsyncEngine,
    sink: RecordingSink,
    service: ContactsService,
    down_directory: WorkspaceDirectory,
    space: str,
    admin: WorkspaceAdmin,
) -> None:
    c = await service.create_contact(space, AGENT, {})
    await service.assign(space, AGENT, [str(c.id)], await admin.member(space), "")
    blind = ContactsService(Repository(session_factory(engine), sink), assignees=down_directory.require_assignee)
    assert await blind.assign(space, AGENT, [str(c.id)], "", "") == 1
    assert await assignees(service, space, [c.id]) == [(None, None)]


async def test_a_service_without_a_directory_assigns_nothing(
    engine: AsyncEngine, sink: RecordingSink, space: str
) -> None:
    unwired = ContactsService(Repository(session_factory(engine), sink))
    c = await unwired.create_contact(space, AGENT, {})
    with pytest.raises(FailedPrecondition, match="no workspace directory"):
        await unwired.assign(space, AGENT, [str(c.id)], "u1", "")


# -- the running service: gRPC and the WORKSPACE consumer --------------------------------------------


@pytest.fixture(scope="module")
async def contacts(
    database_url: str,
    engine: AsyncEngine,
    nats_url: str,
    signing_key: SigningKey,
    mint_token: Callable[..., str],
    workspace_service: WorkspaceProcess,
) -> AsyncIterator[str]:
    """The contacts runtime as deployed: the real workspace's directory, its WORKSPACE consumer, releasing
    two contacts per transaction (so a release takes several)."""
    settings = Settings(
        database_url=database_url,
        nats_url=nats_url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        auth_jwks=json.dumps(jwks(signing_key)),
        workspace_addr=workspace_service.target,
        service_token=mint_token(space_id="*", role="system", subject="service:contacts", ttl=86_400),
        assignee_release_batch=2,
        shutdown_grace_seconds=2,
    )
    async with running(await build(settings)) as target:
        yield target


@pytest.fixture
def stub(contacts: str, mint_token: Callable[..., str]) -> Callable[..., Any]:
    def make(space: str, role: str = "agent", subject: str = "user:agent1") -> pb_grpc.ContactsServiceStub:
        token = mint_token(space_id=space, role=role, subject=subject)
        return pb_grpc.ContactsServiceStub(create_channel(contacts, token=token, max_attempts=2))

    return make


async def assigned_events(engine: AsyncEngine, contact_ids: set[str]) -> list[events_pb2.ContactAssigned]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(outbox.c.payload).where(outbox.c.subject == "contacts.contact.assigned").order_by(outbox.c.id)
        )
        found = [events_pb2.ContactAssigned.FromString(r.payload) for r in rows]
    return [e for e in found if e.contact_id in contact_ids]


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not released in time"
        await asyncio.sleep(0.1)


async def made(stub: Any, n: int) -> list[str]:
    return [(await stub.CreateContact(pb.CreateContactRequest())).contact.id for _ in range(n)]


async def assign(stub: Any, ids: list[str], user: str = "", team: str = "") -> int:
    request = pb.AssignContactsRequest(contact_ids=ids, assignee=contact_pb2.Assignee(user_id=user, team_id=team))
    return int((await stub.AssignContacts(request)).changed_count)


async def test_a_workflow_with_a_platform_token_is_checked_too(stub: Any, space: str, admin: WorkspaceAdmin) -> None:
    agent = stub(space)
    ids = await made(agent, 1)
    workflow = stub("*", role="system", subject="service:automation")
    bad = pb.AssignContactsRequest(space_id=space, contact_ids=ids, assignee=contact_pb2.Assignee(user_id="u-typo"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await workflow.AssignContacts(bad)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "user 'u-typo' is not a member of this space"
    good = pb.AssignContactsRequest(
        space_id=space, contact_ids=ids, assignee=contact_pb2.Assignee(user_id=await admin.member(space))
    )
    assert (await workflow.AssignContacts(good)).changed_count == 1


async def test_a_member_who_leaves_the_space_is_released_from_their_contacts_one_event_each(
    stub: Any, space: str, admin: WorkspaceAdmin, service: ContactsService, engine: AsyncEngine
) -> None:
    leaver, stayer, team = await admin.member(space), await admin.member(space), await admin.team(space)
    agent = stub(space)
    theirs, with_team, others = await made(agent, 4), await made(agent, 1), await made(agent, 2)
    await assign(agent, theirs, leaver)
    await assign(agent, with_team, leaver, team)
    await assign(agent, others, stayer)
    await admin.remove_member(space, leaver)

    async def released() -> bool:
        rows = await assignees(service, space, [uuid.UUID(i) for i in theirs + with_team])
        return rows == [(None, None)] * 4 + [(None, team)]

    await eventually(released)
    events = await assigned_events(engine, set(theirs + with_team))
    releases = [e for e in events if e.previous.user_id == leaver and not e.assignee.user_id]
    assert sorted(e.contact_id for e in releases) == sorted(theirs + with_team)  # one each (4 + 1: 3 batches)
    assert {e.contact_id: e.assignee.team_id for e in releases}[with_team[0]] == team
    assert all(e.meta.actor == "service:tests" for e in releases)  # who removed the member
    # a release names who left, so followers remove them only where they still hold; an assignment does not
    assert {(e.released.user_id, e.released.team_id) for e in releases} == {(leaver, "")}
    assert not any(e.HasField("released") for e in events if e not in releases)
    stayed = await assignees(service, space, [uuid.UUID(i) for i in others])
    assert stayed == [(stayer, None)] * 2
    with pytest.raises(grpc.aio.AioRpcError) as info:  # and they cannot be assigned again
        await assign(agent, others, leaver)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_deleted_team_is_released_from_its_contacts(
    stub: Any, space: str, admin: WorkspaceAdmin, service: ContactsService, engine: AsyncEngine
) -> None:
    user, team = await admin.member(space), await admin.team(space)
    agent = stub(space)
    team_only, with_user = await made(agent, 3), await made(agent, 1)
    await assign(agent, team_only, "", team)
    await assign(agent, with_user, user, team)
    await admin.delete_team(team)

    async def released() -> bool:
        rows = await assignees(service, space, [uuid.UUID(i) for i in team_only + with_user])
        return rows == [(None, None)] * 3 + [(user, None)]

    await eventually(released)
    events = await assigned_events(engine, set(team_only + with_user))
    releases = [e for e in events if e.previous.team_id == team and not e.assignee.team_id]
    assert sorted(e.contact_id for e in releases) == sorted(team_only + with_user)
    assert {(e.released.user_id, e.released.team_id) for e in releases} == {("", team)}


async def removal_delivery(nats_url: str, space: str, user: str) -> Delivery:
    """The MemberRemoved event of (space, user) as the workspace published it, as a redelivery."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(workspace_contract.MEMBER_REMOVED, ordered_consumer=True)
        while True:
            msg = await sub.next_msg(timeout=10)
            event = workspace_events.MemberRemoved.FromString(msg.data)
            if (event.space_id, event.user_id) == (space, user):
                return Delivery(None, msg.data, {}, msg.subject, "", "", 2, 0, Context())
    finally:
        await nc.close()


async def test_a_redelivered_removal_finds_nothing_left_and_a_readded_member_keeps_new_assignments(
    stub: Any,
    space: str,
    admin: WorkspaceAdmin,
    service: ContactsService,
    engine: AsyncEngine,
    directory: WorkspaceDirectory,
    nats_url: str,
) -> None:
    leaver = await admin.member(space)
    agent = stub(space)
    ids = await made(agent, 3)
    await assign(agent, ids, leaver)
    await admin.remove_member(space, leaver)
    await eventually(
        lambda: _all(assignees(service, space, [uuid.UUID(i) for i in ids]), (None, None))  # type: ignore[arg-type]
    )
    handler = AssigneeReleases(
        release_member=service.release_member, release_team=service.release_team, directory=directory
    )
    redelivery = await removal_delivery(nats_url, space, leaver)
    count = len(await assigned_events(engine, set(ids)))
    await handler(redelivery)
    assert len(await assigned_events(engine, set(ids))) == count  # nothing left to do, no event
    # Re-added and assigned again: an old removal (redelivered late) does not undo the new assignment.
    await admin.add_member(space, leaver)
    await assign(agent, ids[:1], leaver)
    await handler(redelivery)
    assert await assignees(service, space, [uuid.UUID(ids[0])]) == [(leaver, None)]


async def _all(rows: Any, value: tuple[Any, Any]) -> bool:
    return all(row == value for row in await rows)


def test_without_the_workspace_address_the_service_refuses_to_start(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_DATABASE_URL"] = database_url
    refused = subprocess.run(
        [sys.executable, "-m", "parley_contacts", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "PARLEY_ASSIGNEE_CHECK: Value error, set PARLEY_WORKSPACE_ADDR" in refused.stderr
