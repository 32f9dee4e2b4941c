"""ChannelService over gRPC with the real runtime: connect per type, shapes, duplicates, permissions,
pagination, update, disconnect, health, and secrets encrypted at rest."""

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

BOT_TOKEN = "555666777:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQrr"


@pytest.fixture(scope="module")
async def target(migrated: str, make_settings: Callable[..., Any]) -> AsyncIterator[str]:
    runtime = await build_serve(make_settings())
    async with running(runtime) as address:
        yield address


class Client:
    def __init__(self, address: str, mint_token: Callable[..., str]) -> None:
        self.address = address
        self.mint_token = mint_token

    async def call(self, method: str, request: Any, *, space: str, role: str = "manager") -> Any:
        token = self.mint_token(space_id=space, role=role, subject="user:u1")
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.ChannelServiceStub(channel)
            return await getattr(stub, method)(request, metadata=[("authorization", f"Bearer {token}")])


@pytest.fixture
def client(target: str, mint_token: Callable[..., str]) -> Client:
    return Client(target, mint_token)


def page_id() -> str:
    return str(uuid.uuid4().int)[:15]


def space() -> str:
    return f"space-{uuid.uuid4().hex[:8]}"


async def connect_messenger(client: Client, space_id: str, page: str | None = None) -> pb.ConnectChannelResponse:
    creds = pb.MessengerCredentials(page_id=page or page_id(), page_access_token="EAAGsecretpagetoken0123456789WXYZ")
    return await client.call("ConnectChannel", pb.ConnectChannelRequest(messenger=creds, name="Shop"), space=space_id)


async def test_connect_messenger_returns_the_channel_without_its_token(client: Client) -> None:
    s = space()
    page = page_id()
    reply = await connect_messenger(client, s, page)
    channel = reply.channel
    assert channel.space_id == s and channel.external_id == page and channel.name == "Shop"
    assert channel.type == common_pb2.CHANNEL_TYPE_MESSENGER and channel.status == pb.CHANNEL_STATUS_ACTIVE
    assert channel.credential_hint == "…WXYZ" and "secretpagetoken" not in str(reply)
    assert channel.inbound_webhook_url == "https://gateway.test/webhooks/messenger"
    assert reply.webhook_secret == ""


async def test_every_channel_type_connects_with_valid_credentials(client: Client, fake_provider: Any) -> None:
    s = space()
    requests = [
        pb.ConnectChannelRequest(
            instagram=pb.InstagramCredentials(ig_account_id=page_id(), access_token="IGQVJtoken0123456789abcdef")
        ),
        pb.ConnectChannelRequest(
            whatsapp=pb.WhatsAppCredentials(
                phone_number_id=page_id(), waba_id="10203040", access_token="EAAGwhatsapptoken0123456789"
            )
        ),
        pb.ConnectChannelRequest(custom=pb.CustomChannelConfig(outbound_webhook_url="https://app.example.com/parley")),
    ]
    replies = [await client.call("ConnectChannel", r, space=s) for r in requests]
    assert [r.channel.type for r in replies] == [
        common_pb2.CHANNEL_TYPE_INSTAGRAM,
        common_pb2.CHANNEL_TYPE_WHATSAPP,
        common_pb2.CHANNEL_TYPE_CUSTOM,
    ]
    assert replies[1].channel.account_detail == "10203040"
    custom = replies[2]
    assert len(custom.webhook_secret) >= 32
    assert custom.channel.inbound_webhook_url == f"https://gateway.test/webhooks/custom/{custom.channel.channel_id}"
    got = await client.call("GetChannel", pb.GetChannelRequest(channel_id=custom.channel.channel_id), space=s)
    assert custom.webhook_secret not in str(got)


async def test_connecting_telegram_registers_the_webhook_with_a_secret_token(
    client: Client, fake_provider: Any
) -> None:
    fake_provider.reset()
    reply = await client.call(
        "ConnectChannel", pb.ConnectChannelRequest(telegram=pb.TelegramCredentials(bot_token=BOT_TOKEN)), space=space()
    )
    channel = reply.channel
    assert channel.external_id == "555666777" and channel.account_detail == "@parley_test_bot"
    calls = fake_provider.received(f"/telegram/bot{BOT_TOKEN}/")
    assert [c.path.rsplit("/", 1)[-1] for c in calls] == ["getMe", "setWebhook"]
    registered = calls[1].json
    assert registered["url"] == f"https://gateway.test/webhooks/telegram/{channel.channel_id}"
    assert 32 <= len(registered["secret_token"]) <= 256
    assert set(registered["allowed_updates"]) >= {"message", "callback_query"}


async def test_a_bot_token_telegram_refuses_is_invalid_and_nothing_is_stored(
    client: Client, fake_provider: Any
) -> None:
    token = "444555666:ZZbbCCddEEffGGhhIIjjKKllMMnnOOppQQrr"
    fake_provider.script(f"bot{token}/getMe", (401, {"ok": False, "error_code": 401, "description": "Unauthorized"}))
    s = space()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.call(
            "ConnectChannel", pb.ConnectChannelRequest(telegram=pb.TelegramCredentials(bot_token=token)), space=s
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unauthorized" in (err.value.details() or "")
    listed = await client.call("ListChannels", pb.ListChannelsRequest(include_disconnected=True), space=s)
    assert len(listed.channels) == 0


BAD = [
    pb.ConnectChannelRequest(
        messenger=pb.MessengerCredentials(page_id="not-a-number", page_access_token="EAAG0123456789012345678")
    ),
    pb.ConnectChannelRequest(messenger=pb.MessengerCredentials(page_id="123", page_access_token="short")),
    pb.ConnectChannelRequest(
        instagram=pb.InstagramCredentials(ig_account_id="123", access_token="has spaces in it 0123456789")
    ),
    pb.ConnectChannelRequest(
        whatsapp=pb.WhatsAppCredentials(phone_number_id="123", access_token="EAAG0123456789012345678")
    ),
    pb.ConnectChannelRequest(telegram=pb.TelegramCredentials(bot_token="123:short")),
    pb.ConnectChannelRequest(custom=pb.CustomChannelConfig(outbound_webhook_url="ftp://example.com/x")),
    pb.ConnectChannelRequest(custom=pb.CustomChannelConfig(outbound_webhook_url="https://user:pw@example.com/x")),
    pb.ConnectChannelRequest(name="nothing"),
]


@pytest.mark.parametrize("request_", BAD, ids=[str(i) for i in range(len(BAD))])
async def test_credentials_of_the_wrong_shape_are_invalid_argument(client: Client, request_: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.call("ConnectChannel", request_, space=space())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details()


async def test_a_page_connected_in_any_space_is_already_exists(client: Client) -> None:
    page = page_id()
    await connect_messenger(client, space(), page)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await connect_messenger(client, space(), page)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert page in (err.value.details() or "")


async def test_agents_read_channels_but_only_managers_change_them(client: Client) -> None:
    s = space()
    channel = (await connect_messenger(client, s)).channel
    got = await client.call("GetChannel", pb.GetChannelRequest(channel_id=channel.channel_id), space=s, role="agent")
    assert got.channel.channel_id == channel.channel_id
    await client.call(
        "GetChannelHealth", pb.GetChannelHealthRequest(channel_id=channel.channel_id), space=s, role="agent"
    )
    for method, request in [
        (
            "ConnectChannel",
            pb.ConnectChannelRequest(custom=pb.CustomChannelConfig(outbound_webhook_url="https://a.example/x")),
        ),
        ("DisconnectChannel", pb.DisconnectChannelRequest(channel_id=channel.channel_id)),
        ("UpdateChannel", pb.UpdateChannelRequest(channel_id=channel.channel_id, name="x")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call(method, request, space=s, role="agent")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method


async def test_another_spaces_channel_is_not_found(client: Client) -> None:
    channel = (await connect_messenger(client, space())).channel
    for method, request in [
        ("GetChannel", pb.GetChannelRequest(channel_id=channel.channel_id)),
        ("GetChannelHealth", pb.GetChannelHealthRequest(channel_id=channel.channel_id)),
        ("DisconnectChannel", pb.DisconnectChannelRequest(channel_id=channel.channel_id)),
        ("UpdateChannel", pb.UpdateChannelRequest(channel_id=channel.channel_id, name="mine now")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call(method, request, space=space())
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, method


async def test_list_pages_through_channels_in_creation_order(client: Client) -> None:
    s = space()
    created = [(await connect_messenger(client, s)).channel.channel_id for _ in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        reply = await client.call(
            "ListChannels", pb.ListChannelsRequest(page=common_pb2.PageRequest(page_size=2, page_token=token)), space=s
        )
        assert reply.page.total_count == 5
        seen += [c.channel_id for c in reply.channels]
        token = reply.page.next_page_token
        if not token:
            break
    assert seen == created
    for bad in [common_pb2.PageRequest(page_size=1000), common_pb2.PageRequest(page_token="garbage!!")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call("ListChannels", pb.ListChannelsRequest(page=bad), space=s)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    only_custom = await client.call(
        "ListChannels", pb.ListChannelsRequest(type=common_pb2.CHANNEL_TYPE_CUSTOM), space=s
    )
    assert len(only_custom.channels) == 0


async def test_update_renames_rotates_and_guards_the_account(client: Client) -> None:
    s = space()
    reply = await client.call(
        "ConnectChannel",
        pb.ConnectChannelRequest(custom=pb.CustomChannelConfig(outbound_webhook_url="https://a.example/1")),
        space=s,
    )
    channel_id = reply.channel.channel_id
    updated = await client.call(
        "UpdateChannel",
        pb.UpdateChannelRequest(
            channel_id=channel_id,
            name="Website",
            custom=pb.CustomChannelConfig(outbound_webhook_url="https://a.example/2"),
            rotate_secret=True,
        ),
        space=s,
    )
    assert updated.channel.name == "Website" and updated.channel.outbound_webhook_url == "https://a.example/2"
    assert updated.webhook_secret and updated.webhook_secret != reply.webhook_secret
    messenger = (await connect_messenger(client, s)).channel
    for request in [
        pb.UpdateChannelRequest(channel_id=messenger.channel_id, rotate_secret=True),
        pb.UpdateChannelRequest(
            channel_id=messenger.channel_id,
            messenger=pb.MessengerCredentials(page_id="42", page_access_token="EAAGanotherpagetoken012345"),
        ),
        pb.UpdateChannelRequest(
            channel_id=messenger.channel_id,
            instagram=pb.InstagramCredentials(
                ig_account_id=messenger.external_id, access_token="EAAGanotherpagetoken012345"
            ),
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call("UpdateChannel", request, space=s)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    new_token = await client.call(
        "UpdateChannel",
        pb.UpdateChannelRequest(
            channel_id=messenger.channel_id,
            messenger=pb.MessengerCredentials(
                page_id=messenger.external_id, page_access_token="EAAGrotatedtoken0123456789NEW1"
            ),
        ),
        space=s,
    )
    assert new_token.channel.credential_hint == "…NEW1"


async def test_disconnect_frees_the_account_for_another_connection(client: Client) -> None:
    s = space()
    page = page_id()
    channel = (await connect_messenger(client, s, page)).channel
    gone = await client.call("DisconnectChannel", pb.DisconnectChannelRequest(channel_id=channel.channel_id), space=s)
    assert gone.channel.status == pb.CHANNEL_STATUS_DISCONNECTED and gone.channel.HasField("disconnected_at")
    again = await client.call("DisconnectChannel", pb.DisconnectChannelRequest(channel_id=channel.channel_id), space=s)
    assert again.channel.status == pb.CHANNEL_STATUS_DISCONNECTED
    listed = await client.call("ListChannels", pb.ListChannelsRequest(), space=s)
    assert channel.channel_id not in [c.channel_id for c in listed.channels]
    reconnected = await connect_messenger(client, space(), page)
    assert reconnected.channel.channel_id != channel.channel_id
    health = await client.call("GetChannelHealth", pb.GetChannelHealthRequest(channel_id=channel.channel_id), space=s)
    assert health.status == pb.CHANNEL_STATUS_DISCONNECTED


async def test_channel_secrets_are_encrypted_at_rest(client: Client, migrated: str) -> None:
    s = space()
    await connect_messenger(client, s)
    engine = db.create_engine(migrated, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT secrets FROM channels WHERE space_id = :s"), {"s": s})).all()
    finally:
        await engine.dispose()
    assert rows and all(b"secretpagetoken" not in bytes(r.secrets) for r in rows)
    assert all(bytes(r.secrets).startswith(b"gAAAA") for r in rows)  # Fernet tokens
