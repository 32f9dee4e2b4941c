"""Webhooks end to end: signed provider bodies reach JetStream as canonical events on the contact's
partition subject, and every refusal answers a JSON error and publishes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley_channel_gateway.inbound import (
    parse_custom,
    parse_instagram,
    parse_line,
    parse_messenger,
    parse_telegram,
    parse_viber,
    parse_whatsapp,
)
from parley_channel_gateway.inbound.signatures import sign_custom
from parley_kit.contracts import channel_gateway as contract

PAGE_ID = "106385812345678"
IG_ID = "17841400000000001"
WA_PHONE_ID = "109876543210987"
LINE_SECRET = "3f6e2a9c0b1d4e5f8a7b6c5d4e3f2a1b"


def meta_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def line_signature(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


class Gateway:
    """The webhook app under test, with its connected channels and signing helpers."""

    def __init__(self, client: Any, gw: Any, settings: Any, channels: dict[str, Any], space_id: str) -> None:
        self.client = client
        self.gw = gw
        self.settings = settings
        self.channels = channels
        self.space_id = space_id

    def post_meta(self, provider: str, body: bytes, *, signature: str | None = "valid", **headers: str) -> Any:
        hdrs = {"Content-Type": "application/json", **headers}
        if signature == "valid":
            hdrs["X-Hub-Signature-256"] = meta_signature(body, self.gw.APP_SECRET)
        elif signature is not None:
            hdrs["X-Hub-Signature-256"] = signature
        return self.client.post(f"/webhooks/{provider}", data=body, headers=hdrs)

    def post_telegram(self, body: bytes, *, secret: str | None = "valid", channel_id: str = "") -> Any:
        channel = self.channels["telegram"]
        hdrs = {"Content-Type": "application/json"}
        if secret is not None:
            hdrs["X-Telegram-Bot-Api-Secret-Token"] = self.telegram_secret if secret == "valid" else secret
        return self.client.post(f"/webhooks/telegram/{channel_id or channel.channel.id}", data=body, headers=hdrs)

    def post_custom(self, body: bytes, *, signature: str | None = "valid") -> Any:
        channel = self.channels["custom"]
        hdrs = {"Content-Type": "application/json"}
        if signature == "valid":
            hdrs["X-Parley-Signature"] = sign_custom(body, channel.webhook_secret)
        elif signature is not None:
            hdrs["X-Parley-Signature"] = signature
        return self.client.post(f"/webhooks/custom/{channel.channel.id}", data=body, headers=hdrs)

    def post_line(self, body: bytes, *, signature: str | None = "valid", channel_id: str = "") -> Any:
        hdrs = {"Content-Type": "application/json"}
        if signature == "valid":
            hdrs["X-Line-Signature"] = line_signature(body, LINE_SECRET)
        elif signature is not None:
            hdrs["X-Line-Signature"] = signature
        return self.client.post(
            f"/webhooks/line/{channel_id or self.channels['line'].channel.id}", data=body, headers=hdrs
        )

    def post_viber(self, body: bytes, *, signature: str | None = "valid", channel_id: str = "") -> Any:
        hdrs = {"Content-Type": "application/json"}
        if signature == "valid":
            hdrs["X-Viber-Content-Signature"] = hmac.new(self.gw.VIBER_TOKEN.encode(), body, hashlib.sha256).hexdigest()
        elif signature is not None:
            hdrs["X-Viber-Content-Signature"] = signature
        return self.client.post(f"/webhooks/viber/{channel_id or self.channels['viber'].channel.id}", body, hdrs)

    def post(self, provider: str, body: bytes) -> Any:
        if provider == "line":
            return self.post_line(body)
        if provider == "telegram":
            return self.post_telegram(body)
        if provider == "custom":
            return self.post_custom(body)
        if provider == "viber":
            return self.post_viber(body)
        return self.post_meta(provider, body)

    @property
    def telegram_secret(self) -> str:
        from parley_channel_gateway.crypto import SecretBox

        return SecretBox(self.settings.channel_gateway_encryption_key).open(self.channels["telegram"].channel.secrets)[
            "secret_token"
        ]

    def events(self, provider: str) -> list[Any]:
        return self.gw.run(
            self.gw.inbound_events(self.settings.nats_url, channel_id=self.channels[provider].channel.id)
        )


@pytest.fixture(scope="module")
def gateway(migrated: str, make_settings: Callable[..., Any], gw: Any, fake_provider: Any) -> Iterator[Gateway]:
    # Its own service name: the serving gauge is process-wide, and other modules' gateways set theirs.
    service = f"channel-gateway-{uuid.uuid4().hex[:6]}"
    settings = make_settings(channel_gateway_max_body_bytes=65_536, service_name=service)
    space_id = f"space-{uuid.uuid4().hex[:8]}"
    channels = {
        "messenger": gw.run(
            gw.connect_channel(settings, space_id, "messenger", page_id=PAGE_ID, page_access_token=gw.META_TOKEN)
        ),
        "instagram": gw.run(
            gw.connect_channel(settings, space_id, "instagram", ig_account_id=IG_ID, access_token=gw.META_TOKEN)
        ),
        "whatsapp": gw.run(
            gw.connect_channel(
                settings, space_id, "whatsapp", phone_number_id=WA_PHONE_ID, waba_id="2222", access_token=gw.META_TOKEN
            )
        ),
        "telegram": gw.run(gw.connect_channel(settings, space_id, "telegram", bot_token=gw.BOT_TOKEN)),
        "custom": gw.run(
            gw.connect_channel(settings, space_id, "custom", outbound_webhook_url=fake_provider.url + "/hook")
        ),
        "line": gw.run(
            gw.connect_channel(
                settings,
                space_id,
                "line",
                channel_secret=LINE_SECRET,
                channel_access_token="lineAccessToken0123456789=",
            )
        ),
        "viber": viber_channel(gw, settings, space_id, fake_provider),
    }
    client = gw.WebClient(settings)
    gw.wait_until(lambda: client.get("/readyz").status_code == 200, timeout=20)
    yield Gateway(client, gw, settings, channels, space_id)
    client.close()


def viber_channel(gw: Any, settings: Any, space_id: str, fake: Any) -> Any:
    fake.script("/viber/get_account_info", (200, {"status": 0, "id": f"pa:{space_id}", "name": "Webhook Bot"}))
    return gw.run(gw.connect_channel(settings, space_id, "viber", auth_token=gw.VIBER_TOKEN))


# -- Meta's verification handshake ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["messenger", "instagram", "whatsapp"])
def test_meta_verification_echoes_the_challenge_only_for_the_right_token(gateway: Gateway, provider: str) -> None:
    ok = gateway.client.get(
        f"/webhooks/{provider}",
        query_string={
            "hub.mode": "subscribe",
            "hub.verify_token": gateway.gw.VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert ok.status_code == 200 and ok.data == b"1158201444"
    wrong = gateway.client.get(
        f"/webhooks/{provider}",
        query_string={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1158201444"},
    )
    assert wrong.status_code == 403 and wrong.json["error"] == "verification_failed"
    bad_mode = gateway.client.get(
        f"/webhooks/{provider}",
        query_string={"hub.mode": "unsubscribe", "hub.verify_token": gateway.gw.VERIFY_TOKEN, "hub.challenge": "1"},
    )
    assert bad_mode.status_code == 403


# -- signed bodies reach JetStream --

CASES = [
    ("messenger", "message_text", ev.INBOUND_KIND_MESSAGE),
    ("messenger", "postback", ev.INBOUND_KIND_POSTBACK),
    ("messenger", "delivery", ev.INBOUND_KIND_DELIVERY),
    ("messenger", "read", ev.INBOUND_KIND_READ),
    ("messenger", "reaction", ev.INBOUND_KIND_REACTION),
    ("messenger", "echo_template", ev.INBOUND_KIND_ECHO),
    ("messenger", "referral", ev.INBOUND_KIND_REFERRAL),
    ("messenger", "optin", ev.INBOUND_KIND_OPTIN),
    ("messenger", "edit", ev.INBOUND_KIND_EDIT),
    ("messenger", "unknown", ev.INBOUND_KIND_UNKNOWN),
    ("instagram", "message_text", ev.INBOUND_KIND_MESSAGE),
    ("instagram", "reaction", ev.INBOUND_KIND_REACTION),
    ("instagram", "seen", ev.INBOUND_KIND_READ),
    ("instagram", "postback", ev.INBOUND_KIND_POSTBACK),
    ("whatsapp", "message_text", ev.INBOUND_KIND_MESSAGE),
    ("whatsapp", "interactive", ev.INBOUND_KIND_POSTBACK),
    ("whatsapp", "statuses", ev.INBOUND_KIND_STATUS),
    ("whatsapp", "reaction", ev.INBOUND_KIND_REACTION),
    ("telegram", "message_text", ev.INBOUND_KIND_MESSAGE),
    ("telegram", "callback_query", ev.INBOUND_KIND_POSTBACK),
    ("telegram", "edited_message", ev.INBOUND_KIND_EDIT),
    ("telegram", "my_chat_member", ev.INBOUND_KIND_MEMBERSHIP),
    ("custom", "message", ev.INBOUND_KIND_MESSAGE),
    ("custom", "postback", ev.INBOUND_KIND_POSTBACK),
    ("line", "message_text", ev.INBOUND_KIND_MESSAGE),
    ("line", "postback", ev.INBOUND_KIND_POSTBACK),
    ("line", "follow", ev.INBOUND_KIND_OPTIN),
    ("line", "unsend", ev.INBOUND_KIND_DELETE),
    ("viber", "message_text", ev.INBOUND_KIND_MESSAGE),
    ("viber", "message_keyboard_reply", ev.INBOUND_KIND_POSTBACK),
    ("viber", "delivered", ev.INBOUND_KIND_DELIVERY),
    ("viber", "seen", ev.INBOUND_KIND_READ),
    ("viber", "failed", ev.INBOUND_KIND_STATUS),
    ("viber", "subscribed", ev.INBOUND_KIND_OPTIN),
    ("viber", "conversation_started", ev.INBOUND_KIND_REFERRAL),
    ("viber", "client_status", ev.INBOUND_KIND_UNKNOWN),
]


@pytest.mark.parametrize(("provider", "fixture", "kind"), CASES, ids=[f"{p}-{f}" for p, f, _ in CASES])
def test_signed_webhook_reaches_jetstream_as_canonical_event_on_the_contact_partition(
    gateway: Gateway, body: Callable[[str, str], bytes], provider: str, fixture: str, kind: int
) -> None:
    raw = body(provider, fixture)
    before = {p.event.event_id for p in gateway.events(provider)}
    response = gateway.post(provider, raw)
    assert response.status_code == 200, response.json
    assert response.json["published"] >= 1
    new = [p for p in gateway.events(provider) if p.event.event_id not in before]
    assert kind in {p.event.kind for p in new}
    channel = gateway.channels[provider].channel
    for published in new:
        event = published.event
        assert event.space_id == gateway.space_id and event.channel_id == channel.id
        assert event.received_at.seconds > 0
        assert published.headers["Nats-Msg-Id"] == event.event_id
        assert "traceparent" in published.headers
        assert published.subject == contract.inbound_subject(gateway.space_id, channel.id, event.contact_external_id)


FIXTURES = Path(__file__).parent.parent / "fixtures"
ALL_FIXTURES = sorted(
    (provider.name, path.stem)
    for provider in FIXTURES.iterdir()
    if provider.is_dir()
    for path in provider.glob("*.json")
)


def _expected_items(gateway: Gateway, provider: str, raw: bytes) -> tuple[list[Any], int]:
    """The parser's events for `raw`, and how many items route to no channel of ours."""
    channel = gateway.channels[provider].channel
    if provider == "telegram":
        return [i.event for i in parse_telegram(raw, channel_id=channel.id)], 0
    if provider == "custom":
        return [i.event for i in parse_custom(raw, channel_id=channel.id)], 0
    if provider == "line":
        return [i.event for i in parse_line(raw, channel_id=channel.id)], 0
    if provider == "viber":
        return [i.event for i in parse_viber(raw, channel_id=channel.id)], 0
    parser = {"messenger": parse_messenger, "instagram": parse_instagram, "whatsapp": parse_whatsapp}[provider]
    items = parser(raw)
    routed = [i.event for i in items if channel.external_id in i.channel_keys]
    return routed, len(items) - len(routed)


@pytest.mark.parametrize(("provider", "fixture"), ALL_FIXTURES, ids=[f"{p}-{f}" for p, f in ALL_FIXTURES])
def test_every_fixture_publishes_exactly_the_parsers_events(gateway: Gateway, provider: str, fixture: str) -> None:
    raw = (FIXTURES / provider / f"{fixture}.json").read_bytes()
    if provider == "custom":  # a fresh id: the same event may have been published by another test
        doc = json.loads(raw)
        doc["id"] = f"{doc['id']}-{uuid.uuid4().hex[:6]}"
        raw = json.dumps(doc).encode()
    expected, ignored = _expected_items(gateway, provider, raw)
    response = gateway.post(provider, raw)
    assert response.status_code == 200, response.json
    assert response.json == {"status": "ok", "published": len(expected), "ignored": ignored}
    published = {p.event.event_id: p for p in gateway.events(provider)}
    channel = gateway.channels[provider].channel
    for event in expected:
        found = published[event.event_id]
        assert found.event.kind == event.kind and list(found.event.parts) == list(event.parts)
        assert found.headers["Nats-Msg-Id"] == event.event_id
        assert found.subject == contract.inbound_subject(gateway.space_id, channel.id, event.contact_external_id)


def test_one_contacts_events_share_a_partition_subject_in_order(gateway: Gateway) -> None:
    psid = "77" + uuid.uuid4().hex[:10].translate(str.maketrans("abcdef", "123456"))
    mids = [f"m_order_{uuid.uuid4().hex[:8]}_{i}" for i in range(5)]
    for i, mid in enumerate(mids):
        item = {
            "sender": {"id": psid},
            "recipient": {"id": PAGE_ID},
            "timestamp": 1735725600000 + i,
            "message": {"mid": mid, "text": f"message {i}"},
        }
        raw = json.dumps({"object": "page", "entry": [{"id": PAGE_ID, "time": 1, "messaging": [item]}]}).encode()
        assert gateway.post_meta("messenger", raw).status_code == 200
    mine = [p for p in gateway.events("messenger") if p.event.contact_external_id == psid]
    assert [p.event.provider_message_id for p in mine] == mids
    assert len({p.subject for p in mine}) == 1


def test_the_providers_trace_continues_through_the_publish(gateway: Gateway) -> None:
    trace_id = uuid.uuid4().hex
    raw, mid = _fresh_messenger_body("traced")
    response = gateway.post_meta("messenger", raw, traceparent=f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01")
    assert response.status_code == 200
    [published] = [p for p in gateway.events("messenger") if p.event.provider_message_id == mid]
    assert published.headers["traceparent"].split("-")[1] == trace_id


def test_a_batched_body_publishes_every_item(gateway: Gateway) -> None:
    items = [
        {
            "sender": {"id": f"5{i}00{i}"},
            "recipient": {"id": PAGE_ID},
            "timestamp": 1735725600000 + i,
            "message": {"mid": f"m_batch_{uuid.uuid4().hex[:10]}", "text": "hi"},
        }
        for i in range(4)
    ]
    entries = [{"id": PAGE_ID, "time": 1, "messaging": items[:2]}, {"id": PAGE_ID, "time": 2, "messaging": items[2:]}]
    raw = json.dumps({"object": "page", "entry": entries}).encode()
    response = gateway.post_meta("messenger", raw)
    assert response.status_code == 200 and response.json["published"] == 4
    mids = {p.event.provider_message_id for p in gateway.events("messenger")}
    assert {i["message"]["mid"] for i in items} <= mids


# -- refusals publish nothing --


def _fresh_messenger_body(text: str = "hello") -> tuple[bytes, str]:
    mid = f"m_{uuid.uuid4().hex}"
    item = {
        "sender": {"id": "5923481234567890"},
        "recipient": {"id": PAGE_ID},
        "timestamp": 1735725600000,
        "message": {"mid": mid, "text": text},
    }
    return json.dumps({"object": "page", "entry": [{"id": PAGE_ID, "time": 1, "messaging": [item]}]}).encode(), mid


def _published_mids(gateway: Gateway, provider: str = "messenger") -> set[str]:
    return {p.event.provider_message_id for p in gateway.events(provider)}


@pytest.mark.parametrize("provider", ["messenger", "instagram", "whatsapp"])
def test_meta_missing_signature_is_401_and_forged_is_403_and_nothing_is_published(
    gateway: Gateway, body: Callable[[str, str], bytes], provider: str
) -> None:
    raw = body(provider, "message_text").replace(b"Hi", b"Forged hi").replace(b"hello", b"forged hello")
    before = len(gateway.events(provider))
    missing = gateway.post_meta(provider, raw, signature=None)
    assert missing.status_code == 401 and missing.json["error"] == "signature_missing"
    forged = gateway.post_meta(provider, raw, signature=meta_signature(raw, "not-the-app-secret"))
    assert forged.status_code == 403 and forged.json["error"] == "signature_invalid"
    garbage = gateway.post_meta(provider, raw, signature="sha256=zz")
    assert garbage.status_code == 403
    assert len(gateway.events(provider)) == before


def test_telegram_missing_or_wrong_secret_token_is_refused(gateway: Gateway, body: Callable[[str, str], bytes]) -> None:
    raw = json.loads(body("telegram", "message_text"))
    raw["update_id"] = 990001
    raw["message"]["message_id"] = 990001
    data = json.dumps(raw).encode()
    before = len(gateway.events("telegram"))
    assert gateway.post_telegram(data, secret=None).status_code == 401
    assert gateway.post_telegram(data, secret="wrong-secret").status_code == 403
    assert len(gateway.events("telegram")) == before
    assert gateway.post_telegram(data).status_code == 200
    assert len(gateway.events("telegram")) == before + 1


def test_line_missing_or_forged_signature_is_refused(gateway: Gateway, body: Callable[[str, str], bytes]) -> None:
    raw = json.loads(body("line", "message_text"))
    raw["events"][0]["webhookEventId"] = f"01TEST{uuid.uuid4().hex[:20].upper()}"
    data = json.dumps(raw).encode()
    before = len(gateway.events("line"))
    missing = gateway.post_line(data, signature=None)
    assert missing.status_code == 401 and missing.json["error"] == "signature_missing"
    forged = gateway.post_line(data, signature=line_signature(data, "0" * 32))
    assert forged.status_code == 403 and forged.json["error"] == "signature_invalid"
    assert gateway.post_line(data, signature="%%%").status_code == 403
    assert len(gateway.events("line")) == before
    assert gateway.post_line(data).json == {"status": "ok", "published": 1, "ignored": 0}
    assert len(gateway.events("line")) == before + 1


def test_line_console_verify_is_answered_200_and_publishes_nothing(
    gateway: Gateway, doc: Callable[[str, str], dict]
) -> None:
    dummy = doc("line", "message_text")
    dummy["events"] = [dict(dummy["events"][0], replyToken=token) for token in ("0" * 32, "f" * 32)]
    before = len(gateway.events("line"))
    for body in (json.dumps(doc("line", "verify")).encode(), json.dumps(dummy).encode()):
        response = gateway.post_line(body)
        assert response.status_code == 200 and response.json == {"status": "ok", "published": 0, "ignored": 0}
    assert len(gateway.events("line")) == before
    assert gateway.post_line(b'{"destination": "U1"}').status_code == 400
    assert gateway.post_line(b"{}", channel_id=str(uuid.uuid4())).status_code == 404


def test_custom_missing_forged_or_stale_signature_is_refused(
    gateway: Gateway, body: Callable[[str, str], bytes]
) -> None:
    raw = json.loads(body("custom", "message"))
    raw["id"] = f"app-msg-{uuid.uuid4().hex[:10]}"
    data = json.dumps(raw).encode()
    secret = gateway.channels["custom"].webhook_secret
    before = len(gateway.events("custom"))
    assert gateway.post_custom(data, signature=None).status_code == 401
    assert gateway.post_custom(data, signature=sign_custom(data, "another-secret")).status_code == 403
    stale = gateway.post_custom(data, signature=sign_custom(data, secret, timestamp=int(time.time()) - 3600))
    assert stale.status_code == 403 and stale.json["error"] == "signature_stale"
    assert len(gateway.events("custom")) == before


def test_viber_missing_or_forged_signature_is_refused(gateway: Gateway, doc: Callable[[str, str], dict]) -> None:
    raw = doc("viber", "message_text")
    raw["message_token"] = 7014185462843000000 + uuid.uuid4().int % 100000
    data = json.dumps(raw).encode()
    before = len(gateway.events("viber"))
    assert gateway.post_viber(data, signature=None).status_code == 401
    forged = hmac.new(b"another-token-0123456789", data, hashlib.sha256).hexdigest()
    assert gateway.post_viber(data, signature=forged).json["error"] == "signature_invalid"
    assert gateway.post_viber(data, signature="not-hex").status_code == 403
    assert len(gateway.events("viber")) == before
    assert gateway.post_viber(data).json == {"status": "ok", "published": 1, "ignored": 0}
    [new] = [p for p in gateway.events("viber")][before:]
    assert new.event.provider_message_id == str(raw["message_token"])  # exact through JSON, protobuf and NATS


def test_viber_webhook_setup_check_is_200_before_the_channel_exists(
    gateway: Gateway, body: Callable[[str, str], bytes]
) -> None:
    before = len(gateway.events("viber"))
    for channel_id in (str(uuid.uuid4()), gateway.channels["viber"].channel.id):
        response = gateway.post_viber(body("viber", "webhook"), signature=None, channel_id=channel_id)
        assert response.status_code == 200 and response.json == {"status": "ok", "published": 0, "ignored": 0}
    assert len(gateway.events("viber")) == before
    unknown = gateway.post_viber(body("viber", "message_text"), channel_id=str(uuid.uuid4()))
    assert unknown.status_code == 404 and unknown.json["error"] == "unknown_channel"
    assert gateway.post_viber(b'{"no_event": true}').json["error"] == "invalid_envelope"


def test_same_webhook_delivered_three_times_publishes_one_event(gateway: Gateway) -> None:
    raw, mid = _fresh_messenger_body("retry me")
    for _ in range(3):
        assert gateway.post_meta("messenger", raw).status_code == 200
    assert [p.event.provider_message_id for p in gateway.events("messenger")].count(mid) == 1


def test_malformed_json_wrong_content_type_and_oversize_bodies_get_json_errors_and_publish_nothing(
    gateway: Gateway,
) -> None:
    raw, mid = _fresh_messenger_body()
    malformed = b'{"object": "page", "entry": [' + mid.encode()
    response = gateway.post_meta("messenger", malformed)
    assert response.status_code == 400 and response.is_json and response.json["error"]
    not_object = gateway.post_meta("messenger", b'{"object": "instagram", "entry": []}')
    assert not_object.status_code == 400 and not_object.is_json
    wrong_type = gateway.client.post(
        "/webhooks/messenger",
        data=raw,
        headers={"Content-Type": "text/plain", "X-Hub-Signature-256": meta_signature(raw, gateway.gw.APP_SECRET)},
    )
    assert wrong_type.status_code == 415 and wrong_type.json["error"] == "unsupported_media_type"
    big, big_mid = _fresh_messenger_body("x" * 70_000)
    oversize = gateway.post_meta("messenger", big)
    assert oversize.status_code == 413 and oversize.json["error"] == "body_too_large"
    custom_big = gateway.post_custom(b'{"id": "' + b"y" * 70_000 + b'"}')
    assert custom_big.status_code == 413 and custom_big.is_json
    mids = _published_mids(gateway)
    assert mid not in mids and big_mid not in mids


def test_unknown_page_is_answered_200_counted_and_not_published(gateway: Gateway) -> None:
    from prometheus_client import REGISTRY

    def unknown_count() -> float:
        return (
            REGISTRY.get_sample_value("parley_channel_gateway_unknown_channel_total", {"channel_type": "messenger"})
            or 0
        )

    counted = unknown_count()
    mid = f"m_{uuid.uuid4().hex}"
    item = {
        "sender": {"id": "1"},
        "recipient": {"id": "999000999"},
        "timestamp": 1,
        "message": {"mid": mid, "text": "?"},
    }
    raw = json.dumps({"object": "page", "entry": [{"id": "999000999", "time": 1, "messaging": [item]}]}).encode()
    response = gateway.post_meta("messenger", raw)
    assert response.status_code == 200 and response.json == {"status": "ok", "published": 0, "ignored": 1}
    assert unknown_count() == counted + 1
    all_mids = {
        p.event.provider_message_id
        for p in gateway.gw.run(gateway.gw.inbound_events(gateway.settings.nats_url, space_id=gateway.space_id))
    }
    assert mid not in all_mids


def test_unknown_channel_in_url_is_404_json(gateway: Gateway) -> None:
    response = gateway.post_telegram(b'{"update_id": 1}', channel_id=str(uuid.uuid4()))
    assert response.status_code == 404 and response.json["error"] == "unknown_channel"
    other_type = gateway.client.post(
        f"/webhooks/custom/{gateway.channels['telegram'].channel.id}",
        data=b"{}",
        headers={"Content-Type": "application/json", "X-Parley-Signature": "t=1,v1=" + "0" * 64},
    )
    assert other_type.status_code == 404


def test_metrics_expose_red_by_route_template_and_inbound_counts(gateway: Gateway) -> None:
    text = gateway.client.get("/metrics").data.decode()
    assert 'route="/webhooks/telegram/<channel_id>"' in text
    assert "parley_http_request_duration_seconds_bucket" in text
    assert 'parley_channel_gateway_inbound_events_total{channel_type="messenger",kind="message"}' in text
    assert gateway.client.get("/healthz").json == {"status": "ok"}


def test_healthz_fails_once_the_bridge_has_died_on_its_own(gateway: Gateway) -> None:
    settings = gateway.settings.model_copy(update={"service_name": f"channel-gateway-{uuid.uuid4().hex[:6]}"})
    client = gateway.gw.WebClient(settings)  # its own serving gauge: the module's gateway keeps serving
    try:
        gateway.gw.wait_until(lambda: client.get("/readyz").status_code == 200, timeout=20)
        assert client.get("/healthz").status_code == 200
        bridge = client.server.bridge
        client.loop.call_soon_threadsafe(bridge._main_task.cancel)  # as if it had crashed
        gateway.gw.wait_until(lambda: bridge._main_task.done(), timeout=10)
        answer = client.get("/healthz")
        assert answer.status_code == 503 and answer.json["error"] == "not_alive"
    finally:
        client.close()


def test_accepted_webhooks_move_the_channels_last_inbound_time(gateway: Gateway) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(gateway.settings.database_url.replace("+asyncpg", "+psycopg"))
    channel_id = gateway.channels["whatsapp"].channel.id

    def last_inbound() -> object:
        with engine.connect() as conn:
            return conn.execute(text("SELECT last_inbound_at FROM channels WHERE id = :i"), {"i": channel_id}).scalar()

    try:
        gateway.gw.wait_until(last_inbound, timeout=15)
    finally:
        engine.dispose()


def _serving(gateway: Gateway) -> float:
    """The web process's parley_service_serving gauge."""
    text = gateway.client.get("/metrics").data.decode()
    series = f'parley_service_serving{{service="{gateway.settings.service_name}"}} '
    return float(next(ln for ln in text.splitlines() if ln.startswith(series)).split()[-1])


def test_serving_gauge_is_set_while_connected(gateway: Gateway) -> None:
    assert _serving(gateway) == 1.0


def test_nats_down_answers_503_then_the_providers_retry_is_accepted_once(gateway: Gateway, nats_server: Any) -> None:
    raw, mid = _fresh_messenger_body("during an outage")
    nats_server.stop()
    try:
        gateway.gw.wait_until(lambda: gateway.client.get("/readyz").status_code == 503, timeout=10)
        assert gateway.client.get("/healthz").status_code == 200  # liveness: a restart would not bring NATS back
        down = gateway.post_meta("messenger", raw)
        assert down.status_code == 503 and down.json["error"] == "unavailable"
        gateway.gw.wait_until(lambda: _serving(gateway) == 0.0, timeout=10)
    finally:
        nats_server.start()
    gateway.gw.wait_until(lambda: gateway.client.get("/readyz").status_code == 200, timeout=20)
    gateway.gw.wait_until(lambda: _serving(gateway) == 1.0, timeout=10)
    assert gateway.post_meta("messenger", raw).status_code == 200
    assert gateway.post_meta("messenger", raw).status_code == 200
    assert [p.event.provider_message_id for p in gateway.events("messenger")].count(mid) == 1
