"""Viber REST Bot API: the send_message body for one outbound message, and the classification of Viber's answers.

Viber answers HTTP 200 with a JSON `status` (0 ok, with the `message_token`) or a non-zero status and
`status_message`. Codes (Viber's REST Bot API error codes): 1 invalidUrl, 2 invalidAuthToken, 3 badData,
4 missingData, 5 receiverNotRegistered, 6 receiverNotSubscribed, 7 publicAccountBlocked, 8 publicAccountNotFound,
9 publicAccountSuspended, 10 webhookNotSet, 11 receiverNoSuitableDevice, 12 tooManyRequests,
13 apiVersionNotSupported, 14 incompatibleWithVersion, 15 publicAccountNotAuthorized, 16 inchatReplyMessageNotAllowed,
17 publicAccountIsNotInline, 18 noPublicChat, 19 cannotSendBroadcast, 20 broadcastNotAllowed; "other" is a general
error. Only 12 (rate control) is worth retrying, with HTTP 429 and 5xx; every other code fails the send at once.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from parley_channel_gateway.inbound.viber import TRACKING_REPLIES_KEY
from parley_channel_gateway.providers import (
    InvalidContent,
    OutboundMessage,
    ProviderError,
    Providers,
    Target,
    retry_after_header,
)

MIN_API_VERSION = 1
MAX_TEXT = 7000  # characters of a text message
MAX_PICTURE_TEXT = 768  # characters of a picture's description
MAX_SENDER_NAME = 28
MAX_TRACKING_DATA = 4096
MAX_KEYBOARD_BUTTONS = 24
RATE_LIMITED = 12
STATUS_NAMES = {
    1: "invalidUrl",
    2: "invalidAuthToken",
    3: "badData",
    4: "missingData",
    5: "receiverNotRegistered",
    6: "receiverNotSubscribed",
    7: "publicAccountBlocked",
    8: "publicAccountNotFound",
    9: "publicAccountSuspended",
    10: "webhookNotSet",
    11: "receiverNoSuitableDevice",
    12: "tooManyRequests",
    13: "apiVersionNotSupported",
    14: "incompatibleWithVersion",
    15: "publicAccountNotAuthorized",
}
# The callbacks Parley asks for at set_webhook (`webhook` itself is always sent).
EVENT_TYPES = ("delivered", "seen", "failed", "subscribed", "unsubscribed", "conversation_started")

# Attachment kinds to Viber message types. Viber has no audio type: audio goes as a file.
_MEDIA_TYPES = {"image": "picture", "video": "video", "file": "file", "audio": "file"}


def sender_name(name: str) -> str:
    """Viber's `sender.name` (required, at most 28 characters)."""
    return (name.strip() or "Parley")[:MAX_SENDER_NAME]


def media_type(msg: OutboundMessage) -> str:
    """The Viber message type of the request's attachment ("" for none); refuses what Viber cannot carry."""
    if msg.template is not None:
        raise InvalidContent("template messages are WhatsApp's; Viber sends text, media and keyboards")
    if not msg.attachments:
        return ""
    if len(msg.attachments) > 1:
        raise InvalidContent("Viber sends one file per message; send one request per file")
    attachment = msg.attachments[0]
    kind = _MEDIA_TYPES.get(attachment.kind)
    if kind is None or not attachment.url:
        raise InvalidContent(f"attachment needs a kind of {sorted(_MEDIA_TYPES)} and a URL")
    if kind != "picture" and (msg.text or attachment.caption):
        raise InvalidContent("Viber files and videos carry no text; send the text as a second request")
    return kind


def viber_request(msg: OutboundMessage, name: str, size: int | None = None) -> dict[str, Any]:
    """The /pa/send_message body. `size` is the file's byte size, which Viber requires for videos and files."""
    body: dict[str, Any] = {
        "receiver": msg.contact_external_id,
        "min_api_version": MIN_API_VERSION,
        "sender": {"name": sender_name(name)},
    }
    kind = media_type(msg)
    if kind:
        attachment = msg.attachments[0]
        body.update(type=kind, media=attachment.url)
        if kind == "picture":
            description = attachment.caption or msg.text
            if len(description) > MAX_PICTURE_TEXT:
                raise InvalidContent(f"a Viber picture's text has at most {MAX_PICTURE_TEXT} characters")
            body["text"] = description
        else:
            if size is None:
                raise InvalidContent("Viber needs the file's size: its URL gave no Content-Length")
            body["size"] = size
        if kind == "file":
            body["file_name"] = (attachment.filename or attachment.url.rsplit("/", 1)[-1].split("?", 1)[0])[:256]
    elif msg.text:
        if len(msg.text) > MAX_TEXT:
            raise InvalidContent(f"a Viber text message has at most {MAX_TEXT} characters")
        body.update(type="text", text=msg.text)
    else:
        raise InvalidContent("nothing to send: give text or a file")
    body.update(_keyboard(msg))
    return body


def _keyboard(msg: OutboundMessage) -> dict[str, Any]:
    """Buttons and quick replies as a Viber keyboard. Reply buttons are also listed in `tracking_data`, which Viber
    echoes with the user's next message, so the inbound parser can tell a button press (POSTBACK) from typed text."""
    buttons: list[dict[str, Any]] = []
    replies: dict[str, str] = {}
    for title, payload, url in [(b.title, b.payload, b.url) for b in msg.buttons] + [
        (q.title, q.payload, "") for q in msg.quick_replies
    ]:
        if not title:
            raise InvalidContent("every Viber keyboard button needs a title")
        if url:
            buttons.append({"ActionType": "open-url", "ActionBody": url, "Text": title})
        else:
            action = payload or title
            buttons.append({"ActionType": "reply", "ActionBody": action, "Text": title})
            replies[action] = title
    if not buttons:
        return {}
    if len(buttons) > MAX_KEYBOARD_BUTTONS:
        raise InvalidContent(f"a Viber keyboard has at most {MAX_KEYBOARD_BUTTONS} buttons")
    extra: dict[str, Any] = {"keyboard": {"Type": "keyboard", "DefaultHeight": False, "Buttons": buttons}}
    tracking = json.dumps({TRACKING_REPLIES_KEY: replies}, ensure_ascii=False, separators=(",", ":"))
    if replies and len(tracking) <= MAX_TRACKING_DATA:
        extra["tracking_data"] = tracking
    return extra


def viber_error(response: httpx.Response, data: dict[str, Any]) -> ProviderError:
    """Classify a Viber answer that is not a success: HTTP errors, or a 200 with a non-zero `status`."""
    retry_after = retry_after_header(response.headers.get("Retry-After"))
    if response.status_code >= 300:
        return ProviderError(
            f"http_{response.status_code}",
            str(data.get("status_message") or response.reason_phrase or "error"),
            retryable=response.status_code >= 500 or response.status_code == 429,
            retry_after=retry_after,
            rate_limited=response.status_code == 429,
            status=response.status_code,
        )
    status = data.get("status")
    name = STATUS_NAMES.get(status, "") if isinstance(status, int) else ""
    message = str(data.get("status_message") or name or "Viber refused the request")
    rate_limited = status == RATE_LIMITED
    return ProviderError(
        str(status if status is not None else "invalid_answer"),
        message if not name or name == message else f"{message} ({name})",
        retryable=rate_limited,
        retry_after=retry_after,
        rate_limited=rate_limited,
        status=response.status_code,
    )


async def send_viber(providers: Providers, target: Target, msg: OutboundMessage, attempt: int | None = None) -> str:
    """Send `msg` with /pa/send_message; returns Viber's `message_token` (exact, as a string)."""
    kind = media_type(msg)
    size = await file_size(providers.http, msg.attachments[0].url) if kind in ("video", "file") else None
    body = viber_request(msg, target.display_name, size)
    data = await providers.viber(target.access_token, "send_message", body, span_name="send viber", attempt=attempt)
    token = data.get("message_token")
    return str(token) if isinstance(token, int | str) and not isinstance(token, bool) else ""


async def file_size(http: httpx.AsyncClient, url: str) -> int | None:
    """The byte size a HEAD request on `url` reports (None when it gives no Content-Length)."""
    try:
        response = await http.head(url, follow_redirects=True)
    except httpx.TimeoutException as exc:
        raise ProviderError("timeout", "the file's URL did not answer a HEAD request in time", retryable=True) from exc
    except httpx.HTTPError as exc:
        raise ProviderError("unreachable", f"cannot reach the file's URL: {exc}", retryable=True) from exc
    if response.status_code >= 500:
        raise ProviderError(f"http_{response.status_code}", "the file's URL failed a HEAD request", retryable=True)
    if response.status_code >= 400:
        raise InvalidContent(f"the file's URL answered HTTP {response.status_code}; Viber could not fetch it either")
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None
