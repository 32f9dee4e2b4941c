"""Twilio SMS without I/O: the signature, form bodies to canonical events, Messages.json requests, error classes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import ChannelType
from parley_channel_gateway.inbound import (
    InvalidEnvelope,
    Verdict,
    parse_form,
    parse_twilio_sms,
    sign_twilio,
    verify_twilio_signature,
)
from parley_channel_gateway.outbound_twilio_sms import account_path, twilio_error, twilio_sms_request
from parley_channel_gateway.providers import Attachment, Button, InvalidContent, OutboundMessage, QuickReply, Template

FIXTURES = Path(__file__).parent / "fixtures" / "twilio_sms"
CHANNEL = "5f0c8a8e-0000-4000-8000-000000000001"

# The worked example of Twilio's webhook security page.
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+12349013030"),
    ("Digits", "1234"),
    ("From", "+12349013030"),
    ("To", "+18005551212"),
]


def fixture(name: str) -> list[tuple[str, str]]:
    return parse_form((FIXTURES / f"{name}.form").read_bytes().strip())


def parse(name: str) -> ev.InboundEvent:
    items = parse_twilio_sms(fixture(name), channel_id=CHANNEL)
    assert len(items) == 1 and items[0].channel_keys == ()
    return items[0].event


# -- signature ---------------------------------------------------------------------------------------------------


def test_signature_matches_twilios_documented_example_in_any_field_order() -> None:
    assert sign_twilio(DOC_URL, DOC_PARAMS, "12345") == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    shuffled = list(reversed(DOC_PARAMS))
    assert verify_twilio_signature(DOC_URL, shuffled, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "12345") is Verdict.VALID


@pytest.mark.parametrize(
    ("url", "params", "header", "token", "verdict"),
    [
        (DOC_URL, DOC_PARAMS, None, "12345", Verdict.MISSING),
        (DOC_URL, DOC_PARAMS, "", "12345", Verdict.MISSING),
        (DOC_URL, DOC_PARAMS, "not base64!", "12345", Verdict.MALFORMED),
        (DOC_URL, DOC_PARAMS, "c2hvcnQ=", "12345", Verdict.MALFORMED),
        (DOC_URL, DOC_PARAMS, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "54321", Verdict.MISMATCH),
        (
            "http://gateway:8080/myapp.php?foo=1&bar=2",
            DOC_PARAMS,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            "12345",
            Verdict.MISMATCH,
        ),
        (
            DOC_URL,
            [*DOC_PARAMS[:-1], ("To", "+18005551213")],
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            "12345",
            Verdict.MISMATCH,
        ),
    ],
    ids=["missing", "empty", "not-base64", "short", "other-token", "other-url", "tampered"],
)
def test_signature_refusals(
    url: str, params: list[tuple[str, str]], header: str | None, token: str, verdict: Verdict
) -> None:
    assert verify_twilio_signature(url, params, header, token) is verdict


# -- inbound -----------------------------------------------------------------------------------------------------


def test_an_sms_becomes_a_message_from_the_sender() -> None:
    event = parse("sms")
    assert event.event_id == "twilio_sms:SM7c1e2bd6a3f04f2d9e8b5a4c3d2e1f00"
    assert event.channel_type == ChannelType.CHANNEL_TYPE_TWILIO_SMS and event.kind == ev.INBOUND_KIND_MESSAGE
    assert event.contact_external_id == "+12125550123" and event.profile.phone == "+12125550123"
    assert event.provider_message_id == "SM7c1e2bd6a3f04f2d9e8b5a4c3d2e1f00"
    assert [p.text.text for p in event.parts] == ["Hi, is my order #4411 shipped yet?"]
    assert '"FromCity":"NEW YORK"' in event.raw_json


def test_an_mms_carries_its_text_and_every_media_url_with_its_kind() -> None:
    event = parse("mms")
    assert event.kind == ev.INBOUND_KIND_MESSAGE and event.parts[0].text.text == "The parcel arrived like this"
    media = [p.media for p in event.parts[1:]]
    assert [(m.kind, m.mime_type) for m in media] == [
        (ev.MEDIA_KIND_IMAGE, "image/jpeg"),
        (ev.MEDIA_KIND_VIDEO, "video/mp4"),
    ]
    assert media[0].url.endswith("/Media/ME0a1b2c3d4e5f60718293a4b5c6d7e8f9")
    assert media[0].provider_media_id == "ME0a1b2c3d4e5f60718293a4b5c6d7e8f9"


def test_stop_is_published_as_the_message_it_is() -> None:
    event = parse("stop")
    assert event.kind == ev.INBOUND_KIND_MESSAGE and event.parts[0].text.text == "STOP"
    assert '"OptOutType":"STOP"' in event.raw_json


def test_status_callbacks_become_status_events_for_the_recipient() -> None:
    delivered = parse("status_delivered")
    assert delivered.kind == ev.INBOUND_KIND_STATUS
    assert delivered.event_id == "twilio_sms:status:SM5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b:delivered"
    assert delivered.contact_external_id == "+12125550123"
    assert delivered.receipt.status == ev.DELIVERY_STATUS_DELIVERED
    assert list(delivered.receipt.provider_message_ids) == ["SM5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"]
    failed = parse("status_undelivered")
    assert failed.receipt.status == ev.DELIVERY_STATUS_FAILED and failed.receipt.error_code == "30003"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("queued", ev.DELIVERY_STATUS_QUEUED),
        ("sending", ev.DELIVERY_STATUS_QUEUED),
        ("sent", ev.DELIVERY_STATUS_SENT),
        ("read", ev.DELIVERY_STATUS_READ),
        ("failed", ev.DELIVERY_STATUS_FAILED),
    ],
)
def test_every_outbound_status_is_mapped(status: str, expected: int) -> None:
    params = [("MessageSid", "SM1"), ("MessageStatus", status), ("To", "+12125550123")]
    (item,) = parse_twilio_sms(params, channel_id=CHANNEL)
    assert item.event.receipt.status == expected and item.event.event_id == f"twilio_sms:status:SM1:{status}"


def test_a_voice_webhook_or_an_empty_message_is_unknown_with_its_fields_and_a_stable_channel_scoped_id() -> None:
    event = parse("voice_call")
    assert event.kind == ev.INBOUND_KIND_UNKNOWN and '"CallSid":"CA3f4e5d6c7b8a90a1b2c3d4e5f6a7b8c9"' in event.raw_json
    assert (
        event.event_id.startswith(f"twilio_sms:{CHANNEL}:unknown:h") and event.event_id == parse("voice_call").event_id
    )
    empty = [("MessageSid", "SM2"), ("Body", ""), ("NumMedia", "0"), ("From", "+12125550123")]
    (item,) = parse_twilio_sms(empty, channel_id=CHANNEL)
    assert item.event.kind == ev.INBOUND_KIND_UNKNOWN and item.event.contact_external_id == "+12125550123"


def test_a_repeated_field_keeps_every_value_in_the_raw_json() -> None:
    (item,) = parse_twilio_sms([("Foo", "a"), ("Foo", "b")], channel_id=CHANNEL)
    assert item.event.raw_json == '{"Foo":["a","b"]}'


@pytest.mark.parametrize("body", [b"", b"\xff\xfe=1", b"Body=%FF"], ids=["empty", "bytes", "escape"])
def test_a_body_that_is_not_utf8_form_data_is_an_invalid_envelope(body: bytes) -> None:
    with pytest.raises(InvalidEnvelope):
        parse_twilio_sms(parse_form(body), channel_id=CHANNEL)


# -- outbound ----------------------------------------------------------------------------------------------------


def message(**fields: object) -> OutboundMessage:
    return OutboundMessage("req-1", "space", CHANNEL, "+12125550123", **fields)  # type: ignore[arg-type]


def test_text_and_mms_requests_carry_from_to_media_and_the_status_callback() -> None:
    callback = f"https://gw.example/webhooks/twilio_sms/{CHANNEL}"
    assert twilio_sms_request(message(text="Hello"), from_number="+14155550100", status_callback=callback) == [
        ("To", "+12125550123"),
        ("From", "+14155550100"),
        ("Body", "Hello"),
        ("StatusCallback", callback),
    ]
    photos = (
        Attachment("image", "https://cdn.example/a.jpg", caption="front"),
        Attachment("file", "https://cdn.example/b.pdf"),
    )
    fields = twilio_sms_request(message(attachments=photos), from_number="+14155550100", status_callback="")
    assert fields == [
        ("To", "+12125550123"),
        ("From", "+14155550100"),
        ("Body", "front"),
        ("MediaUrl", "https://cdn.example/a.jpg"),
        ("MediaUrl", "https://cdn.example/b.pdf"),
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"text": "Pick one", "buttons": (Button("Yes", "yes"),)},
        {"text": "Pick one", "quick_replies": (QuickReply("Yes", "yes"),)},
        {"template": Template("hello", "en")},
        {"attachments": tuple(Attachment("image", f"https://cdn.example/{i}.jpg") for i in range(11))},
        {"attachments": (Attachment("image", ""),)},
        {"text": "x" * 1601},
        {},
    ],
    ids=["buttons", "quick-replies", "template", "eleven-media", "no-url", "too-long", "empty"],
)
def test_what_sms_cannot_carry_is_refused_before_any_call(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidContent):
        twilio_sms_request(message(**fields), from_number="+14155550100", status_callback="")


def test_account_paths_quote_the_sid() -> None:
    assert account_path("AC1", "Messages.json") == "/2010-04-01/Accounts/AC1/Messages.json"
    assert account_path("AC/../x", "Messages.json") == "/2010-04-01/Accounts/AC%2F..%2Fx/Messages.json"


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers) if body is not None else httpx.Response(status)


@pytest.mark.parametrize(
    ("response", "code", "retryable", "rate_limited", "retry_after"),
    [
        (answer(429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "3"}), "20429", True, True, 3.0),
        (answer(400, {"code": 20429, "message": "Too Many Requests"}), "20429", True, True, None),
        (answer(503, {"code": 20503, "message": "Service unavailable"}), "20503", True, False, None),
        (answer(502), "http_502", True, False, None),
        (
            answer(400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient"}),
            "21610",
            False,
            False,
            None,
        ),
        (answer(400, {"code": 21211, "message": "Invalid 'To' Phone Number"}), "21211", False, False, None),
        (
            answer(400, {"code": 21614, "message": "'To' number is not a valid mobile number"}),
            "21614",
            False,
            False,
            None,
        ),
        (answer(401, {"code": 20003, "message": "Authenticate"}), "20003", False, False, None),
    ],
    ids=["429", "20429", "503", "502-no-body", "unsubscribed", "invalid-to", "not-mobile", "auth"],
)
def test_twilio_errors_are_classified(
    response: httpx.Response, code: str, retryable: bool, rate_limited: bool, retry_after: float | None
) -> None:
    error = twilio_error(response)
    assert (error.code, error.retryable, error.rate_limited, error.retry_after) == (
        code,
        retryable,
        rate_limited,
        retry_after,
    )
    assert error.status == response.status_code


def test_form_round_trip_of_the_fixtures_keeps_plus_signs() -> None:
    assert ("From", "+12125550123") in fixture("sms")
    assert parse_form(urlencode([("From", "+1 2")]).encode()) == [("From", "+1 2")]


TWILIO_NAMES = ["MessageSid", "SmsSid", "SmsMessageSid", "MessageStatus", "SmsStatus", "Body", "NumMedia", "From", "To"]
TWILIO_NAMES += ["MediaUrl0", "MediaContentType0", "MediaUrl12", "ErrorCode", "Latitude", "Longitude", "CallSid"]
form_fields = st.lists(
    st.tuples(
        st.sampled_from(TWILIO_NAMES) | st.text(max_size=12),
        st.sampled_from(["queued", "delivered", "received", "image/png", "1", "-91.5", "SM1"]) | st.text(max_size=20),
    ),
    max_size=12,
)


@given(params=form_fields)
def test_any_form_fields_parse_to_one_event_with_an_id_and_valid_raw_json(params: list[tuple[str, str]]) -> None:
    body = urlencode(params).encode()
    if not params:
        with pytest.raises(InvalidEnvelope):
            parse_twilio_sms(parse_form(body), channel_id=CHANNEL)
        return
    (item,) = parse_twilio_sms(parse_form(body), channel_id=CHANNEL)
    assert item.event.event_id and item.event.raw_json
    item.event.SerializeToString()
