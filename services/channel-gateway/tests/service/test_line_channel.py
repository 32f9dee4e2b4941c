"""The LINE channel against a fake LINE API: connect over gRPC (bot info, webhook URL, shapes, refusals, update,
disconnect) and the outbound worker (push body, retry key, retries, 409, permanent errors, the crash window)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import nats
import pytest
from parley.channel_gateway.v1 import channel_service_pb2 as pb
from parley.channel_gateway.v1 import channel_service_pb2_grpc as pb_grpc
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1 import common_pb2
from parley_channel_gateway.app import build_serve, build_worker
from parley_channel_gateway.outbound_line import retry_key
from parley_kit import db
from parley_kit.contracts import channel_gateway as contract
from parley_kit.testing.service import running
from sqlalchemy import text

SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
TOKEN = "Xq1lineChannelAccessToken+abc/def=="
USER = "U9f8e7d6c5b4a39281706f5e4d3c2b1a0"


@pytest.fixture(autouse=True)
def clean_fake(fake_provider: Any) -> None:
    fake_provider.reset()


def space() -> str:
    return f"space-{uuid.uuid4().hex[:8]}"


def bot_id() -> str:
    return f"U{uuid.uuid4().hex}"


def line(secret: str = SECRET, token: str = TOKEN) -> pb.LineCredentials:
    return pb.LineCredentials(channel_secret=secret, channel_access_token=token)


# -- connect, update, disconnect over gRPC -------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def target(migrated: str, make_settings: Callable[..., Any]) -> AsyncIterator[str]:
    async with running(await build_serve(make_settings())) as address:
        yield address


@pytest.fixture
def call(target: str, mint_token: Callable[..., str]) -> Callable[..., Any]:
    async def invoke(method: str, request: Any, *, space: str) -> Any:
        token = mint_token(space_id=space, role="manager", subject="user:u1")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.ChannelServiceStub(channel)
            return await getattr(stub, method)(request, metadata=[("authorization", f"Bearer {token}")])

    return invoke


async def refused(call: Callable[..., Any], method: str, request: Any, s: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(method, request, space=s)
    return err.value


async def test_connect_reads_the_bot_and_points_its_webhook_at_the_channel(
    call: Callable[..., Any], fake_provider: Any, migrated: str
) -> None:
    bot = bot_id()
    fake_provider.script("/line/v2/bot/info$", (200, {"userId": bot, "basicId": "@725abcde", "displayName": "Shop"}))
    s = space()
    channel = (await call("ConnectChannel", pb.ConnectChannelRequest(line=line(), name="LINE shop"), space=s)).channel
    assert channel.type == common_pb2.CHANNEL_TYPE_LINE and channel.external_id == bot
    assert channel.account_detail == "@725abcde" and channel.credential_hint == "…ef=="
    assert channel.inbound_webhook_url == f"https://gateway.test/webhooks/line/{channel.channel_id}"
    info, endpoint = fake_provider.received("/line/")
    assert (info.method, info.path, info.headers["Authorization"]) == ("GET", "/line/v2/bot/info", f"Bearer {TOKEN}")
    assert (endpoint.method, endpoint.path) == ("PUT", "/line/v2/bot/channel/webhook/endpoint")
    assert endpoint.json == {"endpoint": channel.inbound_webhook_url}
    listed = await call("ListChannels", pb.ListChannelsRequest(type=common_pb2.CHANNEL_TYPE_LINE), space=s)
    assert [c.channel_id for c in listed.channels] == [channel.channel_id]
    engine = db.create_engine(migrated, pool_size=1)
    try:
        async with engine.connect() as conn:
            [row] = (await conn.execute(text("SELECT secrets FROM channels WHERE space_id = :s"), {"s": s})).all()
    finally:
        await engine.dispose()
    assert SECRET.encode() not in bytes(row.secrets) and TOKEN.encode() not in bytes(row.secrets)


async def test_the_same_bot_in_another_space_is_already_exists(call: Callable[..., Any], fake_provider: Any) -> None:
    bot = bot_id()
    fake_provider.script("/line/v2/bot/info$", (200, {"userId": bot}), (200, {"userId": bot}))
    await call("ConnectChannel", pb.ConnectChannelRequest(line=line()), space=space())
    err = await refused(call, "ConnectChannel", pb.ConnectChannelRequest(line=line()), space())
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("path", "answer", "says"),
    [
        ("/line/v2/bot/info$", (401, {"message": "Authentication failed. Confirm that the access token..."}), "token"),
        ("/webhook/endpoint$", (400, {"message": "Invalid webhook endpoint URL"}), "webhook URL"),
    ],
)
async def test_credentials_or_a_url_line_refuses_are_invalid_and_nothing_is_stored(
    call: Callable[..., Any], fake_provider: Any, path: str, answer: tuple[int, Any], says: str
) -> None:
    fake_provider.script(path, answer)
    s = space()
    err = await refused(call, "ConnectChannel", pb.ConnectChannelRequest(line=line()), s)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and says in (err.details() or "")
    listed = await call("ListChannels", pb.ListChannelsRequest(include_disconnected=True), space=s)
    assert list(listed.channels) == []


async def test_line_unavailable_at_connect_is_unavailable(call: Callable[..., Any], fake_provider: Any) -> None:
    fake_provider.script("/line/v2/bot/info$", (503, {"message": "busy"}))
    err = await refused(call, "ConnectChannel", pb.ConnectChannelRequest(line=line()), space())
    assert err.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("creds", "field"),
    [
        (line(secret="not-hex"), "line.channel_secret"),
        (line(secret=SECRET.upper()), "line.channel_secret"),
        (line(token="short"), "line.channel_access_token"),
        (line(token="has spaces in it 0123456789"), "line.channel_access_token"),
    ],
)
async def test_credentials_of_the_wrong_shape_name_the_field(
    call: Callable[..., Any], fake_provider: Any, creds: pb.LineCredentials, field: str
) -> None:
    err = await refused(call, "ConnectChannel", pb.ConnectChannelRequest(line=creds), space())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.details() or "")
    assert fake_provider.received("/line/") == []


async def test_update_takes_new_credentials_for_the_same_bot_only_and_disconnect_keeps_it_reconnectable(
    call: Callable[..., Any], fake_provider: Any
) -> None:
    bot, s = bot_id(), space()
    fake_provider.script("/line/v2/bot/info$", (200, {"userId": bot, "basicId": "@1"}))
    channel = (await call("ConnectChannel", pb.ConnectChannelRequest(line=line()), space=s)).channel
    fake_provider.script("/line/v2/bot/info$", (200, {"userId": bot, "basicId": "@2"}), (200, {"userId": bot_id()}))
    new = line(secret="f" * 32, token="RotatedLineToken0123456789NEWT")
    updated = await call("UpdateChannel", pb.UpdateChannelRequest(channel_id=channel.channel_id, line=new), space=s)
    assert updated.channel.credential_hint == "…NEWT" and updated.channel.account_detail == "@2"
    other = await refused(call, "UpdateChannel", pb.UpdateChannelRequest(channel_id=channel.channel_id, line=new), s)
    assert other.code() == grpc.StatusCode.INVALID_ARGUMENT and "account" in (other.details() or "")
    rotate = pb.UpdateChannelRequest(channel_id=channel.channel_id, rotate_secret=True)
    err = await refused(call, "UpdateChannel", rotate, s)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "LINE Developers console" in (err.details() or "")
    gone = await call("DisconnectChannel", pb.DisconnectChannelRequest(channel_id=channel.channel_id), space=s)
    assert gone.channel.status == pb.CHANNEL_STATUS_DISCONNECTED
    fake_provider.script("/line/v2/bot/info$", (200, {"userId": bot}))
    back = await call("ConnectChannel", pb.ConnectChannelRequest(line=line()), space=space())
    assert back.channel.external_id == bot and back.channel.channel_id != channel.channel_id


# -- sending -------------------------------------------------------------------------------------------------------


class World:
    def __init__(self, settings: Any, channel: Any, space_id: str, fake: Any, nc: Any) -> None:
        self.settings, self.channel, self.space_id, self.fake, self.nc = settings, channel, space_id, fake, nc

    async def request(self, *, request_id: str = "", **fields: Any) -> str:
        request_id = request_id or str(uuid.uuid4())
        message = ev.OutboundSendRequest(
            request_id=request_id,
            space_id=self.space_id,
            channel_id=self.channel.channel.id,
            contact_external_id=USER,
            origin="conversations",
            **fields,
        )
        await self.nc.jetstream().publish(
            contract.OUTBOUND_REQUESTED, message.SerializeToString(), headers={"Nats-Msg-Id": request_id}
        )
        return request_id

    async def final(self, request_id: str, timeout: float = 20.0) -> Any:
        engine = db.create_engine(self.settings.database_url, pool_size=1)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while asyncio.get_running_loop().time() < deadline:
                async with engine.connect() as conn:
                    row = (
                        await conn.execute(text("SELECT * FROM send_log WHERE request_id = :r"), {"r": request_id})
                    ).one_or_none()
                if row is not None and row.status in ("sent", "failed"):
                    return row
                await asyncio.sleep(0.1)
        finally:
            await engine.dispose()
        raise AssertionError(f"request {request_id} did not finish")

    def pushes(self) -> list[Any]:
        return self.fake.received("/line/v2/bot/message/push")


@pytest.fixture(scope="module")
async def world(
    migrated: str, make_settings: Callable[..., Any], gw: Any, fake_provider: Any, nats_url: str
) -> AsyncIterator[World]:
    settings = make_settings(channel_gateway_max_inline_retry_seconds=1.5, channel_gateway_send_attempts=3)
    space_id = space()
    channel = await gw.connect_channel(settings, space_id, "line", channel_secret=SECRET, channel_access_token=TOKEN)
    nc = await nats.connect(nats_url)
    async with running(await build_worker(settings)):
        yield World(settings, channel, space_id, fake_provider, nc)
    await nc.close()


async def test_text_with_quick_replies_is_pushed_with_a_retry_key_and_its_message_id_recorded(world: World) -> None:
    rid = await world.request(text="Which one?", quick_replies=[ev.OutboundQuickReply(title="Parcel", payload="P")])
    row = await world.final(rid)
    [push] = world.pushes()
    assert row.status == "sent" and row.provider_message_id and row.provider_message_id.isdigit()
    assert push.headers["Authorization"] == f"Bearer {TOKEN}"
    assert push.headers["X-Line-Retry-Key"] == retry_key(rid)
    action = {"type": "postback", "label": "Parcel", "data": "P", "displayText": "Parcel"}
    assert push.json == {
        "to": USER,
        "messages": [
            {"type": "text", "text": "Which one?", "quickReply": {"items": [{"type": "action", "action": action}]}}
        ],
    }


async def test_a_server_error_is_retried_with_the_same_retry_key(world: World) -> None:
    world.fake.script("/message/push$", (500, {"message": "Internal server error"}))
    rid = await world.request(text="retry me")
    row = await world.final(rid)
    first, second = world.pushes()
    assert row.status == "sent" and row.attempts == 2
    assert first.headers["X-Line-Retry-Key"] == second.headers["X-Line-Retry-Key"] == retry_key(rid)


async def test_a_409_for_an_accepted_retry_key_counts_as_sent(world: World) -> None:
    already = {"message": "The retry key is already accepted", "sentMessages": [{"id": "777", "quoteToken": "q"}]}
    world.fake.script("/message/push$", (0, 2.5), (409, already))  # the first answer times out
    rid = await world.request(text="once only")
    row = await world.final(rid)
    assert row.status == "sent" and row.provider_message_id == "777" and len(world.pushes()) == 2


async def test_permanent_and_rate_limit_errors(world: World) -> None:
    world.fake.script(
        "/message/push$",
        (400, {"message": "Failed to send messages", "details": [{"message": "invalid", "property": "to"}]}),
        (429, {"message": "Too Many Requests"}, {"Retry-After": "0"}),
    )
    bad = await world.final(await world.request(text="to nobody"))
    assert bad.status == "failed" and bad.error_code == "http_400" and "to: invalid" in bad.error_message
    limited = await world.final(await world.request(text="after a 429"))
    assert limited.status == "sent" and limited.attempts == 2


async def test_what_line_cannot_push_fails_without_calling_it(world: World) -> None:
    video = ev.OutboundAttachment(kind=ev.MEDIA_KIND_VIDEO, url="https://cdn.example/v.mp4")
    row = await world.final(await world.request(attachments=[video]))
    assert row.status == "failed" and row.error_code == "unsupported_content" and world.pushes() == []


async def test_a_send_interrupted_by_a_crash_is_retried_under_its_retry_key(world: World) -> None:
    rid = str(uuid.uuid4())
    engine = db.create_engine(world.settings.database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO send_log (request_id, space_id, channel_id, status, attempts, claimed_until) "
                    "VALUES (:r, :s, :c, 'sending', 1, now() - interval '1 minute')"
                ),
                {"r": rid, "s": world.space_id, "c": world.channel.channel.id},
            )
    finally:
        await engine.dispose()
    row = await world.final(await world.request(text="maybe sent already", request_id=rid))
    [push] = world.pushes()
    assert row.status == "sent" and push.headers["X-Line-Retry-Key"] == retry_key(rid)
