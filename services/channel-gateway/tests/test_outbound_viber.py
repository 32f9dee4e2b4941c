"""Viber send_message bodies and the classification of Viber's answers (pure)."""

from __future__ import annotations

import httpx
import pytest
from parley_channel_gateway.outbound_viber import sender_name, viber_error, viber_request
from parley_channel_gateway.providers import Attachment, InvalidContent, OutboundMessage, QuickReply


def msg(**fields: object) -> OutboundMessage:
    return OutboundMessage(request_id="r1", space_id="s", channel_id="c", contact_external_id="u1", **fields)


def classify(status: int, body: dict, headers: dict[str, str] | None = None) -> object:
    return viber_error(httpx.Response(status, json=body, headers=headers), body)


REFUSALS = [(2, "invalidAuthToken"), (5, "receiverNotRegistered"), (6, "receiverNotSubscribed"),
            (11, "receiverNoSuitableDevice")]  # fmt: skip


@pytest.mark.parametrize(("code", "name"), REFUSALS)
def test_refusals_are_permanent_with_the_status_and_its_name(code: int, name: str) -> None:
    error = classify(200, {"status": code, "status_message": "refused"})
    assert (error.code, error.retryable, error.rate_limited) == (str(code), False, False)
    assert error.message == f"refused ({name})"


def test_rate_control_429_and_5xx_are_retried() -> None:
    rate = classify(200, {"status": 12, "status_message": "tooManyRequests"}, {"Retry-After": "3"})
    assert (rate.retryable, rate.rate_limited, rate.retry_after) == (True, True, 3.0)
    assert classify(429, {}).rate_limited and classify(429, {}).retryable
    assert classify(503, {}).retryable and not classify(400, {}).retryable
    assert classify(200, {"status": "other"}).retryable is False
    assert classify(200, {}).code == "invalid_answer"


def test_audio_goes_as_a_file_and_the_sender_name_is_cut_to_28() -> None:
    body = viber_request(msg(attachments=(Attachment("audio", "https://cdn.example/v.ogg"),)), "x" * 40, 1234)
    assert (body["type"], body["size"], body["file_name"]) == ("file", 1234, "v.ogg")
    assert body["sender"] == {"name": "x" * 28} and sender_name("  ") == "Parley"


def test_keyboards_without_titles_or_with_too_many_buttons_are_refused() -> None:
    with pytest.raises(InvalidContent, match="title"):
        viber_request(msg(text="hi", quick_replies=(QuickReply("", "P"),)), "Bot")
    with pytest.raises(InvalidContent, match="24"):
        viber_request(msg(text="hi", quick_replies=tuple(QuickReply(f"t{n}", f"p{n}") for n in range(25))), "Bot")
    with pytest.raises(InvalidContent, match="second request"):
        viber_request(msg(text="caption", attachments=(Attachment("file", "https://cdn.example/a.pdf"),)), "Bot", 9)
    with pytest.raises(InvalidContent, match="nothing to send"):
        viber_request(msg(), "Bot")
