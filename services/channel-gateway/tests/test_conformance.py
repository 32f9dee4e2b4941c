"""Real webhook bodies from other public projects (the shared conformance set) run through the parsers.

Runs when `../shared/conformance/webhooks` beside the repository exists (or PARLEY_CONFORMANCE_WEBHOOKS names
the folder); skipped otherwise. The files are read in place, never copied here. Single `messaging[]` items and
partial Telegram updates are wrapped in an envelope first, as the folder's SOURCES.md asks; Twilio's form fields,
written there as JSON objects, are form-encoded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from parley.channel_gateway.v1 import events_pb2 as ev
from parley_channel_gateway.inbound import (
    InvalidEnvelope,
    ParsedItem,
    Verdict,
    parse_form,
    parse_instagram,
    parse_line,
    parse_messenger,
    parse_telegram,
    parse_twilio_sms,
    parse_viber,
    parse_whatsapp,
    verify_line_signature,
    verify_meta_signature,
    verify_twilio_signature,
)

WEBHOOKS = Path(
    os.environ.get("PARLEY_CONFORMANCE_WEBHOOKS")
    or Path(__file__).resolve().parents[3].parent / "shared" / "conformance" / "webhooks"
)
pytestmark = pytest.mark.skipif(not WEBHOOKS.is_dir(), reason=f"no conformance set at {WEBHOOKS}")

# Files that are not webhook bodies of their route, with why: the parser must refuse them with InvalidEnvelope.
REFUSED = {
    "messenger/messenger4j_23.json": 'object "testValue" is not a Page webhook',
    "telegram/TelegramBots_4.json": "a Bot API error response, not an Update",
    "telegram/TelegramBots_5.json": "a Bot API error response, not an Update",
}
# Items of a known kind that still become UNKNOWN, with why.
UNKNOWN_ON_PURPOSE = {
    "telegram/TelegramBots_3.json": "a service message (write_access_allowed) carries no content",
}
META_KINDS = ("message", "message_edit", "reaction", "postback", "delivery", "read", "referral", "optin")
WHATSAPP_TYPES = {"text", "image", "audio", "video", "document", "sticker", "location", "contacts", "interactive"}
WHATSAPP_TYPES |= {"button", "reaction", "order", "system", "unsupported", "edit", "revoke"}
TELEGRAM_FIELDS = ("message", "edited_message", "channel_post", "edited_channel_post", "callback_query")
TELEGRAM_FIELDS += ("my_chat_member",)
LINE_EVENTS = ("postback", "follow", "unfollow", "join", "leave", "unsend")
LINE_MESSAGES = ("text", "image", "video", "audio", "file", "location", "sticker")
VIBER_EVENTS = ("subscribed", "unsubscribed", "conversation_started", "delivered", "seen", "failed")
VIBER_TYPES = ("text", "picture", "video", "file", "sticker", "contact", "location", "url")


def files(provider: str) -> list[str]:
    folder = WEBHOOKS / provider
    return sorted(f"{provider}/{path.name}" for path in folder.glob("*.json")) if folder.is_dir() else []


def as_list(container: dict, key: str) -> list[Any]:
    value = container.get(key)
    return [] if value is None else value if isinstance(value, list) else [value]


def meta_items(document: dict) -> list[tuple[Any, bool]]:
    """Every item of a Meta envelope, with whether Parley knows its kind."""
    found = []
    for entry in document["entry"]:
        for item in as_list(entry, "messaging") + as_list(entry, "standby"):
            found.append((item, any(isinstance(item.get(key), dict) for key in META_KINDS)))
        found += [(change, False) for change in as_list(entry, "changes")]
    return found


def check(items: list[ParsedItem], expected: list[bool], name: str) -> None:
    """Every item became one event with a unique id and its raw JSON; known kinds are not UNKNOWN."""
    assert len(items) == len(expected)
    assert len({item.event.event_id for item in items}) == len(items)
    for item, known in zip(items, expected, strict=True):
        json.loads(item.event.raw_json)
        assert item.event.event_id
        if known and name not in UNKNOWN_ON_PURPOSE:
            assert item.event.kind != ev.INBOUND_KIND_UNKNOWN, item.event.raw_json


def load(name: str) -> dict:
    return json.loads((WEBHOOKS / name).read_bytes())


def refused(name: str, parse: Any, raw: bytes) -> bool:
    if name not in REFUSED:
        return False
    with pytest.raises(InvalidEnvelope):
        parse(raw)
    return True


@pytest.mark.parametrize("name", files("messenger"))
def test_messenger(name: str) -> None:
    if refused(name, parse_messenger, (WEBHOOKS / name).read_bytes()):
        return
    document = load(name)
    if "entry" not in document:  # a single messaging[] item
        document = {"object": "page", "entry": [{"id": "conformance-page", "time": 0, "messaging": [document]}]}
    raw = json.dumps(document).encode()
    items = parse_messenger(raw)
    check(items, [known for _, known in meta_items(document)], name)
    assert [i.event.event_id for i in items] == [i.event.event_id for i in parse_messenger(raw)]
    for (source, _), item in zip(meta_items(document), items, strict=True):
        if isinstance(source.get("message"), dict) and source["message"].get("is_echo"):
            assert item.event.kind == ev.INBOUND_KIND_ECHO
            assert item.event.contact_external_id == source["recipient"]["id"]


@pytest.mark.parametrize("name", files("instagram"))
def test_instagram(name: str) -> None:
    document = {"object": "instagram", **load(name)}  # the factories omit "object"
    items = parse_instagram(json.dumps(document))
    check(items, [known for _, known in meta_items(document)], name)


def whatsapp_items(document: dict) -> list[bool]:
    expected = []
    for entry in document["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            known = [m.get("type") in WHATSAPP_TYPES for m in as_list(value, "messages")]
            known += [True for _ in as_list(value, "message_echoes") + as_list(value, "statuses")]
            expected += known or [False]
    return expected


@pytest.mark.parametrize("name", files("whatsapp"))
def test_whatsapp(name: str) -> None:
    document = load(name)
    check(parse_whatsapp(json.dumps(document)), whatsapp_items(document), name)


@pytest.mark.parametrize("name", files("telegram"))
def test_telegram(name: str) -> None:
    if refused(name, lambda raw: parse_telegram(raw, channel_id="conformance"), (WEBHOOKS / name).read_bytes()):
        return
    document = load(name)
    updates = document.get("result", [{"update_id": 1, **document}])  # a getUpdates answer, or a partial Update
    for update in updates:
        items = parse_telegram(json.dumps(update), channel_id="conformance")
        expected = [field in TELEGRAM_FIELDS for field in update if field != "update_id"]
        check(items, expected, name)


@pytest.mark.parametrize("name", files("viber"))
def test_viber(name: str) -> None:
    raw = (WEBHOOKS / name).read_bytes()
    document = json.loads(raw)
    items = parse_viber(raw, channel_id="conformance")
    known = document["event"] in VIBER_EVENTS or (
        document["event"] == "message" and document["message"].get("type") in VIBER_TYPES
    )
    check(items, [known], name)
    token = str(document["message_token"])  # 4912661846655238145: exact, not rounded to a double
    assert items[0].event.event_id.count(token) == 1
    assert json.loads(items[0].event.raw_json)["message_token"] == document["message_token"]


@pytest.mark.skipif(not (WEBHOOKS / "messenger" / "messenger4j_24.json").is_file(), reason="no signature vector")
def test_messenger_signature_vector() -> None:
    secret = "60efff025951cddde78c8d03de52cc90"
    header = "sha256=2c28be6e4b8c62b732b3487f445dbec6624868db6844b347567ebc86d7da3ad4"
    genuine = (WEBHOOKS / "messenger" / "messenger4j_24.json").read_bytes()
    tampered = (WEBHOOKS / "messenger" / "messenger4j_25.json").read_bytes()
    assert verify_meta_signature(genuine, header, secret) is Verdict.VALID
    assert verify_meta_signature(tampered, header, secret) is Verdict.MISMATCH


def line_known(event: dict) -> bool:
    if event["type"] in ("message", "messageEdited"):
        return event["message"]["type"] in LINE_MESSAGES
    return event["type"] in LINE_EVENTS


@pytest.mark.parametrize("name", files("line"))
def test_line(name: str) -> None:
    document = load(name)
    real = [e for e in document["events"] if e.get("replyToken") not in ("0" * 32, "f" * 32)]  # console Verify
    items = parse_line(json.dumps(document), channel_id="conformance")
    check(items, [line_known(event) for event in real], name)
    assert [i.event.event_id for i in items] == [
        i.event.event_id for i in parse_line(json.dumps(document), channel_id="conformance")
    ]


def test_line_signature_vector() -> None:
    header = "/gg9a+LvFevTH1sd7XCQycD7tsWclCsInj7MhBHxN7k="
    assert verify_line_signature(b"bodybodybodybody", header, "channel_secret") is Verdict.VALID
    assert verify_line_signature(b"bodybodybodybodx", header, "channel_secret") is Verdict.MISMATCH


# Twilio posts form fields; the shared files write them as JSON objects (values not always strings).
TWILIO_MESSAGES = {"twilio/botbuilder-dotnet_1.json", "twilio/botbuilder-dotnet_2.json"}


@pytest.mark.parametrize("name", files("twilio"))
def test_twilio_sms(name: str) -> None:
    document = load(name)
    body = urlencode({key: str(value) for key, value in document.items()}).encode()
    items = parse_twilio_sms(parse_form(body), channel_id="conformance")
    check(items, [name in TWILIO_MESSAGES], name)
    event = items[0].event
    assert json.loads(event.raw_json) == {key: str(value) for key, value in document.items()}
    assert event.contact_external_id == document["From"]
    if name in TWILIO_MESSAGES:
        assert event.kind == ev.INBOUND_KIND_MESSAGE and event.provider_message_id == document["MessageSid"]
        assert event.parts[0].text.text == document["Body"]
        media = [part.media for part in event.parts[1:]]
        assert [(m.url, m.mime_type) for m in media] == [
            (document[f"MediaUrl{i}"], document[f"MediaContentType{i}"]) for i in range(int(document["NumMedia"]))
        ]


@pytest.mark.skipif(not (WEBHOOKS / "twilio" / "twilio-python_1.json").is_file(), reason="no signature vector")
def test_twilio_signature_vector() -> None:
    params = [(key, str(value)) for key, value in load("twilio/twilio-python_1.json").items()]
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert verify_twilio_signature(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345") is Verdict.VALID
    assert verify_twilio_signature(url, params[1:], "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345") is Verdict.MISMATCH
