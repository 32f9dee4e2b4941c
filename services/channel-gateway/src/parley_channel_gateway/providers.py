"""Provider send APIs over httpx: Messenger/Instagram Send API, WhatsApp Cloud API, Telegram Bot API, LINE
Messaging API (`outbound_line`), Twilio Programmable Messaging (`outbound_twilio_sms`), and custom channels' signed
webhooks. Building each provider's request is pure; errors are classified into retryable (timeouts, 5xx, rate
limits, with the provider's wait when it gives one) and permanent ones.

Every HTTP call runs in a CLIENT span (`send <provider>` for message sends) and is timed in
`parley_channel_gateway_provider_request_duration_seconds{provider, outcome}`.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode
from parley_kit import telemetry
from parley_kit.contracts import messaging_window

from parley_channel_gateway import metrics
from parley_channel_gateway.inbound.signatures import CUSTOM_HEADER, sign_custom

# -- what to send ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    kind: str  # image, video, audio, file
    url: str
    caption: str = ""
    filename: str = ""


@dataclass(frozen=True)
class Button:
    title: str
    payload: str = ""
    url: str = ""


@dataclass(frozen=True)
class QuickReply:
    title: str
    payload: str


@dataclass(frozen=True)
class Template:
    name: str
    language: str
    body_parameters: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutboundMessage:
    """One send request, as the domain sees it."""

    request_id: str
    space_id: str
    channel_id: str
    contact_external_id: str
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    quick_replies: tuple[QuickReply, ...] = ()
    buttons: tuple[Button, ...] = ()
    template: Template | None = None
    tag: str = ""
    contact_last_inbound_at: datetime | None = None
    origin: str = ""
    origin_ref: str = ""


@dataclass(frozen=True)
class Target:
    """Where and with which credentials a channel sends."""

    channel_id: str
    type: str
    external_id: str = ""
    access_token: str = ""
    webhook_url: str = ""
    webhook_secret: str = ""
    display_name: str = ""  # Viber: the sender name shown with each message
    account_detail: str = ""  # Twilio SMS: the account SID


# -- errors ---------------------------------------------------------------------------------------------------


class ProviderError(Exception):
    """A send the provider refused or that could not reach it.

    `retryable`: timeouts, connection errors, 5xx and rate limits (`retry_after` seconds when the provider
    said how long). Otherwise permanent: the send is recorded failed with `code` and `message`.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        rate_limited: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.rate_limited = rate_limited  # HTTP 429 or the provider's rate-limit error codes
        self.status = status  # the HTTP status, when the provider answered


class InvalidContent(ProviderError):
    """The request asks for something the channel cannot send (permanent)."""

    def __init__(self, message: str) -> None:
        super().__init__("unsupported_content", message, retryable=False)


class WindowClosed(ProviderError):
    """The channel's messaging window forbids this send now (permanent; the provider is not called)."""

    def __init__(self, message: str) -> None:
        super().__init__("window_closed", message, retryable=False)


def allowed(target: Target, msg: OutboundMessage, now: datetime) -> messaging_window.Verdict:
    """The shared window rule's verdict for this send; raises WindowClosed or InvalidContent when refused."""
    verdict = messaging_window.decide(
        target.type, msg.contact_last_inbound_at, now, tag=msg.tag, is_template=msg.template is not None
    )
    if verdict.refusal is messaging_window.Refusal.WINDOW_CLOSED:
        raise WindowClosed(verdict.reason)
    if verdict.refusal is not None:
        raise InvalidContent(verdict.reason)
    return verdict


# Graph API error codes that mean "try again later": unknown/temporary errors and rate limits
# (4 app, 17 user, 32 page, 613 calls, 80007 WhatsApp business account), WhatsApp 130429 (throughput),
# 131056 (pair rate limit), 131016 (service unavailable), 133004 (server temporarily unavailable), 131000.
GRAPH_RETRYABLE = frozenset({1, 2, 4, 17, 32, 341, 613, 80007, 130429, 131000, 131016, 131056, 133004})
GRAPH_RATE_LIMITS = frozenset({4, 17, 32, 613, 80007, 130429, 131056})


def retry_after_header(value: str | None, now: float | None = None) -> float | None:
    """Seconds from an HTTP Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def graph_error(response: httpx.Response) -> ProviderError:
    """Classify a Graph API (Messenger, Instagram, WhatsApp) error answer."""
    error = _json(response).get("error")
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    subcode = error.get("error_subcode")
    message = str(error.get("message") or response.reason_phrase or "error")
    if isinstance(error.get("error_data"), dict) and error["error_data"].get("details"):
        message = f"{message} ({error['error_data']['details']})"
    if subcode:
        message = f"{message} [subcode {subcode}]"
    retry_after = retry_after_header(response.headers.get("Retry-After"))
    code_str = str(code) if code is not None else f"http_{response.status_code}"
    retryable = response.status_code >= 500 or response.status_code == 429 or code in GRAPH_RETRYABLE
    rate_limited = response.status_code == 429 or code in GRAPH_RATE_LIMITS
    return ProviderError(
        code_str,
        message,
        retryable=retryable,
        retry_after=retry_after,
        rate_limited=rate_limited,
        status=response.status_code,
    )


def telegram_error(response: httpx.Response) -> ProviderError:
    body = _json(response)
    code = body.get("error_code") or response.status_code
    message = str(body.get("description") or response.reason_phrase or "error")
    params = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    retry_after: float | None = None
    if isinstance(params.get("retry_after"), int | float):
        retry_after = float(params["retry_after"])
    retry_after = retry_after if retry_after is not None else retry_after_header(response.headers.get("Retry-After"))
    retryable = code == 429 or (isinstance(code, int) and code >= 500) or response.status_code >= 500
    rate_limited = code == 429 or response.status_code == 429
    return ProviderError(
        str(code),
        message,
        retryable=retryable,
        retry_after=retry_after,
        rate_limited=rate_limited,
        status=response.status_code,
    )


# -- request builders (pure) ------------------------------------------------------------------------------------

_META_MEDIA = {"image": "image", "video": "video", "audio": "audio", "file": "file"}


def meta_message(msg: OutboundMessage) -> dict[str, Any]:
    """The `message` object of a Messenger/Instagram Send API request."""
    if len(msg.attachments) > 1:
        raise InvalidContent("Messenger and Instagram send one attachment per message; send one request per file")
    message: dict[str, Any]
    if msg.buttons:
        if msg.attachments:
            raise InvalidContent("a button template carries text, not an attachment")
        if not msg.text:
            raise InvalidContent("a button template needs text")
        if len(msg.buttons) > 3:
            raise InvalidContent("a button template has at most 3 buttons")
        buttons = [
            {"type": "web_url", "url": b.url, "title": b.title}
            if b.url
            else {"type": "postback", "title": b.title, "payload": b.payload or b.title}
            for b in msg.buttons
        ]
        payload = {"template_type": "button", "text": msg.text, "buttons": buttons}
        message = {"attachment": {"type": "template", "payload": payload}}
    elif msg.attachments:
        if msg.text:
            raise InvalidContent(
                "Messenger and Instagram send text and an attachment as two messages: send two requests"
            )
        attachment = msg.attachments[0]
        media = _META_MEDIA.get(attachment.kind)
        if media is None or not attachment.url:
            raise InvalidContent(f"attachment needs a kind of {sorted(_META_MEDIA)} and a URL")
        message = {"attachment": {"type": media, "payload": {"url": attachment.url, "is_reusable": True}}}
    elif msg.text:
        message = {"text": msg.text}
    else:
        raise InvalidContent("nothing to send: give text, an attachment or buttons")
    if msg.quick_replies:
        if len(msg.quick_replies) > 13:
            raise InvalidContent("at most 13 quick replies")
        message["quick_replies"] = [
            {"content_type": "text", "title": q.title, "payload": q.payload or q.title} for q in msg.quick_replies
        ]
    return message


def meta_request(msg: OutboundMessage, verdict: messaging_window.Verdict) -> dict[str, Any]:
    """A Messenger/Instagram Send API body; `messaging_type` and `tag` come from the window verdict."""
    body: dict[str, Any] = {
        "recipient": {"id": msg.contact_external_id},
        "messaging_type": verdict.messaging_type,
        "message": meta_message(msg),
    }
    if verdict.tag:
        body["tag"] = verdict.tag
    return body


_WA_MEDIA = {"image": "image", "video": "video", "audio": "audio", "file": "document"}


def whatsapp_request(msg: OutboundMessage) -> dict[str, Any]:
    """A WhatsApp Cloud API /messages body: template, interactive buttons, media or text."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": msg.contact_external_id,
    }
    if msg.template is not None:
        if not msg.template.name or not msg.template.language:
            raise InvalidContent("a WhatsApp template needs its name and language code")
        template: dict[str, Any] = {"name": msg.template.name, "language": {"code": msg.template.language}}
        if msg.template.body_parameters:
            parameters = [{"type": "text", "text": p} for p in msg.template.body_parameters]
            template["components"] = [{"type": "body", "parameters": parameters}]
        return {**body, "type": "template", "template": template}
    choices = list(msg.buttons) + [Button(q.title, q.payload) for q in msg.quick_replies]
    if choices:
        if any(b.url for b in choices):
            raise InvalidContent("WhatsApp reply buttons carry a payload, not a URL")
        if len(choices) > 3:
            raise InvalidContent("WhatsApp interactive messages have at most 3 reply buttons")
        if not msg.text:
            raise InvalidContent("WhatsApp interactive buttons need body text")
        buttons = [{"type": "reply", "reply": {"id": b.payload or b.title, "title": b.title}} for b in choices]
        interactive = {"type": "button", "body": {"text": msg.text}, "action": {"buttons": buttons}}
        return {**body, "type": "interactive", "interactive": interactive}
    if msg.attachments:
        if len(msg.attachments) > 1:
            raise InvalidContent("WhatsApp sends one media file per message; send one request per file")
        attachment = msg.attachments[0]
        kind = _WA_MEDIA.get(attachment.kind)
        if kind is None or not attachment.url:
            raise InvalidContent(f"attachment needs a kind of {sorted(_WA_MEDIA)} and a URL")
        media: dict[str, Any] = {"link": attachment.url}
        caption = attachment.caption or msg.text
        if caption and kind != "audio":
            media["caption"] = caption
        if kind == "document" and attachment.filename:
            media["filename"] = attachment.filename
        return {**body, "type": kind, kind: media}
    if msg.text:
        return {**body, "type": "text", "text": {"body": msg.text, "preview_url": False}}
    raise InvalidContent("nothing to send: give text, media, buttons or a template")


_TG_MEDIA = {"image": ("sendPhoto", "photo"), "file": ("sendDocument", "document"),
             "video": ("sendVideo", "video"), "audio": ("sendAudio", "audio")}  # fmt: skip


def telegram_request(msg: OutboundMessage) -> tuple[str, dict[str, Any]]:
    """The Bot API method and its body: sendMessage, or sendPhoto/sendDocument/... with the text as caption."""
    if msg.template is not None:
        raise InvalidContent("template messages are WhatsApp's; Telegram sends text, media and buttons")
    body: dict[str, Any] = {"chat_id": msg.contact_external_id}
    choices = list(msg.buttons) + [Button(q.title, q.payload) for q in msg.quick_replies]
    if choices:
        keyboard = [
            [
                {"text": b.title, "url": b.url}
                if b.url
                else {"text": b.title, "callback_data": (b.payload or b.title)[:64]}
            ]
            for b in choices
        ]
        body["reply_markup"] = {"inline_keyboard": keyboard}
    if msg.attachments:
        if len(msg.attachments) > 1:
            raise InvalidContent("Telegram sends one file per message here; send one request per file")
        attachment = msg.attachments[0]
        if attachment.kind not in _TG_MEDIA or not attachment.url:
            raise InvalidContent(f"attachment needs a kind of {sorted(_TG_MEDIA)} and a URL")
        method, field_name = _TG_MEDIA[attachment.kind]
        body[field_name] = attachment.url
        caption = attachment.caption or msg.text
        if caption:
            body["caption"] = caption
        return method, body
    if not msg.text:
        raise InvalidContent("nothing to send: give text or a file")
    body["text"] = msg.text
    return "sendMessage", body


def custom_payload(msg: OutboundMessage) -> dict[str, Any]:
    """What a custom channel's webhook receives for one outbound message."""
    payload: dict[str, Any] = {
        "type": "message",
        "delivery_id": msg.request_id,
        "channel_id": msg.channel_id,
        "contact_external_id": msg.contact_external_id,
        "text": msg.text,
        "attachments": [
            {"kind": a.kind, "url": a.url, "caption": a.caption, "filename": a.filename} for a in msg.attachments
        ],
        "quick_replies": [{"title": q.title, "payload": q.payload} for q in msg.quick_replies],
        "buttons": [{"title": b.title, "payload": b.payload, "url": b.url} for b in msg.buttons],
    }
    if msg.template is not None:
        payload["template"] = {
            "name": msg.template.name,
            "language": msg.template.language,
            "body_parameters": list(msg.template.body_parameters),
        }
    return payload


# -- the HTTP client ---------------------------------------------------------------------------------------------

_tracer = telemetry.tracer("parley_channel_gateway.providers")


@dataclass
class _Call:
    status: int | None = None  # the provider's HTTP status, once it answered


def _outcome(status: int | None, exc: ProviderError | None) -> str:
    """The provider-request outcome label: ok, rate_limited, client_error, server_error, network_error."""
    if (exc is not None and exc.rate_limited) or status == 429:
        return "rate_limited"
    if status is None:
        return "network_error" if exc is not None else "ok"
    if status >= 500:
        return "server_error"
    if status >= 400 or exc is not None:
        return "client_error"
    return "ok"


@dataclass
class Providers:
    """Calls the providers; base URLs come from settings so tests reach a local fake server."""

    graph_api_url: str
    telegram_api_url: str
    timeout: float = 10.0
    line_api_url: str = "https://api.line.me"
    viber_api_url: str = "https://chatapi.viber.com/pa"
    twilio_api_url: str = "https://api.twilio.com"
    public_url: str = ""  # the gateway's public base URL: Twilio status callbacks come back to it
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.graph_api_url = self.graph_api_url.rstrip("/")
        self.telegram_api_url = self.telegram_api_url.rstrip("/")
        self.line_api_url = self.line_api_url.rstrip("/")
        self.viber_api_url = self.viber_api_url.rstrip("/")
        self.twilio_api_url = self.twilio_api_url.rstrip("/")
        self.public_url = self.public_url.rstrip("/")
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        self.http = httpx.AsyncClient(timeout=self.timeout, limits=limits, follow_redirects=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(self, target: Target, msg: OutboundMessage, now: datetime, *, attempt: int | None = None) -> str:
        """Send `msg`; returns the provider's message id. Raises ProviderError (WindowClosed and InvalidContent
        before any call). `attempt` (1, 2, ...) goes on the call's span."""
        verdict = allowed(target, msg, now)
        if target.type in ("messenger", "instagram"):
            body = meta_request(msg, verdict)
            # Messenger: the Page's /messages. Instagram (Facebook Login): /me/messages with the Page token
            # linked to the account (the account id is not a node that takes messages).
            path = f"/{target.external_id}/messages" if target.type == "messenger" else "/me/messages"
            data = await self._graph(target.type, path, target.access_token, body, attempt)
            return str(data.get("message_id") or "")
        if target.type == "whatsapp":
            body = whatsapp_request(msg)
            data = await self._graph("whatsapp", f"/{target.external_id}/messages", target.access_token, body, attempt)
            messages = data.get("messages")
            first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], dict) else {}
            return str(first.get("id") or "")
        if target.type == "telegram":
            method, body = telegram_request(msg)
            result = await self.telegram(target.access_token, method, body, span_name="send telegram", attempt=attempt)
            chat = result.get("chat") if isinstance(result.get("chat"), dict) else {}
            return f"{chat.get('id', msg.contact_external_id)}:{result.get('message_id', '')}"
        if target.type == "line":
            from parley_channel_gateway import outbound_line  # it builds on this module's types

            body = outbound_line.push_request(msg)
            headers = {outbound_line.RETRY_KEY_HEADER: outbound_line.retry_key(msg.request_id)}
            data = await self.line(target.access_token, "POST", "/v2/bot/message/push", body, headers, attempt=attempt)
            return outbound_line.sent_message_id(data)
        if target.type == "custom":
            return await self._custom(target, msg, attempt)
        if target.type == "viber":
            from parley_channel_gateway.outbound_viber import send_viber  # it builds on this module's types

            return await send_viber(self, target, msg, attempt)
        if target.type == "twilio_sms":
            # Imported here: outbound_twilio_sms builds on this module's errors and message types.
            from parley_channel_gateway.outbound_twilio_sms import account_path, twilio_sms_request

            callback = f"{self.public_url}/webhooks/twilio_sms/{target.channel_id}" if self.public_url else ""
            fields = twilio_sms_request(msg, from_number=target.external_id, status_callback=callback)
            path = account_path(target.account_detail, "Messages.json")
            data = await self.twilio(
                target.account_detail, target.access_token, path, fields, span_name="send twilio_sms", attempt=attempt
            )
            return str(data.get("sid") or "")
        raise InvalidContent(f"unknown channel type {target.type!r}")

    @contextlib.contextmanager
    def _observed(
        self, provider: str, url: str, span_name: str = "", attempt: int | None = None, method: str = "POST"
    ) -> Iterator[_Call]:
        """A provider HTTP call: its CLIENT span and its duration by outcome. The block sets `call.status` from
        the answer; a ProviderError it raises gives the outcome (no status: network_error)."""
        call = _Call()
        attributes = {
            "parley.provider": provider,
            "http.request.method": method,
            "server.address": httpx.URL(url).host,
        }
        if attempt is not None:
            attributes["parley.attempt"] = attempt
        started = time.perf_counter()
        with _tracer.start_as_current_span(
            span_name or f"send {provider}", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False
        ) as span:
            outcome = "ok"
            try:
                yield call
            except ProviderError as exc:
                status = exc.status if exc.status is not None else call.status
                outcome = _outcome(status, exc)
                span.set_status(Status(StatusCode.ERROR, exc.code))
                span.set_attribute("error.type", exc.code)
                raise
            finally:
                if call.status is not None:
                    span.set_attribute("http.response.status_code", call.status)
                span.set_attribute("parley.outcome", outcome)
                metrics.PROVIDER_REQUEST_DURATION.labels(provider, outcome).observe(time.perf_counter() - started)

    async def _graph(
        self, provider: str, path: str, token: str, body: dict[str, Any], attempt: int | None = None
    ) -> dict[str, Any]:
        with self._observed(provider, self.graph_api_url, attempt=attempt) as call:
            return await self._graph_call(call, path, token, body)

    async def _graph_call(self, call: _Call, path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self.http.post(
                self.graph_api_url + path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.TimeoutException as exc:
            raise ProviderError("timeout", f"the Graph API did not answer in time ({exc})", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise ProviderError("unreachable", f"cannot reach the Graph API: {exc}", retryable=True) from exc
        call.status = response.status_code
        if response.status_code >= 300:
            raise graph_error(response)
        return _json(response)

    async def telegram(
        self, bot_token: str, method: str, body: dict[str, Any], *, span_name: str = "", attempt: int | None = None
    ) -> dict[str, Any]:
        """Call a Bot API method; returns its `result` (a dict, or {"value": result} for plain results)."""
        with self._observed("telegram", self.telegram_api_url, span_name or f"telegram {method}", attempt) as call:
            return await self._telegram_call(call, bot_token, method, body)

    async def _telegram_call(self, call: _Call, bot_token: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.telegram_api_url}/bot{bot_token}/{method}"
        try:
            response = await self.http.post(url, json=body)
        except httpx.TimeoutException as exc:
            raise ProviderError("timeout", f"Telegram did not answer {method} in time", retryable=True) from exc
        except httpx.HTTPError as exc:
            # The URL holds the bot token: never put the exception's URL in the message.
            raise ProviderError(
                "unreachable", f"cannot reach the Telegram API ({type(exc).__name__})", retryable=True
            ) from None
        call.status = response.status_code
        data = _json(response)
        if response.status_code >= 300 or not data.get("ok"):
            raise telegram_error(response)
        result = data.get("result")
        return result if isinstance(result, dict) else {"value": result}

    async def line(
        self,
        token: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        attempt: int | None = None,
    ) -> dict[str, Any]:
        """Call the LINE Messaging API; returns its JSON answer. A push LINE refuses with 409 (its retry key was
        already accepted: the message went out on an earlier attempt) counts as sent."""
        from parley_channel_gateway import outbound_line

        span_name = "send line" if path == "/v2/bot/message/push" else f"line {method} {path}"
        with self._observed("line", self.line_api_url, span_name, attempt, method) as call:
            try:
                response = await self.http.request(
                    method,
                    self.line_api_url + path,
                    json=body,
                    headers={"Authorization": f"Bearer {token}", **(headers or {})},
                )
            except httpx.TimeoutException as exc:
                raise ProviderError("timeout", f"LINE did not answer {path} in time", retryable=True) from exc
            except httpx.HTTPError as exc:
                raise ProviderError("unreachable", f"cannot reach the LINE API: {exc}", retryable=True) from exc
            call.status = response.status_code
            if response.status_code == 409 and outbound_line.RETRY_KEY_HEADER in (headers or {}):
                return _json(response)
            if response.status_code >= 300:
                raise outbound_line.line_error(response)
            return _json(response)

    async def viber(
        self, token: str, method: str, body: dict[str, Any], *, span_name: str = "", attempt: int | None = None
    ) -> dict[str, Any]:
        """Call a Viber REST Bot API method (`send_message`, `get_account_info`, ...); returns its JSON answer."""
        from parley_channel_gateway.outbound_viber import viber_error

        with self._observed("viber", self.viber_api_url, span_name or f"viber {method}", attempt) as call:
            try:
                response = await self.http.post(
                    f"{self.viber_api_url}/{method}", json=body, headers={"X-Viber-Auth-Token": token}
                )
            except httpx.TimeoutException as exc:
                raise ProviderError("timeout", f"Viber did not answer {method} in time", retryable=True) from exc
            except httpx.HTTPError as exc:
                raise ProviderError("unreachable", f"cannot reach the Viber API: {exc}", retryable=True) from exc
            call.status = response.status_code
            data = _json(response)
            if response.status_code >= 300 or data.get("status") != 0:
                raise viber_error(response, data)
            return data

    async def twilio(
        self,
        account_sid: str,
        auth_token: str,
        path: str,
        form: list[tuple[str, str]] | None = None,
        *,
        query: dict[str, str] | None = None,
        span_name: str = "",
        attempt: int | None = None,
    ) -> dict[str, Any]:
        """Call the Twilio REST API with HTTP basic auth: POST `form` when given, else GET with `query`."""
        method = "GET" if form is None else "POST"
        name = span_name or f"twilio {method}"
        with self._observed("twilio_sms", self.twilio_api_url, name, attempt, method) as call:
            return await self._twilio_call(call, (account_sid, auth_token), method, path, form, query)

    async def _twilio_call(
        self,
        call: _Call,
        auth: tuple[str, str],
        method: str,
        path: str,
        form: list[tuple[str, str]] | None,
        query: dict[str, str] | None,
    ) -> dict[str, Any]:
        from parley_channel_gateway.outbound_twilio_sms import twilio_error

        body = urlencode(form).encode() if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else None
        try:
            response = await self.http.request(
                method, self.twilio_api_url + path, content=body, params=query, headers=headers, auth=auth
            )
        except httpx.TimeoutException as exc:
            raise ProviderError("timeout", "Twilio did not answer in time", retryable=True) from exc
        except httpx.HTTPError as exc:
            reason = f"cannot reach the Twilio API ({type(exc).__name__})"
            raise ProviderError("unreachable", reason, retryable=True) from None
        call.status = response.status_code
        if response.status_code >= 300:
            raise twilio_error(response)
        return _json(response)

    async def _custom(self, target: Target, msg: OutboundMessage, attempt: int | None = None) -> str:
        with self._observed("custom", target.webhook_url, attempt=attempt) as call:
            return await self._custom_call(call, target, msg)

    async def _custom_call(self, call: _Call, target: Target, msg: OutboundMessage) -> str:
        body = json.dumps(custom_payload(msg), separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            CUSTOM_TIMESTAMP_HEADER: str(timestamp),
            CUSTOM_HEADER: sign_custom(body, target.webhook_secret, timestamp=timestamp),
            CUSTOM_DELIVERY_HEADER: msg.request_id,
        }
        try:
            response = await self.http.post(target.webhook_url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ProviderError("timeout", "the channel's webhook did not answer in time", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise ProviderError("unreachable", f"cannot reach the channel's webhook: {exc}", retryable=True) from exc
        call.status = response.status_code
        if response.status_code >= 300:
            retry_after = retry_after_header(response.headers.get("Retry-After"))
            retryable = response.status_code >= 500 or response.status_code in (408, 425, 429)
            text = response.text[:300] if response.text else response.reason_phrase
            raise ProviderError(
                f"http_{response.status_code}",
                text,
                retryable=retryable,
                retry_after=retry_after,
                rate_limited=response.status_code == 429,
                status=response.status_code,
            )
        data = _json(response)
        return str(data.get("message_id") or msg.request_id)


# Custom channel outbound headers, beside X-Parley-Signature (`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
# the same scheme as inbound custom webhooks).
CUSTOM_TIMESTAMP_HEADER = "X-Parley-Timestamp"
CUSTOM_DELIVERY_HEADER = "X-Parley-Delivery-Id"
