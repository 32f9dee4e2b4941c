"""ContactsResolver: one UpsertByIdentities call per chunk of a batch's identities, refusals per identity,
transport failures as TransientError (against the contacts test double)."""

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
    fake.fail_with, fake.refuse = None, set()
    await channel.close()


async def test_a_batch_is_one_call_per_chunk_with_each_identitys_latest_interaction(resolver) -> None:
    fake, contacts = resolver
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    items = [_item(sp, f"p{i}") for i in range(5)] + [_item(sp, "p0", minutes=5), _item(sp, "p9", InboundKind.READ)]
    before = fake.batches
    ids, refused, reported = await contacts.resolve(items)
    assert fake.batches - before == 3 and refused == {}
    assert set(ids) == {(sp, "ch-1", f"p{i}") for i in range(5)}
    asked = [c for c in fake.calls if c.space_id == sp]
    assert sorted(c.external_id for c in asked) == [f"p{i}" for i in range(5)]
    (p0,) = [c for c in asked if c.external_id == "p0"]
    assert p0.interaction_at.ToDatetime(tzinfo=UTC) == AT + timedelta(minutes=5)
    assert reported[(sp, "ch-1", "p0")] == AT + timedelta(minutes=5)


async def test_a_refused_identity_is_reported_and_the_others_resolved(resolver) -> None:
    fake, contacts = resolver
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    fake.refuse = {"bad"}
    ids, refused, _ = await contacts.resolve([_item(sp, "good"), _item(sp, "bad"), _item(sp, "fine")])
    assert set(ids) == {(sp, "ch-1", "good"), (sp, "ch-1", "fine")}
    assert list(refused) == [(sp, "ch-1", "bad")] and "INVALID_ARGUMENT" in refused[(sp, "ch-1", "bad")]


async def test_transport_failure_raises_transient_and_a_refused_call_refuses_its_identities(resolver) -> None:
    fake, contacts = resolver
    sp = f"sp-{uuid.uuid4().hex[:8]}"
    fake.fail_with = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(TransientError, match="UNAVAILABLE"):
        await contacts.resolve([_item(sp, "a")])
    fake.fail_with = grpc.StatusCode.INVALID_ARGUMENT
    ids, refused, _ = await contacts.resolve([_item(sp, "a"), _item(sp, "b")])
    assert ids == {} and set(refused) == {(sp, "ch-1", "a"), (sp, "ch-1", "b")}
