"""Provisioning is declarative: streams and consumers are created, then brought to their declared config."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from parley_kit.nats import (
    ConsumerSpec,
    ProvisioningError,
    StreamSpec,
    dead_letter_stream,
    dead_letter_subject,
    provision,
)


@pytest.fixture(scope="module")
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.drain()


def _specs(unique_name: str) -> tuple[str, StreamSpec, ConsumerSpec]:
    service = f"prov{unique_name.lower()}"
    stream = StreamSpec(name=service.upper(), subjects=(f"{service}.contact.>",), max_age=timedelta(days=7))
    durable = f"{service}--projection"
    consumer = ConsumerSpec(
        stream=stream.name,
        durable=durable,
        filter_subjects=(f"{service}.contact.created",),
        ack_wait=timedelta(seconds=30),
        max_deliver=5,
        backoff=(timedelta(seconds=1), timedelta(seconds=10)),
        max_ack_pending=10,
        dead_letter_subject=dead_letter_subject(service, durable),
    )
    return service, stream, consumer


async def test_provision_creates_then_updates_changed_stream_and_consumer_in_place(
    js: JetStreamContext, unique_name: str
) -> None:
    service, stream, consumer = _specs(unique_name)
    await provision(js, [stream], [consumer])
    created = await js.consumer_info(stream.name, consumer.durable)
    assert created.config.max_ack_pending == 10
    assert created.config.ack_wait == 30
    assert created.config.max_deliver == -1  # enforced by the runner, which dead-letters instead of dropping
    assert not created.config.backoff
    assert created.config.metadata["parley.max_deliver"] == "5"
    assert created.config.metadata["parley.backoff"] == "1s,10s"
    await js.publish(f"{service}.contact.created", b"pending across the update")

    wider = dataclasses.replace(stream, subjects=(*stream.subjects, f"{service}.tag.>"), max_age=timedelta(days=1))
    changed = dataclasses.replace(
        consumer,
        max_ack_pending=20,
        ack_wait=timedelta(seconds=45),
        filter_subjects=(f"{service}.contact.created", f"{service}.tag.added"),
    )
    await provision(js, [wider], [changed])

    stream_config = (await js.stream_info(stream.name)).config
    assert set(stream_config.subjects or ()) == set(wider.subjects)
    assert stream_config.max_age == timedelta(days=1).total_seconds()
    updated = await js.consumer_info(stream.name, consumer.durable)
    assert updated.config.max_ack_pending == 20
    assert updated.config.ack_wait == 45
    assert set(updated.config.filter_subjects or ()) == set(changed.filter_subjects)
    assert updated.created == created.created  # updated, not deleted and re-created
    assert updated.num_pending == 1


async def test_provision_refuses_an_immutable_consumer_change_with_a_clear_error(
    js: JetStreamContext, unique_name: str
) -> None:
    _, stream, consumer = _specs(unique_name)
    await provision(js, [stream], [consumer])
    with pytest.raises(ProvisioningError, match=f"update consumer {stream.name}/{consumer.durable}"):
        await provision(js, [], [dataclasses.replace(consumer, deliver_policy=DeliverPolicy.NEW)])


async def test_dead_letter_stream_coexists_with_a_stream_claiming_all_service_subjects(
    js: JetStreamContext, unique_name: str
) -> None:
    service = f"dl{unique_name.lower()}"
    own = StreamSpec(name=service.upper(), subjects=(f"{service}.>",), max_age=None)
    dead_letters = dead_letter_stream(service)
    await provision(js, [own, dead_letters], [])
    ack = await js.publish(dead_letter_subject(service, f"{service}--inbound"), b"x")
    assert ack.stream == dead_letters.name == f"{service.upper()}_DEAD_LETTER"


@pytest.mark.parametrize(
    "change",
    [{"max_deliver": 0}, {"ack_wait": timedelta(0)}, {"backoff": (timedelta(0),)}, {"durable": "a.b"}],
)
def test_consumer_spec_rejects_unusable_values(unique_name: str, change: dict[str, object]) -> None:
    *_, consumer = _specs(unique_name)
    with pytest.raises(ValueError):
        dataclasses.replace(consumer, **change)
