"""LINE Messaging API sends: the push request (pure), its retry key, and the classification of LINE's answers.

One Parley message becomes one push of up to 5 LINE messages: the text (a buttons template when it has
buttons), then each image with its caption as a text message; quick replies ride on the last message. LINE
cannot push files, and needs a preview image for videos and the duration for audio, which a send request
does not carry: those are refused as `unsupported_content`.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from parley_channel_gateway.providers import (
    Button,
    InvalidContent,
    OutboundMessage,
    ProviderError,
    retry_after_header,
)
from parley_channel_gateway.providers import _json as response_json

RETRY_KEY_HEADER = "X-Line-Retry-Key"
MAX_MESSAGES = 5
MAX_QUICK_REPLIES = 13
MAX_TEMPLATE_ACTIONS = 4
MAX_TEMPLATE_TEXT = 160
MAX_LABEL = 20
MAX_POSTBACK_DATA = 300
_NAMESPACE = uuid.UUID("6f1d7c52-3b8e-4c1e-9a57-0b1c2d3e4f50")


def retry_key(request_id: str) -> str:
    """The X-Line-Retry-Key of a send request: the same UUID on every attempt, so LINE runs the push once."""
    return str(uuid.uuid5(_NAMESPACE, request_id))


def push_request(msg: OutboundMessage) -> dict[str, Any]:
    """The body of POST /v2/bot/message/push for `msg`, or InvalidContent."""
    messages: list[dict[str, Any]] = []
    if msg.buttons:
        messages.append(_buttons_template(msg.text, msg.buttons))
    elif msg.text:
        messages.append({"type": "text", "text": msg.text})
    for attachment in msg.attachments:
        if attachment.kind != "image" or not attachment.url:
            raise InvalidContent(
                "LINE pushes images by URL; files cannot be pushed, and videos and audio need a preview image or "
                "duration that Parley does not have: send their link as text"
            )
        messages.append({"type": "image", "originalContentUrl": attachment.url, "previewImageUrl": attachment.url})
        if attachment.caption:
            messages.append({"type": "text", "text": attachment.caption})
    if not messages:
        raise InvalidContent("nothing to send: give text, an image or buttons")
    if len(messages) > MAX_MESSAGES:
        raise InvalidContent(f"LINE pushes at most {MAX_MESSAGES} messages at once (text, images and captions)")
    if msg.quick_replies:
        if len(msg.quick_replies) > MAX_QUICK_REPLIES:
            raise InvalidContent(f"LINE shows at most {MAX_QUICK_REPLIES} quick replies")
        items = [{"type": "action", "action": _action(Button(q.title, q.payload))} for q in msg.quick_replies]
        messages[-1]["quickReply"] = {"items": items}
    return {"to": msg.contact_external_id, "messages": messages}


def _buttons_template(body: str, buttons: tuple[Button, ...]) -> dict[str, Any]:
    if not body:
        raise InvalidContent("a LINE buttons template needs text")
    if len(body) > MAX_TEMPLATE_TEXT:
        raise InvalidContent(f"a LINE buttons template's text has at most {MAX_TEMPLATE_TEXT} characters")
    if len(buttons) > MAX_TEMPLATE_ACTIONS:
        raise InvalidContent(f"a LINE buttons template has at most {MAX_TEMPLATE_ACTIONS} buttons")
    template = {"type": "buttons", "text": body, "actions": [_action(b) for b in buttons]}
    return {"type": "template", "altText": body, "template": template}


def _action(button: Button) -> dict[str, Any]:
    """A URI action for a link, a postback action (its title shown as the contact's message) for a payload,
    else a message action that sends the title."""
    label = button.title[:MAX_LABEL]
    if button.url:
        return {"type": "uri", "label": label, "uri": button.url}
    if button.payload:
        if len(button.payload) > MAX_POSTBACK_DATA:
            raise InvalidContent(f"a LINE postback payload has at most {MAX_POSTBACK_DATA} characters")
        return {"type": "postback", "label": label, "data": button.payload, "displayText": button.title}
    return {"type": "message", "label": label, "text": button.title}


def sent_message_id(data: dict[str, Any]) -> str:
    """The id of the first message of a push answer (`sentMessages[0].id`), or ""."""
    sent = data.get("sentMessages")
    first = sent[0] if isinstance(sent, list) and sent and isinstance(sent[0], dict) else {}
    return str(first.get("id") or "")


def line_error(response: httpx.Response) -> ProviderError:
    """Classify a LINE error answer: 429 (rate limit) and 5xx are retried, except 429 for the monthly message
    quota; every other status (400 invalid request or recipient, 401 bad token, 403 not allowed) is permanent."""
    body = response_json(response)
    message = str(body.get("message") or response.reason_phrase or "error")
    details = [d for d in body.get("details") or [] if isinstance(d, dict)]
    if details:
        notes = (f"{d.get('property', '')}: {d.get('message', '')}".strip(": ") for d in details)
        message = f"{message} ({'; '.join(notes)})"
    status = response.status_code
    if status == 429 and "monthly limit" in message.lower():
        return ProviderError("monthly_limit", message, retryable=False, status=status)
    return ProviderError(
        f"http_{status}",
        message,
        retryable=status == 429 or status >= 500,
        retry_after=retry_after_header(response.headers.get("Retry-After")),
        rate_limited=status == 429,
        status=status,
    )
