"""The Twilio SMS channel through the real processes: ConnectChannel looks the number up and points its SmsUrl at
the gateway, signed form webhooks reach JetStream and are answered with empty TwiML, and the worker sends through
Messages.json with the status callback, classifying Twilio's errors."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import grpc
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parley.channel_gateway.v1 import channel_service_pb2 as pb
from parley.channel_gateway.v1 import channel_service_pb2_grpc as pb_grpc
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1 import common_pb2
from parley_channel_gateway.app import build_serve, build_worker
from parley_channel_gateway.crypto import SecretBox
from parley_channel_gateway.inbound import parse_form, parse_twilio_sms, sign_twilio
from parley_channel_gateway.webapp import EMPTY_TWIML
from parley_kit import db
from parley_kit.contracts import channel_gateway as contract
from parley_kit.testing.service import running
from sqlalchemy import text

FIXTURES = Path(__file__).parent.parent / "fixtures" / "twilio_sms"
CONFORMANCE = Path(
    os.environ.get("PARLEY_CONFORMANCE_WEBHOOKS")
    or Path(__file__).resolve().parents[4].parent / "shared" / "conformance" / "webhooks"
)
FORM = "application/x-www-form-urlencoded"


def account_sid() -> str:
    return "AC" + secrets.token_hex(16)


def auth_token() -> str:
    return secrets.token_hex(16)


def phone() -> str:
    return f"+1415{uuid.uuid4().int % 10**7:07d}"


def form_of(recorded: Any) -> dict[str, str]:
    return dict(parse_qsl(recorded.body.decode(), keep_blank_values=True))


@pytest.fixture(autouse=True)
def clean_fake(fake_provider: Any) -> None:
    fake_provider.reset()


# -- ChannelService ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def target(migrated: str, make_settings: Callable[..., Any]) -> AsyncIterator[str]:
    runtime = await build_serve(make_settings())
    async with running(runtime) as address:
        yield address


@pytest.fixture
def call(target: str, mint_token: Callable[..., str]) -> Callable[..., Any]:
    async def invoke(method: str, request: Any, *, space: str, role: str = "manager") -> Any:
        token = mint_token(space_id=space, role=role, subject="user:u1")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.ChannelServiceStub(channel)
            return await getattr(stub, method)(request, metadata=[("authorization", f"Bearer {token}")])

    return invoke


def connect_request(sid: str, token: str, number: str) -> pb.ConnectChannelRequest:
    creds = pb.TwilioSmsCredentials(account_sid=sid, auth_token=token, phone_number=number)
    return pb.ConnectChannelRequest(twilio_sms=creds, name="Support line")


async def test_connect_looks_the_number_up_and_points_its_sms_url_at_the_channel(
    call: Callable[..., Any], fake_provider: Any, make_settings: Callable[..., Any]
) -> None:
    sid, token, number, space = account_sid(), auth_token(), phone(), f"space-{uuid.uuid4().hex[:8]}"
    reply = await call("ConnectChannel", connect_request(sid, token, number), space=space)
    channel = reply.channel
    assert channel.type == common_pb2.CHANNEL_TYPE_TWILIO_SMS and channel.external_id == number
    assert channel.account_detail == sid and channel.credential_hint == f"…{token[-4:]}" and token not in str(reply)
    assert channel.inbound_webhook_url == f"https://gateway.test/webhooks/twilio_sms/{channel.channel_id}"
    lookup, update = fake_provider.received(f"/twilio/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers")
    assert lookup.method == "GET" and dict(parse_qsl(lookup.path.partition("?")[2])) == {"PhoneNumber": number}
    assert lookup.headers["Authorization"] == "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()
    assert update.method == "POST" and update.path.endswith(".json") and "/IncomingPhoneNumbers/PN" in update.path
    assert form_of(update) == {"SmsUrl": channel.inbound_webhook_url, "SmsMethod": "POST"}

    settings = make_settings()
    engine = db.create_engine(settings.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            sealed = (
                await conn.execute(text("SELECT secrets FROM channels WHERE id = :i"), {"i": channel.channel_id})
            ).scalar_one()
    finally:
        await engine.dispose()
    assert token not in str(sealed)
    stored = SecretBox(settings.channel_gateway_encryption_key).open(sealed)
    assert stored["access_token"] == token and update.path.rsplit("/", 1)[-1] == f"{stored['phone_number_sid']}.json"

    listed = await call("ListChannels", pb.ListChannelsRequest(type=common_pb2.CHANNEL_TYPE_TWILIO_SMS), space=space)
    assert [c.channel_id for c in listed.channels] == [channel.channel_id]

    fake_provider.reset()
    await call("DisconnectChannel", pb.DisconnectChannelRequest(channel_id=channel.channel_id), space=space)
    [cleared] = fake_provider.received(f"/IncomingPhoneNumbers/{stored['phone_number_sid']}.json")
    assert form_of(cleared) == {"SmsUrl": "", "SmsMethod": "POST"}
    again = await call("ConnectChannel", connect_request(sid, token, number), space=space)
    assert again.channel.channel_id != channel.channel_id


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        ((401, {"code": 20003, "message": "Authenticate", "status": 401}), grpc.StatusCode.INVALID_ARGUMENT, "20003"),
        ((200, {"incoming_phone_numbers": []}), grpc.StatusCode.INVALID_ARGUMENT, "is not a phone number of"),
        ((503, {"code": 20503, "message": "Service unavailable"}), grpc.StatusCode.UNAVAILABLE, "try again"),
    ],
    ids=["bad-token", "not-their-number", "twilio-down"],
)
async def test_refused_or_unreachable_twilio_stores_nothing(
    call: Callable[..., Any], fake_provider: Any, answer: tuple[int, Any], code: grpc.StatusCode, words: str
) -> None:
    space, number = f"space-{uuid.uuid4().hex[:8]}", phone()
    fake_provider.script(r"/IncomingPhoneNumbers\.json", answer)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call("ConnectChannel", connect_request(account_sid(), auth_token(), number), space=space)
    assert err.value.code() == code and words in (err.value.details() or "")
    listed = await call("ListChannels", pb.ListChannelsRequest(include_disconnected=True), space=space)
    assert list(listed.channels) == []


@pytest.mark.parametrize(
    ("sid", "token", "number", "field"),
    [
        ("AB" + "0" * 32, "0" * 32, "+14155550100", "twilio_sms.account_sid"),
        ("AC" + "0" * 32, "secret", "+14155550100", "twilio_sms.auth_token"),
        ("AC" + "0" * 32, "0" * 32, "4155550100", "twilio_sms.phone_number"),
    ],
)
async def test_credential_shapes_are_checked_naming_the_field(
    call: Callable[..., Any], fake_provider: Any, sid: str, token: str, number: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call("ConnectChannel", connect_request(sid, token, number), space="space-shapes")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.value.details() or "")
    assert fake_provider.received("/twilio/") == []


async def test_a_new_auth_token_is_verified_and_registered_again_and_there_is_no_secret_to_rotate(
    call: Callable[..., Any], fake_provider: Any
) -> None:
    sid, number, space = account_sid(), phone(), f"space-{uuid.uuid4().hex[:8]}"
    channel = (await call("ConnectChannel", connect_request(sid, auth_token(), number), space=space)).channel
    fake_provider.reset()
    new_token = auth_token()
    creds = pb.TwilioSmsCredentials(account_sid=sid, auth_token=new_token, phone_number=number)
    updated = await call(
        "UpdateChannel", pb.UpdateChannelRequest(channel_id=channel.channel_id, twilio_sms=creds), space=space
    )
    assert updated.channel.credential_hint == f"…{new_token[-4:]}"
    calls = fake_provider.received("/IncomingPhoneNumbers")
    assert [c.method for c in calls] == ["GET", "POST"]
    assert calls[0].headers["Authorization"] == "Basic " + base64.b64encode(f"{sid}:{new_token}".encode()).decode()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(
            "UpdateChannel", pb.UpdateChannelRequest(channel_id=channel.channel_id, rotate_secret=True), space=space
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "auth token" in (err.value.details() or "")


# -- webhooks ------------------------------------------------------------------------------------------------------


class Gateway:
    def __init__(self, client: Any, gw: Any, settings: Any, channel: Any, token: str, space_id: str) -> None:
        self.client, self.gw, self.settings = client, gw, settings
        self.channel, self.token, self.space_id = channel, token, space_id

    @property
    def url(self) -> str:
        return f"https://gateway.test/webhooks/twilio_sms/{self.channel.id}"

    def post(
        self,
        params: list[tuple[str, str]],
        *,
        signature: str | None = "valid",
        content_type: str = FORM,
        channel_id: str = "",
    ) -> Any:
        headers = {"Content-Type": content_type}
        if signature == "valid":
            headers["X-Twilio-Signature"] = sign_twilio(self.url, params, self.token)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        path = f"/webhooks/twilio_sms/{channel_id or self.channel.id}"
        return self.client.post(path, data=urlencode(params).encode(), headers=headers)

    def events(self) -> list[Any]:
        return self.gw.run(self.gw.inbound_events(self.settings.nats_url, channel_id=self.channel.id))


@pytest.fixture(scope="module")
def gateway(migrated: str, make_settings: Callable[..., Any], gw: Any, fake_provider: Any) -> Iterator[Gateway]:
    settings = make_settings(service_name=f"channel-gateway-{uuid.uuid4().hex[:6]}")
    space_id, token = f"space-{uuid.uuid4().hex[:8]}", auth_token()
    connected = gw.run(
        gw.connect_channel(
            settings, space_id, "twilio_sms", account_sid=account_sid(), auth_token=token, phone_number=phone()
        )
    )
    client = gw.WebClient(settings)
    gw.wait_until(lambda: client.get("/readyz").status_code == 200, timeout=20)
    yield Gateway(client, gw, settings, connected.channel, token, space_id)
    client.close()


def fixture(name: str) -> list[tuple[str, str]]:
    return parse_form((FIXTURES / f"{name}.form").read_bytes().strip())


@pytest.mark.parametrize("name", sorted(path.stem for path in FIXTURES.glob("*.form")))
def test_every_fixture_is_published_as_the_parsers_event_and_answered_with_empty_twiml(
    gateway: Gateway, name: str
) -> None:
    params = fixture(name)
    [expected] = [item.event for item in parse_twilio_sms(params, channel_id=gateway.channel.id)]
    response = gateway.post(params)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/xml")
    assert response.data.decode() == EMPTY_TWIML
    published = {p.event.event_id: p for p in gateway.events()}
    found = published[expected.event_id]
    assert found.event.kind == expected.kind and list(found.event.parts) == list(expected.parts)
    assert found.event.space_id == gateway.space_id and found.event.channel_id == gateway.channel.id
    assert found.headers["Nats-Msg-Id"] == expected.event_id
    assert found.subject == contract.inbound_subject(gateway.space_id, gateway.channel.id, expected.contact_external_id)


def test_refusals_answer_json_errors_and_publish_nothing(gateway: Gateway) -> None:
    params = [("MessageSid", f"SM{uuid.uuid4().hex}"), ("From", "+12125550199"), ("Body", "forged?")]
    internal_url = f"{gateway.client.base_url}/webhooks/twilio_sms/{gateway.channel.id}"
    cases = [
        (gateway.post(params, signature=None), 401, "signature_missing"),
        (gateway.post(params, signature="0/KCTR6DLpKmkAf8muzZqo1nDgQ="), 403, "signature_invalid"),
        (gateway.post(params, signature=sign_twilio(gateway.url, params, auth_token())), 403, "signature_invalid"),
        # Signed over the URL the gateway itself was reached at: Twilio signs the public URL.
        (gateway.post(params, signature=sign_twilio(internal_url, params, gateway.token)), 403, "signature_invalid"),
        (gateway.post(params, content_type="application/json"), 415, "unsupported_media_type"),
        (gateway.post(params, channel_id=str(uuid.uuid4())), 404, "unknown_channel"),
        (gateway.post([]), 400, "invalid_envelope"),
    ]
    for response, status, error in cases:
        assert (response.status_code, response.json["error"]) == (status, error)
    assert params[0][1] not in {p.event.provider_message_id for p in gateway.events()}


def test_a_disconnected_channels_webhook_is_answered_with_twiml_and_not_published(gateway: Gateway) -> None:
    token = auth_token()
    connected = gateway.gw.run(
        gateway.gw.connect_channel(
            gateway.settings, gateway.space_id, "twilio_sms", account_sid=account_sid(), auth_token=token,
            phone_number=phone(),
        )
    )  # fmt: skip

    async def disconnect() -> None:
        engine = db.create_engine(gateway.settings.database_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE channels SET status = 'disconnected' WHERE id = :i"), {"i": connected.channel.id}
                )
        finally:
            await engine.dispose()

    gateway.gw.run(disconnect())
    params = [("MessageSid", f"SM{uuid.uuid4().hex}"), ("From", "+12125550177"), ("Body", "anyone?")]
    url = f"https://gateway.test/webhooks/twilio_sms/{connected.channel.id}"
    headers = {"Content-Type": FORM, "X-Twilio-Signature": sign_twilio(url, params, token)}
    response = gateway.client.post(
        f"/webhooks/twilio_sms/{connected.channel.id}", data=urlencode(params).encode(), headers=headers
    )
    assert response.status_code == 200 and response.data.decode() == EMPTY_TWIML
    published = gateway.gw.run(gateway.gw.inbound_events(gateway.settings.nats_url, channel_id=connected.channel.id))
    assert published == []


def test_the_same_webhook_three_times_publishes_one_event(gateway: Gateway) -> None:
    sid = f"SM{uuid.uuid4().hex}"
    params = [
        ("MessageSid", sid),
        ("From", "+12125550142"),
        ("To", "+14155550100"),
        ("Body", "hello"),
        ("NumMedia", "0"),
    ]
    assert [gateway.post(params).status_code for _ in range(3)] == [200, 200, 200]
    assert [p.event.provider_message_id for p in gateway.events()].count(sid) == 1


@pytest.mark.skipif(not (CONFORMANCE / "twilio").is_dir(), reason=f"no conformance set at {CONFORMANCE}")
@pytest.mark.parametrize("path", sorted((CONFORMANCE / "twilio").glob("*.json")), ids=lambda p: p.stem)
def test_conformance_payloads_posted_as_twilio_sends_them(gateway: Gateway, path: Path) -> None:
    """The shared set writes Twilio's form fields as JSON objects: form-encode them, sign, post."""
    document = json.loads(path.read_bytes())
    params = [(key, str(value)) for key, value in document.items()]
    [expected] = parse_twilio_sms(params, channel_id=gateway.channel.id)
    response = gateway.post(params)
    assert response.status_code == 200 and response.data.decode() == EMPTY_TWIML
    assert expected.event.event_id in {p.event.event_id for p in gateway.events()}


form_fields = st.lists(
    st.tuples(
        st.sampled_from(["MessageSid", "MessageStatus", "SmsStatus", "Body", "NumMedia", "MediaUrl0", "From", "To"])
        | st.text(max_size=10),
        st.sampled_from(["SM1", "delivered", "received", "2", "https://x.example/m"]) | st.text(max_size=30),
    ),
    min_size=1,
    max_size=10,
)


def test_arbitrary_signed_form_fields_never_get_a_5xx(gateway: Gateway) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(params=form_fields)
    def check(params: list[tuple[str, str]]) -> None:
        response = gateway.post(params)
        assert response.status_code == 200, (response.status_code, response.data[:300])
        assert response.data.decode() == EMPTY_TWIML

    check()


# -- sending -------------------------------------------------------------------------------------------------------


class World:
    def __init__(self, settings: Any, channel: Any, sid: str, token: str, space_id: str, nc: Any) -> None:
        self.settings, self.channel, self.sid, self.token, self.space_id, self.nc = (
            settings, channel, sid, token, space_id, nc
        )  # fmt: skip

    async def request(self, **fields: Any) -> str:
        request_id = fields.pop("request_id", None) or str(uuid.uuid4())
        message = ev.OutboundSendRequest(
            request_id=request_id,
            space_id=self.space_id,
            channel_id=self.channel.id,
            contact_external_id="+12125550123",
            **fields,
        )
        js = self.nc.jetstream()
        await js.publish(contract.OUTBOUND_REQUESTED, message.SerializeToString(), headers={"Nats-Msg-Id": request_id})
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

    def path(self) -> str:
        return f"/twilio/2010-04-01/Accounts/{self.sid}/Messages.json"


@pytest.fixture(scope="module")
async def world(migrated: str, make_settings: Callable[..., Any], gw: Any, nats_url: str) -> AsyncIterator[World]:
    settings = make_settings(channel_gateway_max_inline_retry_seconds=1.5, channel_gateway_send_attempts=4)
    space_id, sid, token = f"space-{uuid.uuid4().hex[:8]}", account_sid(), auth_token()
    connected = await gw.connect_channel(
        settings, space_id, "twilio_sms", account_sid=sid, auth_token=token, phone_number=phone()
    )
    runtime = await build_worker(settings)
    nc = await nats.connect(nats_url)
    async with running(runtime):
        yield World(settings, connected.channel, sid, token, space_id, nc)
    await nc.close()


async def test_text_is_sent_with_basic_auth_and_the_status_callback_and_the_sid_is_recorded(
    world: World, fake_provider: Any
) -> None:
    rid = await world.request(text="Your order shipped")
    row = await world.final(rid)
    [sent] = fake_provider.received(world.path())
    assert row.status == "sent" and row.provider_message_id.startswith("SM") and row.attempts == 1
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(f"{world.sid}:{world.token}".encode()).decode()
    assert sent.headers["Content-Type"] == FORM
    assert sent.form == [
        ("To", "+12125550123"),
        ("From", world.channel.external_id),
        ("Body", "Your order shipped"),
        ("StatusCallback", f"https://gateway.test/webhooks/twilio_sms/{world.channel.id}"),
    ]


async def test_media_become_repeated_media_urls(world: World, fake_provider: Any) -> None:
    attachments = [
        ev.OutboundAttachment(kind=ev.MEDIA_KIND_IMAGE, url="https://cdn.example/a.png"),
        ev.OutboundAttachment(kind=ev.MEDIA_KIND_FILE, url="https://cdn.example/b.pdf"),
    ]
    row = await world.final(await world.request(text="Photos", attachments=attachments))
    assert row.status == "sent"
    [sent] = fake_provider.received(world.path())
    assert [value for name, value in sent.form if name == "MediaUrl"] == [
        "https://cdn.example/a.png",
        "https://cdn.example/b.pdf",
    ]


async def test_buttons_are_refused_without_calling_twilio(world: World, fake_provider: Any) -> None:
    row = await world.final(await world.request(text="Pick", buttons=[ev.OutboundButton(title="Yes", payload="Y")]))
    assert row.status == "failed" and row.error_code == "unsupported_content" and "SMS" in row.error_message
    assert fake_provider.received(world.path()) == []


async def test_an_unsubscribed_recipient_fails_at_once_with_twilios_code(world: World, fake_provider: Any) -> None:
    fake_provider.script(
        r"/Messages\.json",
        (400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}),
    )
    row = await world.final(await world.request(text="Still there?"))
    assert (row.status, row.error_code, row.attempts) == ("failed", "21610", 1)
    assert "unsubscribed" in row.error_message


async def test_a_rate_limit_is_retried_then_sent_once(world: World, fake_provider: Any) -> None:
    fake_provider.script(
        r"/Messages\.json", (429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "0"})
    )
    row = await world.final(await world.request(text="busy"))
    assert row.status == "sent" and row.attempts == 2
    assert len(fake_provider.received(world.path())) == 2


async def test_a_send_interrupted_by_a_crash_is_not_sent_again(world: World, fake_provider: Any) -> None:
    """Twilio has no idempotency key: a request left SENDING by a dead worker is recorded outcome_unknown."""
    rid = str(uuid.uuid4())
    engine = db.create_engine(world.settings.database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO send_log (request_id, space_id, channel_id, status, attempts, claimed_until) "
                    "VALUES (:r, :s, :c, 'sending', 1, now() - interval '1 minute')"
                ),
                {"r": rid, "s": world.space_id, "c": world.channel.id},
            )
    finally:
        await engine.dispose()
    row = await world.final(await world.request(text="maybe sent already", request_id=rid))
    assert row.status == "failed" and row.error_code == "outcome_unknown"
    assert fake_provider.received(world.path()) == []
