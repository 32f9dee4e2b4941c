"""Property: whatever JSON a correctly signed webhook carries, the gateway answers without a 5xx and
without crashing (NATS is up here, so not even 503)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parley_channel_gateway.crypto import SecretBox
from parley_channel_gateway.inbound.signatures import sign_custom

PAGE_ID = "106385812345678"
IG_ID = "17841400000000001"
WA_PHONE_ID = "109876543210987"
LINE_SECRET = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"

scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
scalars = scalars | st.text(max_size=30) | st.sampled_from([PAGE_ID, IG_ID, WA_PHONE_ID, "message", "text", "mid"])
keys = st.text(max_size=12) | st.sampled_from(
    [
        "id",
        "sender",
        "recipient",
        "message",
        "mid",
        "text",
        "attachments",
        "type",
        "payload",
        "timestamp",
        "postback",
        "reaction",
        "delivery",
        "read",
        "messaging",
        "changes",
        "value",
        "metadata",
        "messages",
        "statuses",
        "contacts",
        "from",
        "chat",
        "message_id",
        "callback_query",
        "data",
        "contact",
        "external_id",
        "events",
        "source",
        "userId",
        "groupId",
        "webhookEventId",
        "replyToken",
    ]
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
page_items = st.dictionaries(keys, json_values, max_size=5).map(
    lambda d: {"sender": {"id": "5923481234567890"}, "recipient": {"id": PAGE_ID}, "timestamp": 1735725600000, **d}
)
bodies = {
    "messenger": json_values
    | st.builds(
        lambda items: {"object": "page", "entry": [{"id": PAGE_ID, "messaging": items}]},
        st.lists(page_items, max_size=3),
    )
    | st.builds(lambda e: {"object": "page", "entry": e}, json_values),
    "instagram": json_values
    | st.builds(
        lambda items: {"object": "instagram", "entry": [{"id": IG_ID, "messaging": items}]},
        st.lists(json_values, max_size=3),
    ),
    "whatsapp": json_values
    | st.builds(
        lambda value: {
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"value": {"metadata": {"phone_number_id": WA_PHONE_ID}, **value}}]}],
        },
        st.dictionaries(keys, json_values, max_size=5),
    ),
    "telegram": json_values
    | st.builds(
        lambda u, rest: {"update_id": u, **rest}, st.integers(), st.dictionaries(keys, json_values, max_size=4)
    ),
    "custom": json_values | st.dictionaries(keys, json_values, max_size=6),
    "line": json_values
    | st.builds(lambda events: {"destination": "U1", "events": events}, st.lists(json_values, max_size=4)),
    "viber": json_values
    | st.builds(
        lambda e, rest: {"event": e, **rest},
        st.sampled_from(["message", "delivered", "seen", "failed", "subscribed", "conversation_started", "x"]),
        st.dictionaries(keys, json_values, max_size=5),
    ),
}


@pytest.fixture(scope="module")
def fuzz_client(migrated: str, make_settings: Callable[..., Any], gw: Any, fake_provider: Any) -> Iterator[Any]:
    settings_ = make_settings()
    space = f"space-{uuid.uuid4().hex[:8]}"
    gw.run(gw.connect_channel(settings_, space, "messenger", page_id=PAGE_ID, page_access_token=gw.META_TOKEN))
    gw.run(gw.connect_channel(settings_, space, "instagram", ig_account_id=IG_ID, access_token=gw.META_TOKEN))
    gw.run(
        gw.connect_channel(
            settings_, space, "whatsapp", phone_number_id=WA_PHONE_ID, waba_id="1", access_token=gw.META_TOKEN
        )
    )
    telegram = gw.run(gw.connect_channel(settings_, space, "telegram", bot_token=gw.BOT_TOKEN))
    custom = gw.run(gw.connect_channel(settings_, space, "custom", outbound_webhook_url=fake_provider.url + "/hook"))
    line = gw.run(
        gw.connect_channel(settings_, space, "line", channel_secret=LINE_SECRET, channel_access_token=gw.META_TOKEN)
    )
    fake_provider.script("/viber/get_account_info", (200, {"status": 0, "id": f"pa:fuzz-{space}", "name": "Fuzz"}))
    viber = gw.run(gw.connect_channel(settings_, space, "viber", auth_token=gw.VIBER_TOKEN))
    box = SecretBox(settings_.channel_gateway_encryption_key)
    client = gw.WebClient(settings_)
    gw.wait_until(lambda: client.get("/readyz").status_code == 200, timeout=20)

    def post(provider: str, payload: Any) -> Any:
        raw = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if provider == "telegram":
            headers["X-Telegram-Bot-Api-Secret-Token"] = box.open(telegram.channel.secrets)["secret_token"]
            return client.post(f"/webhooks/telegram/{telegram.channel.id}", data=raw, headers=headers)
        if provider == "custom":
            headers["X-Parley-Signature"] = sign_custom(raw, custom.webhook_secret)
            return client.post(f"/webhooks/custom/{custom.channel.id}", data=raw, headers=headers)
        if provider == "line":
            signature = hmac.new(LINE_SECRET.encode(), raw, hashlib.sha256).digest()
            headers["X-Line-Signature"] = base64.b64encode(signature).decode()
            return client.post(f"/webhooks/line/{line.channel.id}", data=raw, headers=headers)
        if provider == "viber":
            headers["X-Viber-Content-Signature"] = hmac.new(gw.VIBER_TOKEN.encode(), raw, hashlib.sha256).hexdigest()
            return client.post(f"/webhooks/viber/{viber.channel.id}", data=raw, headers=headers)
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(gw.APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        return client.post(f"/webhooks/{provider}", data=raw, headers=headers)

    yield post
    client.close()


@pytest.mark.parametrize("provider", sorted(bodies))
def test_arbitrary_signed_json_never_gets_a_5xx(fuzz_client: Any, provider: str) -> None:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(payload=bodies[provider])
    def check(payload: Any) -> None:
        response = fuzz_client(provider, payload)
        assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])
        assert response.is_json
        if response.status_code == 200:
            assert response.json["status"] == "ok"

    check()
