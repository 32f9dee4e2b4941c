"""The outbound worker against a fake provider: payloads per provider, windows and tags, retries on rate
limits, permanent failures, exactly-once sends per request id, status events through the outbox."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from parley.channel_gateway.v1 import events_pb2 as ev
from parley_channel_gateway.app import build_worker
from parley_channel_gateway.inbound.signatures import Verdict, verify_custom_signature
from parley_kit import db, telemetry
from parley_kit.contracts import channel_gateway as contract
from parley_kit.testing.service import running
from prometheus_client import REGISTRY
from sqlalchemy import text

PAGE_ID = "200000000000001"
IG_ID = "300000000000001"
WA_PHONE_ID = "400000000000001"
TG_TOKEN = "777888999:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQss"


class World:
    def __init__(self, settings: Any, channels: dict[str, Any], space_id: str, fake: Any, nc: Any) -> None:
        self.settings = settings
        self.channels = channels
        self.space_id = space_id
        self.fake = fake
        self.nc = nc

    async def request(
        self, provider: str, *, hours_ago: float | None = 1.0, publish: bool = True, **fields: Any
    ) -> str:
        request_id = fields.pop("request_id", None) or str(uuid.uuid4())
        message = ev.OutboundSendRequest(
            request_id=request_id,
            space_id=self.space_id,
            channel_id=self.channels[provider].channel.id,
            contact_external_id=fields.pop("contact", "5923481234567890"),
            origin="conversations",
            origin_ref=f"msg-{request_id[:8]}",
            **fields,
        )
        if hours_ago is not None:
            ts = Timestamp()
            ts.FromDatetime(datetime.now(UTC) - timedelta(hours=hours_ago))
            message.contact_last_inbound_at.CopyFrom(ts)
        if publish:
            await self.publish(message)
        return request_id

    async def publish(
        self, message: ev.OutboundSendRequest, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        js = self.nc.jetstream()
        hdrs = {"Nats-Msg-Id": msg_id or message.request_id, **(headers or {})}
        await js.publish(contract.OUTBOUND_REQUESTED, message.SerializeToString(), headers=hdrs)

    async def log_row(self, request_id: str) -> Any:
        engine = db.create_engine(self.settings.database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return (
                    await conn.execute(text("SELECT * FROM send_log WHERE request_id = :r"), {"r": request_id})
                ).one_or_none()
        finally:
            await engine.dispose()

    async def final(self, request_id: str, timeout: float = 20.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            row = await self.log_row(request_id)
            if row is not None and row.status in ("sent", "failed"):
                return row
            await asyncio.sleep(0.1)
        raise AssertionError(f"request {request_id} did not finish: {await self.log_row(request_id)}")

    async def statuses(self, request_id: str, expect: int = 1, timeout: float = 10.0) -> list[ev.OutboundStatusEvent]:
        js = self.nc.jetstream()
        deadline = asyncio.get_running_loop().time() + timeout
        found: list[ev.OutboundStatusEvent] = []
        while asyncio.get_running_loop().time() < deadline:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=5)
            sub = await js.pull_subscribe(contract.OUTBOUND_STATUS, stream=contract.STREAM, config=config)
            found = []
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=0.3)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                found += [
                    e for e in (ev.OutboundStatusEvent.FromString(m.data) for m in msgs) if e.request_id == request_id
                ]
            await sub.unsubscribe()
            if len(found) >= expect:
                return found
            await asyncio.sleep(0.2)
        return found

    def calls(self, provider: str) -> list[Any]:
        channel = self.channels[provider].channel
        if provider == "telegram":
            return self.fake.received(f"/telegram/bot{TG_TOKEN}/send")
        if provider == "custom":
            return self.fake.received("/hook")
        if provider == "viber":
            return self.fake.received("/viber/send_message")
        if provider == "instagram":
            return self.fake.received("/graph/me/messages")
        return self.fake.received(f"/graph/{channel.external_id}/messages")


async def connect_viber(gw: Any, settings: Any, space_id: str, fake: Any) -> Any:
    fake.script("/viber/get_account_info", (200, {"status": 0, "id": f"pa:{space_id}", "name": "Kyiv Flowers Shop"}))
    return await gw.connect_channel(settings, space_id, "viber", auth_token=gw.VIBER_TOKEN)


@pytest.fixture(scope="module")
async def world(
    migrated: str, make_settings: Callable[..., Any], gw: Any, fake_provider: Any, nats_url: str
) -> AsyncIterator[World]:
    settings = make_settings(channel_gateway_max_inline_retry_seconds=1.5, channel_gateway_send_attempts=4)
    space_id = f"space-{uuid.uuid4().hex[:8]}"
    channels = {
        "messenger": await gw.connect_channel(
            settings, space_id, "messenger", page_id=PAGE_ID, page_access_token=gw.META_TOKEN
        ),
        "instagram": await gw.connect_channel(
            settings, space_id, "instagram", ig_account_id=IG_ID, access_token=gw.META_TOKEN
        ),
        "whatsapp": await gw.connect_channel(
            settings, space_id, "whatsapp", phone_number_id=WA_PHONE_ID, waba_id="5", access_token=gw.META_TOKEN
        ),
        "telegram": await gw.connect_channel(settings, space_id, "telegram", bot_token=TG_TOKEN),
        "custom": await gw.connect_channel(
            settings, space_id, "custom", outbound_webhook_url=fake_provider.url + "/hook"
        ),
        "viber": await connect_viber(gw, settings, space_id, fake_provider),
    }
    runtime = await build_worker(settings)
    nc = await nats.connect(nats_url)
    async with running(runtime):
        yield World(settings, channels, space_id, fake_provider, nc)
    await nc.close()


@pytest.fixture(autouse=True)
def clean_fake(fake_provider: Any) -> None:
    fake_provider.reset()


# -- Messenger and Instagram --


async def test_messenger_text_inside_24h_is_sent_as_response_and_recorded(world: World) -> None:
    rid = await world.request(
        "messenger", text="Your order shipped", quick_replies=[ev.OutboundQuickReply(title="Thanks", payload="THX")]
    )
    row = await world.final(rid)
    assert row.status == "sent" and row.provider_message_id.startswith("m_") and row.attempts == 1
    [call] = world.calls("messenger")
    assert call.headers["Authorization"] == "Bearer EAAGtestpageaccesstoken1234567890"
    assert call.json == {
        "recipient": {"id": "5923481234567890"},
        "messaging_type": "RESPONSE",
        "message": {
            "text": "Your order shipped",
            "quick_replies": [{"content_type": "text", "title": "Thanks", "payload": "THX"}],
        },
    }
    [status] = await world.statuses(rid)
    assert status.status == ev.DELIVERY_STATUS_SENT and status.provider_message_id == row.provider_message_id
    assert status.origin == "conversations" and status.origin_ref == f"msg-{rid[:8]}"


async def test_the_requesters_trace_runs_through_the_send_to_the_status_event(world: World) -> None:
    trace_id = uuid.uuid4().hex
    rid = str(uuid.uuid4())
    message = ev.OutboundSendRequest(
        request_id=rid, space_id=world.space_id, channel_id=world.channels["custom"].channel.id,
        contact_external_id="user-7", text="traced",
    )  # fmt: skip
    await world.publish(message, headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"})
    assert (await world.final(rid)).status == "sent"
    js = world.nc.jetstream()
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=5)
    sub = await js.pull_subscribe(contract.OUTBOUND_STATUS, stream=contract.STREAM, config=config)
    traceparents = []
    for _ in range(20):
        try:
            msgs = await sub.fetch(500, timeout=0.5)
        except (nats.errors.TimeoutError, TimeoutError):
            break
        traceparents += [
            m.headers["traceparent"] for m in msgs if ev.OutboundStatusEvent.FromString(m.data).request_id == rid
        ]
    await sub.unsubscribe()
    assert [tp.split("-")[1] for tp in traceparents] == [trace_id]


async def test_messenger_button_template_and_attachment_by_url(world: World) -> None:
    buttons = [
        ev.OutboundButton(title="Track", url="https://shop.example/t/1"),
        ev.OutboundButton(title="Help", payload="HELP"),
    ]
    rid1 = await world.request("messenger", text="Choose", buttons=buttons)
    rid2 = await world.request(
        "messenger", attachments=[ev.OutboundAttachment(kind=ev.MEDIA_KIND_IMAGE, url="https://cdn.example/a.png")]
    )
    assert (await world.final(rid1)).status == "sent" and (await world.final(rid2)).status == "sent"
    bodies = [c.json["message"] for c in world.calls("messenger")]
    assert {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "button",
                "text": "Choose",
                "buttons": [
                    {"type": "web_url", "url": "https://shop.example/t/1", "title": "Track"},
                    {"type": "postback", "title": "Help", "payload": "HELP"},
                ],
            },
        }
    } in bodies
    assert {
        "attachment": {"type": "image", "payload": {"url": "https://cdn.example/a.png", "is_reusable": True}}
    } in bodies


async def test_outside_24h_without_a_tag_is_refused_as_window_closed_without_calling_the_provider(world: World) -> None:
    rid = await world.request("messenger", text="late", hours_ago=30)
    row = await world.final(rid)
    assert row.status == "failed" and row.error_code == "window_closed" and "24-hour" in row.error_message
    assert world.calls("messenger") == []
    [status] = await world.statuses(rid)
    assert status.status == ev.DELIVERY_STATUS_FAILED and status.error_code == "window_closed"


async def test_human_agent_tag_sends_within_7_days_and_not_after(world: World) -> None:
    inside = await world.request("messenger", text="agent reply", hours_ago=72, tag=ev.MESSAGE_TAG_HUMAN_AGENT)
    outside = await world.request("messenger", text="too late", hours_ago=24 * 8, tag=ev.MESSAGE_TAG_HUMAN_AGENT)
    unknown = await world.request("messenger", text="never wrote", hours_ago=None, tag=ev.MESSAGE_TAG_HUMAN_AGENT)
    assert (await world.final(inside)).status == "sent"
    [call] = world.calls("messenger")
    assert call.json["messaging_type"] == "MESSAGE_TAG" and call.json["tag"] == "HUMAN_AGENT"
    for rid in (outside, unknown):
        row = await world.final(rid)
        assert row.status == "failed" and row.error_code == "window_closed"


async def test_messenger_update_tag_sends_outside_the_window_and_tags_are_refused_where_they_do_not_exist(
    world: World,
) -> None:
    update = await world.request(
        "messenger", text="shipped", hours_ago=24 * 30, tag=ev.MESSAGE_TAG_POST_PURCHASE_UPDATE
    )
    assert (await world.final(update)).status == "sent"
    [call] = world.calls("messenger")
    assert call.json["messaging_type"] == "MESSAGE_TAG" and call.json["tag"] == "POST_PURCHASE_UPDATE"
    tagged = await world.request("telegram", text="hi", contact="424242", tag=ev.MESSAGE_TAG_HUMAN_AGENT)
    row = await world.final(tagged)
    assert row.status == "failed" and row.error_code == "unsupported_content"
    assert world.calls("telegram") == []


async def test_instagram_refuses_messenger_update_tags_inside_and_outside_the_window(world: World) -> None:
    for hours_ago in (48, 2):
        tagged = await world.request("instagram", text="update", hours_ago=hours_ago, tag=ev.MESSAGE_TAG_ACCOUNT_UPDATE)
        row = await world.final(tagged)
        assert row.status == "failed" and row.error_code == "unsupported_content" and "HUMAN_AGENT" in row.error_message
    ok = await world.request("instagram", text="hi", hours_ago=2)
    assert (await world.final(ok)).status == "sent"
    assert world.calls("instagram")[0].json["messaging_type"] == "RESPONSE"


async def test_rate_limited_then_success_is_sent_exactly_once(world: World) -> None:
    world.fake.script(
        f"/graph/{PAGE_ID}/messages",
        (400, {"error": {"message": "(#613) Calls to this api have exceeded the rate limit.", "code": 613}}),
        (429, {"error": {"message": "Too many calls", "code": 4}}, {"Retry-After": "1"}),
    )
    rid = await world.request("messenger", text="after a rate limit")
    row = await world.final(rid)
    assert row.status == "sent" and row.attempts == 3
    assert len(world.calls("messenger")) == 3
    statuses = await world.statuses(rid)
    assert [s.status for s in statuses] == [ev.DELIVERY_STATUS_SENT]


async def test_a_long_provider_wait_goes_back_to_jetstream_and_is_sent_later(world: World) -> None:
    world.fake.script(
        f"/bot{TG_TOKEN}/sendMessage",
        (
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 3",
                "parameters": {"retry_after": 3},
            },
        ),
    )
    rid = await world.request("telegram", text="patience", contact="424242")
    row = await world.final(rid, timeout=30)
    assert row.status == "sent" and row.attempts == 2
    first, second = world.calls("telegram")
    assert second.at - first.at >= 2.9  # redelivered after Telegram's retry_after, not at once


async def test_permanent_provider_errors_fail_with_the_providers_code_and_message(world: World) -> None:
    world.fake.script(
        f"/graph/{PAGE_ID}/messages",
        (
            400,
            {
                "error": {
                    "message": "(#551) This person isn't available right now.",
                    "code": 551,
                    "error_subcode": 1545041,
                }
            },
        ),
    )
    rid = await world.request("messenger", text="hello?")
    row = await world.final(rid)
    assert row.status == "failed" and row.error_code == "551" and "isn't available" in row.error_message
    assert len(world.calls("messenger")) == 1
    [status] = await world.statuses(rid)
    assert status.error_code == "551" and "isn't available" in status.error_message


async def test_retries_are_bounded_and_end_failed(world: World) -> None:
    error = (503, {"error": {"message": "Service temporarily unavailable", "code": 2}}, {"Retry-After": "0"})
    world.fake.script("/graph/me/messages", error, error, error, error, error)
    rid = await world.request("instagram", text="down")
    row = await world.final(rid)
    assert row.status == "failed" and row.error_code == "2" and row.attempts == 4
    assert len(world.calls("instagram")) == 4


# -- exactly once --


async def test_a_redelivered_request_is_never_sent_twice(world: World) -> None:
    rid = await world.request("messenger", text="once")
    assert (await world.final(rid)).status == "sent"
    message = ev.OutboundSendRequest(
        request_id=rid,
        space_id=world.space_id,
        channel_id=world.channels["messenger"].channel.id,
        contact_external_id="5923481234567890",
        text="once",
    )
    await world.publish(message, msg_id=f"{rid}-again")  # past JetStream's de-duplication
    await world.publish(message, msg_id=f"{rid}-and-again")
    await asyncio.sleep(1.5)
    assert len(world.calls("messenger")) == 1
    assert len(await world.statuses(rid, expect=2, timeout=2)) == 1


@pytest.mark.parametrize("provider", ["messenger", "viber"])
async def test_a_send_interrupted_by_a_crash_is_not_sent_again(world: World, provider: str) -> None:
    """The crash window: SENDING recorded, the outcome never recorded. Meta and Viber have no idempotency key, so
    the gateway records outcome_unknown instead of risking a duplicate."""
    rid = str(uuid.uuid4())
    engine = db.create_engine(world.settings.database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO send_log (request_id, space_id, channel_id, status, attempts, claimed_until) "
                    "VALUES (:r, :s, :c, 'sending', 1, now() - interval '1 minute')"
                ),
                {"r": rid, "s": world.space_id, "c": world.channels[provider].channel.id},
            )
    finally:
        await engine.dispose()
    await world.request(provider, text="maybe sent already", request_id=rid)
    row = await world.final(rid)
    assert row.status == "failed" and row.error_code == "outcome_unknown"
    assert world.calls(provider) == []


# -- WhatsApp, Telegram, custom --


async def test_whatsapp_outside_24h_sends_only_templates(world: World) -> None:
    text_late = await world.request("whatsapp", text="free text", hours_ago=25, contact="4915112345678")
    template = await world.request(
        "whatsapp",
        hours_ago=25,
        contact="4915112345678",
        template=ev.OutboundTemplate(name="order_shipped", language="en_US", body_parameters=["Lena", "#42"]),
    )
    assert (await world.final(text_late)).error_code == "window_closed"
    row = await world.final(template)
    assert row.status == "sent" and row.provider_message_id.startswith("wamid.")
    [call] = world.calls("whatsapp")
    assert call.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "4915112345678",
        "type": "template",
        "template": {
            "name": "order_shipped",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "Lena"}, {"type": "text", "text": "#42"}]}
            ],
        },
    }


async def test_whatsapp_interactive_buttons_and_media(world: World) -> None:
    buttons = [ev.OutboundButton(title="Yes", payload="Y"), ev.OutboundButton(title="No", payload="N")]
    rid1 = await world.request("whatsapp", text="Confirm?", buttons=buttons, contact="4915100000001")
    rid2 = await world.request(
        "whatsapp",
        contact="4915100000002",
        attachments=[
            ev.OutboundAttachment(
                kind=ev.MEDIA_KIND_FILE, url="https://cdn.example/i.pdf", caption="Invoice", filename="i.pdf"
            )
        ],
    )
    assert (await world.final(rid1)).status == "sent" and (await world.final(rid2)).status == "sent"
    bodies = {c.json["to"]: c.json for c in world.calls("whatsapp")}
    assert bodies["4915100000001"]["interactive"] == {
        "type": "button",
        "body": {"text": "Confirm?"},
        "action": {
            "buttons": [
                {"type": "reply", "reply": {"id": "Y", "title": "Yes"}},
                {"type": "reply", "reply": {"id": "N", "title": "No"}},
            ]
        },
    }
    assert bodies["4915100000002"]["document"] == {
        "link": "https://cdn.example/i.pdf",
        "caption": "Invoice",
        "filename": "i.pdf",
    }


async def test_telegram_send_message_with_inline_keyboard_and_photo(world: World) -> None:
    rid1 = await world.request(
        "telegram",
        text="Pick",
        contact="1001",
        hours_ago=None,
        buttons=[ev.OutboundButton(title="A", payload="a"), ev.OutboundButton(title="Site", url="https://x.example")],
    )
    rid2 = await world.request(
        "telegram",
        text="A photo",
        contact="1001",
        hours_ago=None,
        attachments=[ev.OutboundAttachment(kind=ev.MEDIA_KIND_IMAGE, url="https://cdn.example/p.jpg")],
    )
    row1, row2 = await world.final(rid1), await world.final(rid2)
    assert row1.status == row2.status == "sent" and row1.provider_message_id.startswith("1001:")
    calls = {c.path.rsplit("/", 1)[-1]: c.json for c in world.calls("telegram")}
    assert calls["sendMessage"] == {
        "chat_id": "1001",
        "text": "Pick",
        "reply_markup": {
            "inline_keyboard": [[{"text": "A", "callback_data": "a"}], [{"text": "Site", "url": "https://x.example"}]]
        },
    }
    assert calls["sendPhoto"] == {"chat_id": "1001", "photo": "https://cdn.example/p.jpg", "caption": "A photo"}


async def test_custom_channel_webhook_is_signed_with_a_delivery_id(world: World) -> None:
    rid = await world.request("custom", text="to your app", contact="user-42", hours_ago=None)
    row = await world.final(rid)
    assert row.status == "sent"
    [call] = world.calls("custom")
    assert call.headers["X-Parley-Delivery-Id"] == rid
    assert call.headers["X-Parley-Timestamp"].isdigit()
    secret = world.channels["custom"].webhook_secret
    assert verify_custom_signature(call.body, call.headers["X-Parley-Signature"], secret) is Verdict.VALID
    assert verify_custom_signature(call.body, call.headers["X-Parley-Signature"], "other") is Verdict.MISMATCH
    payload = json.loads(call.body)
    assert (
        payload["delivery_id"] == rid
        and payload["text"] == "to your app"
        and payload["contact_external_id"] == "user-42"
    )


# -- Viber --

VIBER_USER = "6a2Kq9Xw0mB+dZ1pLs7t4A=="


async def test_viber_text_with_keyboard_records_the_exact_message_token(world: World, gw: Any) -> None:
    rid = await world.request(
        "viber",
        contact=VIBER_USER,
        hours_ago=None,
        text="When shall we deliver?",
        quick_replies=[ev.OutboundQuickReply(title="Morning", payload="SLOT_AM")],
        buttons=[ev.OutboundButton(title="Track", url="https://shop.example/t/1")],
    )
    row = await world.final(rid)
    [call] = world.calls("viber")
    assert call.headers["X-Viber-Auth-Token"] == gw.VIBER_TOKEN
    assert call.json == {
        "receiver": VIBER_USER,
        "min_api_version": 1,
        "sender": {"name": "Kyiv Flowers Shop"},
        "type": "text",
        "text": "When shall we deliver?",
        "keyboard": {
            "Type": "keyboard",
            "DefaultHeight": False,
            "Buttons": [
                {"ActionType": "open-url", "ActionBody": "https://shop.example/t/1", "Text": "Track"},
                {"ActionType": "reply", "ActionBody": "SLOT_AM", "Text": "Morning"},
            ],
        },
        "tracking_data": '{"parley_replies":{"SLOT_AM":"Morning"}}',
    }
    assert row.status == "sent" and int(row.provider_message_id) > 2**53
    assert int(row.provider_message_id) - 5098034272017990000 < 10**6  # the fake's token, not a rounded double
    [status] = await world.statuses(rid)
    assert status.status == ev.DELIVERY_STATUS_SENT and status.provider_message_id == row.provider_message_id


async def test_viber_picture_and_file_with_its_size_from_a_head_request(world: World) -> None:
    picture = await world.request(
        "viber",
        contact=VIBER_USER,
        text="Your bouquet",
        attachments=[ev.OutboundAttachment(kind=ev.MEDIA_KIND_IMAGE, url="https://cdn.example/b.jpg")],
    )
    url = f"{world.fake.url}/files/48211/invoice.pdf?sig=1"
    document = await world.request(
        "viber", contact=VIBER_USER, attachments=[ev.OutboundAttachment(kind=ev.MEDIA_KIND_FILE, url=url)]
    )
    assert (await world.final(picture)).status == (await world.final(document)).status == "sent"
    bodies = {c.json["type"]: c.json for c in world.calls("viber")}
    assert bodies["picture"]["media"] == "https://cdn.example/b.jpg" and bodies["picture"]["text"] == "Your bouquet"
    assert (bodies["file"]["media"], bodies["file"]["size"], bodies["file"]["file_name"]) == (url, 48211, "invoice.pdf")
    assert [r.method for r in world.fake.received("/files/")] == ["HEAD"]


async def test_viber_refuses_what_it_cannot_carry_without_calling_it(world: World) -> None:
    two = [ev.OutboundAttachment(kind=ev.MEDIA_KIND_IMAGE, url=f"https://cdn.example/{n}.jpg") for n in (1, 2)]
    video = [ev.OutboundAttachment(kind=ev.MEDIA_KIND_VIDEO, url=f"{world.fake.url}/missing.mp4")]
    requests = [
        await world.request("viber", contact=VIBER_USER, text="two files", attachments=two),
        await world.request("viber", contact=VIBER_USER, template=ev.OutboundTemplate(name="t", language="en")),
        await world.request("viber", contact=VIBER_USER, attachments=video),
        await world.request("viber", contact=VIBER_USER, text="x" * 7001),
    ]
    for rid in requests:
        row = await world.final(rid)
        assert row.status == "failed" and row.error_code == "unsupported_content", row.error_message
    assert world.calls("viber") == []


async def test_viber_rate_control_is_retried_and_unsubscribed_receivers_fail_at_once(world: World) -> None:
    world.fake.script("/viber/send_message", (200, {"status": 12, "status_message": "tooManyRequests"}))
    retried = await world.request("viber", contact=VIBER_USER, text="after the rate limit")
    row = await world.final(retried)
    assert row.status == "sent" and row.attempts == 2
    world.fake.script("/viber/send_message", (200, {"status": 6, "status_message": "receiverNotSubscribed"}))
    refused = await world.request("viber", contact="unsubscribed-user", text="hello?")
    row = await world.final(refused)
    assert row.status == "failed" and row.attempts == 1
    assert (row.error_code, row.error_message) == ("6", "receiverNotSubscribed")
    [status] = await world.statuses(refused)
    assert status.status == ev.DELIVERY_STATUS_FAILED and status.error_code == "6"


async def test_viber_http_errors_retry_on_5xx_and_fail_on_4xx(world: World) -> None:
    world.fake.script("/viber/send_message", (502, {}), (401, {"status_message": "unauthorized"}))
    rid = await world.request("viber", contact=VIBER_USER, text="bad gateway then 401")
    row = await world.final(rid)
    assert row.status == "failed" and row.attempts == 2 and row.error_code == "http_401"


async def test_channel_health_records_sends_and_errors(world: World) -> None:
    world.fake.script("/hook", (400, {"error": "bad recipient"}))
    rid = await world.request("custom", text="fails", contact="nobody", hours_ago=None)
    row = await world.final(rid)
    assert row.status == "failed" and row.error_code == "http_400"
    engine = db.create_engine(world.settings.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            channel = (
                await conn.execute(
                    text("SELECT * FROM channels WHERE id = :i"), {"i": world.channels["custom"].channel.id}
                )
            ).one()
    finally:
        await engine.dispose()
    assert channel.last_error_code == "http_400" and channel.consecutive_failures >= 1
    assert channel.last_outbound_at is not None  # from the earlier successful send


# -- telemetry --


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    telemetry.configure_tracing("channel-gateway-tests")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "tracing is disabled (OTEL_SDK_DISABLED?)"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_sends_and_provider_calls_are_counted_by_provider_status_and_outcome(world: World) -> None:
    sends = "parley_channel_gateway_outbound_sends_total"
    calls = "parley_channel_gateway_provider_request_duration_seconds_count"
    before = {
        "sent": _sample(sends, provider="messenger", status="sent"),
        "failed": _sample(sends, provider="messenger", status="failed"),
        "rejected": _sample(sends, provider="messenger", status="rejected"),
        "ok": _sample(calls, provider="messenger", outcome="ok"),
        "rate_limited": _sample(calls, provider="messenger", outcome="rate_limited"),
        "client_error": _sample(calls, provider="messenger", outcome="client_error"),
        "server_error": _sample(calls, provider="messenger", outcome="server_error"),
    }
    world.fake.script(
        f"/graph/{PAGE_ID}/messages",
        (400, {"error": {"message": "(#613) Calls to this api have exceeded the rate limit.", "code": 613}}),
        (500, {"error": {"message": "An unknown error occurred", "code": 1}}, {"Retry-After": "0"}),
    )
    retried = await world.request("messenger", text="rate limited, then a 500, then sent")
    assert (await world.final(retried)).status == "sent"
    world.fake.script(f"/graph/{PAGE_ID}/messages", (400, {"error": {"message": "(#100) Invalid", "code": 100}}))
    refused = await world.request("messenger", text="refused by the provider")
    assert (await world.final(refused)).status == "failed"
    late = await world.request("messenger", text="outside the window", hours_ago=30)
    assert (await world.final(late)).error_code == "window_closed"
    after = {
        "sent": _sample(sends, provider="messenger", status="sent"),
        "failed": _sample(sends, provider="messenger", status="failed"),
        "rejected": _sample(sends, provider="messenger", status="rejected"),
        "ok": _sample(calls, provider="messenger", outcome="ok"),
        "rate_limited": _sample(calls, provider="messenger", outcome="rate_limited"),
        "client_error": _sample(calls, provider="messenger", outcome="client_error"),
        "server_error": _sample(calls, provider="messenger", outcome="server_error"),
    }
    assert {k: after[k] - before[k] for k in before} == {
        "sent": 1,
        "failed": 1,
        "rejected": 1,  # refused by Parley's rules: no provider call
        "ok": 1,
        "rate_limited": 1,
        "client_error": 1,
        "server_error": 1,
    }


async def test_the_worker_span_continues_the_requester_s_trace_and_parents_each_provider_call(
    world: World, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    world.fake.script(
        f"/graph/{PAGE_ID}/messages", (429, {"error": {"message": "Too many calls", "code": 4}}, {"Retry-After": "0"})
    )
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    rid = await world.request("messenger", text="traced", publish=False)
    message = ev.OutboundSendRequest(
        request_id=rid, space_id=world.space_id, channel_id=world.channels["messenger"].channel.id,
        contact_external_id="5923481234567890", text="traced", origin="conversations", origin_ref=f"msg-{rid[:8]}",
    )  # fmt: skip
    message.contact_last_inbound_at.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    await world.publish(message, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert (await world.final(rid)).status == "sent"
    spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    (process,) = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert process.name == "process channel_gateway.outbound.requested"
    assert process.parent is not None and f"{process.parent.span_id:016x}" == parent_id
    assert process.attributes["messaging.consumer.group.name"] == "channel-gateway--outbound"
    assert process.attributes["parley.request_id"] == rid
    sends = sorted((s for s in spans if s.name == "send messenger"), key=lambda s: s.start_time)
    assert [s.kind for s in sends] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert all(s.parent is not None and s.parent.span_id == process.context.span_id for s in sends)
    assert [s.attributes["parley.attempt"] for s in sends] == [1, 2]
    assert [s.attributes["parley.outcome"] for s in sends] == ["rate_limited", "ok"]
    assert [s.attributes["http.response.status_code"] for s in sends] == [429, 200]
    assert sends[0].status.status_code == StatusCode.ERROR and sends[0].attributes["error.type"] == "4"
    assert sends[1].attributes["server.address"] == "127.0.0.1"
