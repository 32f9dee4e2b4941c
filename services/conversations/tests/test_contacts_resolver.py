"""ContactsResolver: one UpsertByIdentities call per chunk of a batch's identities, refusals and failures per
identity, a call failing as a whole as TransientError (against the contacts test double)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from parley_conversations.domain import InboundItem, InboundKind, Receipt
from parley_conversations.ingest import ContactsResolver
from parley_kit.nats import TransientError

AT = datetime(2026, 11, 25, 12, tzinfo=UTC)


def _item(space: str, external_id: str, kind: InboundKind = InboundKind.MESSAGE, minutes: int = 0) -> InboundItem:
    return InboundItem(
        event_id=uuid.uuid4().hex,
        space_id=space,
        channel_id="ch-1",
        channel_type="messenger",
        kind=kind,
        contact_external_id=external_id,
        occurred_at=AT + timedelta(minutes=minutes),
        receipt=Receipt("read") if kind is InboundKind.READ else None,
    )


@pytest.fixture
async def resolver(fake_contacts):
    fake, target = fake_contacts
    channel = grpc.aio.insecure_channel(target)
    yield fake, ContactsResolver(channel, chunk=2)
    fake.fail_with, fake.refuse, fake.fail_items = None, set(), {}
    await channel.close()


async def test_a_batch_is_one_call_per_chunk_with_each_identitys_latest_interaction(resolver) -> None:
    fake, contacts = resolver
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    items = [_item(sp, f"p{i}") for i in range(5)] + [_item(sp, "p0", minutes=5), _item(sp, "p9", InboundKind.READ)]
    before = fake.batches
    got = await contacts.resolve(items)
    assert fake.batches - before == 3 and got.refused == {} and got.failed == {}
    assert set(got.ids) == {(sp, "ch-1", f"p{i}") for i in range(5)}
    asked = [c for c in fake.calls if c.space_id == sp]
    assert sorted(c.external_id for c in asked) == [f"p{i}" for i in range(5)]
    (p0,) = [c for c in asked if c.external_id == "p0"]
    assert p0.interaction_at.ToDatetime(tzinfo=UTC) == AT + timedelta(minutes=5)
    assert got.reported[(sp, "ch-1", "p0")] == AT + timedelta(minutes=5)


async def test_a_refused_identity_is_reported_and_the_others_resolved(resolver) -> None:
    fake, contacts = resolver
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    fake.refuse = {"bad"}
    got = await contacts.resolve([_item(sp, "good"), _item(sp, "bad"), _item(sp, "fine")])
    assert set(got.ids) == {(sp, "ch-1", "good"), (sp, "ch-1", "fine")} and got.failed == {}
    assert list(got.refused) == [(sp, "ch-1", "bad")] and "INVALID_ARGUMENT" in got.refused[(sp, "ch-1", "bad")]


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS])
async def test_an_identity_contacts_fails_on_its_own_is_reported_and_the_others_resolved(resolver, code) -> None:
    fake, contacts = resolver
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    fake.fail_items = {"broken": code}
    got = await contacts.resolve([_item(sp, "good"), _item(sp, "broken"), _item(sp, "fine")])
    assert set(got.ids) == {(sp, "ch-1", "good"), (sp, "ch-1", "fine")} and got.refused == {} and got.transient == {}
    assert list(got.failed) == [(sp, "ch-1", "broken")]
    assert (
        got.failed[(sp, "ch-1", "broken")]
        == f"contacts failed the identity: {code.name}: the double failed this identity"
    )
    assert (sp, "ch-1", "broken") not in got.reported


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
async def test_an_identity_contacts_could_not_resolve_for_a_passing_reason_is_transient_not_failed(
    resolver, code
) -> None:
    fake, contacts = resolver
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    fake.fail_items = {"busy": code}
    got = await contacts.resolve([_item(sp, "good"), _item(sp, "busy")])
    assert set(got.ids) == {(sp, "ch-1", "good")} and got.refused == {} and got.failed == {}
    assert got.transient == {
        (
            sp,
            "ch-1",
            "busy",
        ): f"contacts could not resolve the identity now: {code.name}: the double failed this identity"
    }


async def test_transport_failure_raises_transient_and_a_refused_call_refuses_its_identities(resolver) -> None:
    fake, contacts = resolver
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    fake.fail_with = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(TransientError, match="UNAVAILABLE"):
        await contacts.resolve([_item(sp, "a")])
    fake.fail_with = grpc.StatusCode.INVALID_ARGUMENT
    got = await contacts.resolve([_item(sp, "a"), _item(sp, "b")])
    assert got.ids == {} and set(got.refused) == {(sp, "ch-1", "a"), (sp, "ch-1", "b")}
