"""Viber channels through ChannelService over gRPC: get_account_info and set_webhook at connect, refused tokens,
credential shapes, update, and the webhook removed at disconnect."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from parley.channel_gateway.v1 import channel_service_pb2 as pb
from parley.channel_gateway.v1 import channel_service_pb2_grpc as pb_grpc
from parley.common.v1 import common_pb2
from parley_channel_gateway.app import build_serve
from parley_kit import db
from parley_kit.testing.service import running
from sqlalchemy import text

TOKEN = "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f"


@pytest.fixture(scope="module")
async def target(migrated: str, make_settings: Callable[..., Any]) -> AsyncIterator[str]:
    runtime = await build_serve(make_settings())
    async with running(runtime) as address:
        yield address


@pytest.fixture
def call(target: str, mint_token: Callable[..., str], fake_provider: Any) -> Callable[..., Any]:
    fake_provider.reset()

    async def rpc(method: str, request: Any, *, space: str, role: str = "manager") -> Any:
        token = mint_token(space_id=space, role=role, subject="user:u1")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.ChannelServiceStub(channel)
            return await getattr(stub, method)(request, metadata=[("authorization", f"Bearer {token}")])

    return rpc


def new_account(fake: Any, name: str = "Kyiv Flowers") -> str:
    """The next get_account_info answers a fresh account id."""
    account = f"pa:{uuid.uuid4().int % 10**19}"
    fake.script("/viber/get_account_info", (200, {"status": 0, "status_message": "ok", "id": account, "name": name}))
    return account


def space() -> str:
    return f"space-{uuid.uuid4().hex[:8]}"


def connect(token: str = TOKEN, name: str = "") -> pb.ConnectChannelRequest:
    return pb.ConnectChannelRequest(viber=pb.ViberCredentials(auth_token=token), name=name)


async def test_connect_checks_the_token_then_registers_the_webhook(
    call: Any, fake_provider: Any, migrated: str
) -> None:
    account, s = new_account(fake_provider), space()
    channel = (await call("ConnectChannel", connect(), space=s)).channel
    assert channel.type == common_pb2.CHANNEL_TYPE_VIBER and channel.external_id == account
    assert (channel.name, channel.account_detail) == ("Kyiv Flowers", "Kyiv Flowers")
    assert channel.inbound_webhook_url == f"https://gateway.test/webhooks/viber/{channel.channel_id}"
    assert channel.credential_hint == "…c51f" and TOKEN not in str(channel)
    info, hook = fake_provider.received("/viber/")
    assert [info.path, hook.path] == ["/viber/get_account_info", "/viber/set_webhook"]
    assert info.headers["X-Viber-Auth-Token"] == hook.headers["X-Viber-Auth-Token"] == TOKEN
    assert hook.json == {
        "url": channel.inbound_webhook_url,
        "event_types": ["delivered", "seen", "failed", "subscribed", "unsubscribed", "conversation_started"],
        "send_name": True,
        "send_photo": True,
    }
    listed = await call("ListChannels", pb.ListChannelsRequest(type=common_pb2.CHANNEL_TYPE_VIBER), space=s)
    assert [c.channel_id for c in listed.channels] == [channel.channel_id]
    engine = db.create_engine(migrated, pool_size=1)
    try:
        async with engine.connect() as conn:
            query = text("SELECT secrets FROM channels WHERE id = :i")
            row = (await conn.execute(query, {"i": channel.channel_id})).one()
    finally:
        await engine.dispose()
    assert TOKEN.encode() not in bytes(row.secrets) and bytes(row.secrets).startswith(b"gAAAA")


async def test_the_same_account_in_another_space_is_already_exists(call: Any, fake_provider: Any) -> None:
    account = new_account(fake_provider)
    await call("ConnectChannel", connect(name="Shop"), space=space())
    fake_provider.script("/viber/get_account_info", (200, {"status": 0, "id": account, "name": "Kyiv Flowers"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call("ConnectChannel", connect(), space=space())
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "Viber bot" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("method", "answer", "code"),
    [
        ("get_account_info", (200, {"status": 2, "status_message": "invalidAuthToken"}), "INVALID_ARGUMENT"),
        ("set_webhook", (200, {"status": 1, "status_message": "Invalid URL"}), "INVALID_ARGUMENT"),
        ("get_account_info", (503, {}), "UNAVAILABLE"),
    ],
)
async def test_a_token_or_url_viber_refuses_stores_nothing(
    call: Any, fake_provider: Any, method: str, answer: tuple[int, Any], code: str
) -> None:
    if method == "set_webhook":
        new_account(fake_provider)
    fake_provider.script(f"/viber/{method}", answer)
    s = space()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call("ConnectChannel", connect(), space=s)
    assert err.value.code() == getattr(grpc.StatusCode, code)
    listed = await call("ListChannels", pb.ListChannelsRequest(include_disconnected=True), space=s)
    assert len(listed.channels) == 0


@pytest.mark.parametrize("token", ["", "short", "has spaces in it 0123456789", "x" * 129])
async def test_a_malformed_auth_token_is_invalid_argument_naming_the_field(call: Any, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call("ConnectChannel", connect(token), space=space())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "viber.auth_token" in (err.value.details() or "")


async def test_update_takes_a_new_token_only_for_the_same_account_and_registers_again(
    call: Any, fake_provider: Any
) -> None:
    account, s = new_account(fake_provider), space()
    channel = (await call("ConnectChannel", connect(), space=s)).channel
    fake_provider.reset()
    fake_provider.script("/viber/get_account_info", (200, {"status": 0, "id": account, "name": "Kyiv Flowers 2"}))
    rotated = "9999b6ac12345678-e02c5f12174805f9-daec9cbb5448ABCD"
    request = pb.UpdateChannelRequest(channel_id=channel.channel_id, viber=pb.ViberCredentials(auth_token=rotated))
    updated = (await call("UpdateChannel", request, space=s)).channel
    assert updated.credential_hint == "…ABCD" and updated.account_detail == "Kyiv Flowers 2"
    assert [r.headers["X-Viber-Auth-Token"] for r in fake_provider.received("/viber/set_webhook")] == [rotated]
    new_account(fake_provider)  # the token of another bot
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call("UpdateChannel", request, space=s)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "account" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call("UpdateChannel", pb.UpdateChannelRequest(channel_id=channel.channel_id, rotate_secret=True), space=s)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_disconnect_removes_the_webhook_and_frees_the_account(call: Any, fake_provider: Any) -> None:
    account, s = new_account(fake_provider), space()
    channel = (await call("ConnectChannel", connect(), space=s)).channel
    fake_provider.reset()
    gone = await call("DisconnectChannel", pb.DisconnectChannelRequest(channel_id=channel.channel_id), space=s)
    assert gone.channel.status == pb.CHANNEL_STATUS_DISCONNECTED
    [removed] = fake_provider.received("/viber/set_webhook")
    assert removed.json == {"url": ""} and removed.headers["X-Viber-Auth-Token"] == TOKEN
    fake_provider.script("/viber/get_account_info", (200, {"status": 0, "id": account, "name": "Kyiv Flowers"}))
    again = (await call("ConnectChannel", connect(), space=space())).channel
    assert again.external_id == account and again.channel_id != channel.channel_id
