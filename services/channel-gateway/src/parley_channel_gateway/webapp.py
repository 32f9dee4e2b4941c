"""The webhook HTTP app (Flask, served by gunicorn): verify, parse, resolve the channel, publish, answer.

A POST is answered 200 only after JetStream acknowledged every event of its body (Twilio SMS: with empty TwiML).
Refusals never publish anything and always carry a JSON body: 413 too large, 415 not JSON (Twilio SMS: not form
data), 401 signature missing, 403 signature wrong or stale, 400 malformed body, 404 unknown channel URL, 503 NATS
or the database unavailable (the provider retries; the retry is de-duplicated by Nats-Msg-Id).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, jsonify, request
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from parley.channel_gateway.v1 import events_pb2 as ev
from parley_kit import metrics, telemetry
from parley_kit.contracts import channel_gateway as contract
from parley_kit.settings import load_settings
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from parley_channel_gateway import metrics as gw_metrics
from parley_channel_gateway.bridge import Bridge, ChannelInfo, LookupUnavailable, NatsUnavailable
from parley_channel_gateway.config import Settings
from parley_channel_gateway.inbound import (
    InvalidEnvelope,
    ParsedItem,
    Verdict,
    parse_custom,
    parse_form,
    parse_instagram,
    parse_line,
    parse_messenger,
    parse_telegram,
    parse_twilio_sms,
    parse_viber,
    parse_whatsapp,
    verify_custom_signature,
    verify_line_signature,
    verify_meta_signature,
    verify_telegram_secret,
    verify_twilio_signature,
    verify_viber_signature,
)
from parley_channel_gateway.inbound.signatures import (
    CUSTOM_HEADER,
    LINE_HEADER,
    META_HEADER,
    TELEGRAM_HEADER,
    TWILIO_HEADER,
    VIBER_HEADER,
)
from parley_channel_gateway.inbound.viber import is_setup_check, load_callback

log = logging.getLogger(__name__)
_tracer = telemetry.tracer("parley_channel_gateway.web")

META_PARSERS: dict[str, Callable[[bytes], list[ParsedItem]]] = {
    "messenger": parse_messenger,
    "instagram": parse_instagram,
    "whatsapp": parse_whatsapp,
}
# Twilio's answer to an accepted message webhook: empty TwiML, so Twilio sends no automatic reply.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
KIND_NAMES = {value: name.removeprefix("INBOUND_KIND_").lower() for name, value in ev.InboundKind.items()}


class Refused(Exception):
    """A webhook refused before anything was published."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def _error(status: int, error: str, message: str) -> Response:
    response = jsonify({"error": error, "message": message})
    response.status_code = status
    return response


def make_app() -> Flask:
    """gunicorn's app factory (`parley_channel_gateway.webapp:make_app()`), for `web_worker.WebhookWorker`, which starts
    the Bridge on its event loop."""
    settings = load_settings(Settings)
    return create_app(settings, Bridge(settings))


def create_app(settings: Settings, bridge: Bridge) -> Flask:
    """The webhook app; its requests run in greenlets on the loop `bridge` is started on (`web_worker.WebServer`)."""
    telemetry.configure_tracing(settings.service_name)
    app = Flask("parley_channel_gateway")
    app.extensions["parley_bridge"] = bridge
    app.config["MAX_CONTENT_LENGTH"] = settings.channel_gateway_max_body_bytes
    service = settings.service_name
    limit = settings.channel_gateway_max_body_bytes
    timeout = settings.channel_gateway_publish_timeout_seconds
    lookup_timeout = max(timeout, 5.0)
    public_url = settings.channel_gateway_public_url.rstrip("/")

    # -- observability ------------------------------------------------------------------------------------------

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    observers: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # the labelled children, looked up once

    @app.after_request
    def _observe(response: Response) -> Response:
        rule = request.url_rule
        key = (rule.rule if rule is not None else "unmatched", request.method, response.status_code)
        found = observers.get(key)
        if found is None:
            found = observers[key] = (
                metrics.HTTP_REQUESTS.labels(service, key[0], key[1], str(key[2])),
                metrics.HTTP_DURATION.labels(service, key[0], key[1]),
            )
        found[0].inc()
        found[1].observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            return _error(413, "body_too_large", f"the body is larger than {limit} bytes")
        return _error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("webhook handling failed")
        return _error(500, "internal", "the gateway failed to handle this request; it has been logged")

    # -- checks shared by every POST ------------------------------------------------------------------------------

    def read_json_body(channel_type: str, mimetype: str = "application/json") -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise Refused(413, "body_too_large", f"the body is larger than {limit} bytes")
        if request.mimetype != mimetype:
            raise Refused(415, "unsupported_media_type", f"send the webhook as Content-Type: {mimetype}")
        # Straight from the input (werkzeug's get_data would cut a chunked body at the limit without a word).
        data: bytes = request.environ["wsgi.input"].read(limit + 1)
        if len(data) > limit:
            raise Refused(413, "body_too_large", f"the body is larger than {limit} bytes")
        return data

    def check(verdict: Verdict, what: str) -> None:
        if verdict is Verdict.MISSING:
            raise Refused(401, "signature_missing", f"the {what} header is missing")
        if verdict is Verdict.STALE:
            raise Refused(403, "signature_stale", f"the {what} timestamp is outside the accepted window")
        if not verdict.ok:
            raise Refused(403, "signature_invalid", f"the {what} does not match this body")

    def webhook(
        channel_type: str,
        handle: Callable[[], dict[str, Any]],
        accepted: Callable[[dict[str, Any]], Response] | None = None,
    ) -> Response:
        environ = request.environ
        traceparent = environ.get("HTTP_TRACEPARENT")
        parent = (
            telemetry.extract({"traceparent": traceparent, "tracestate": environ.get("HTTP_TRACESTATE", "")})
            if traceparent
            else Context()  # a root span: the provider sent no trace context
        )
        route = request.url_rule.rule if request.url_rule is not None else request.path
        with _tracer.start_as_current_span(
            f"POST {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route, "parley.channel_type": channel_type},
        ) as span:
            try:
                body = handle()
            except Refused as exc:
                gw_metrics.WEBHOOK_REJECTED.labels(channel_type, exc.error).inc()
                span.set_attribute("http.response.status_code", exc.status)
                return _error(exc.status, exc.error, exc.message)
            except InvalidEnvelope as exc:
                gw_metrics.WEBHOOK_REJECTED.labels(channel_type, "invalid_body").inc()
                span.set_attribute("http.response.status_code", 400)
                response = jsonify(exc.as_json())
                response.status_code = 400
                return response
            except (NatsUnavailable, LookupUnavailable) as exc:
                gw_metrics.WEBHOOK_REJECTED.labels(channel_type, "unavailable").inc()
                log.warning("webhook answered 503: %s", exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                span.set_attribute("http.response.status_code", 503)
                response = _error(503, "unavailable", "events could not be stored right now; retry later")
                response.headers["Retry-After"] = "1"
                return response
            span.set_attribute("http.response.status_code", 200)
            if accepted is not None:
                return accepted(body)
            return Response(json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n", mimetype="application/json")

    async def deliver(channel_type: str, items: list[ParsedItem], fixed: ChannelInfo | None) -> dict[str, Any]:
        """On the bridge loop: resolve each item's channel, publish the known ones, count the rest."""
        if fixed is not None:
            channels: list[ChannelInfo | None] = [fixed] * len(items)
        else:
            channels = await bridge.resolve_accounts(channel_type, [item.channel_keys for item in items])
        now = Timestamp()
        now.GetCurrentTime()
        batch: list[tuple[str, ev.InboundEvent]] = []
        unknown = 0
        for item, channel in zip(items, channels, strict=True):
            if channel is None or not channel.active:
                unknown += 1
                gw_metrics.UNKNOWN_CHANNEL.labels(channel_type).inc()
                log.info(
                    "webhook item for no active %s channel (keys %s); answered 200, not published",
                    channel_type,
                    ",".join(item.channel_keys) or (fixed.id if fixed else ""),
                )
                continue
            event = item.event
            event.space_id, event.channel_id = channel.space_id, channel.id
            event.received_at.CopyFrom(now)
            subject = contract.inbound_subject(channel.space_id, channel.id, event.contact_external_id)
            batch.append((subject, event))
        await bridge.publish(batch)
        kinds = Counter(KIND_NAMES.get(event.kind, "unknown") for _, event in batch)
        for kind, count in kinds.items():
            gw_metrics.INBOUND_EVENTS.labels(channel_type, kind).inc(count)
        bridge.note_inbound({event.channel_id for _, event in batch})
        return {"status": "ok", "published": len(batch), "ignored": unknown}

    # -- Meta: Messenger, Instagram, WhatsApp -----------------------------------------------------------------------

    def meta_verify(channel_type: str) -> Response:
        mode = request.args.get("hub.mode", "")
        token = request.args.get("hub.verify_token", "")
        challenge = request.args.get("hub.challenge", "")
        expected = settings.channel_gateway_meta_verify_token
        if mode == "subscribe" and expected and hmac.compare_digest(token.encode(), expected.encode()):
            return Response(challenge, status=200, mimetype="text/plain")
        gw_metrics.WEBHOOK_REJECTED.labels(channel_type, "verification_failed").inc()
        return _error(403, "verification_failed", "hub.mode must be 'subscribe' and hub.verify_token must match")

    def meta_post(channel_type: str) -> Response:
        def handle() -> dict[str, Any]:
            body = read_json_body(channel_type)
            if not settings.channel_gateway_meta_app_secret:
                raise Refused(403, "signature_invalid", "the gateway has no Meta app secret configured")
            check(
                verify_meta_signature(body, request.headers.get(META_HEADER), settings.channel_gateway_meta_app_secret),
                META_HEADER,
            )
            items = META_PARSERS[channel_type](body)
            return bridge.run(deliver(channel_type, items, None), timeout + lookup_timeout)

        return webhook(channel_type, handle)

    for name in META_PARSERS:
        app.add_url_rule(f"/webhooks/{name}", f"{name}_verify", lambda name=name: meta_verify(name), methods=["GET"])
        app.add_url_rule(f"/webhooks/{name}", f"{name}_post", lambda name=name: meta_post(name), methods=["POST"])

    # -- Telegram, custom and LINE channels: the channel is in the URL -----------------------------------------------

    def by_url(channel_type: str, channel_id: str) -> ChannelInfo:
        channel = bridge.run(bridge.channel_by_id(channel_id), lookup_timeout) if len(channel_id) <= 64 else None
        if channel is None or channel.type != channel_type:
            raise Refused(404, "unknown_channel", f"no {channel_type} channel {channel_id[:64]}")
        return channel

    @app.post("/webhooks/telegram/<channel_id>")
    def telegram_post(channel_id: str) -> Response:
        def handle() -> dict[str, Any]:
            body = read_json_body("telegram")
            channel = by_url("telegram", channel_id)
            check(verify_telegram_secret(request.headers.get(TELEGRAM_HEADER), channel.secret), TELEGRAM_HEADER)
            items = parse_telegram(body, channel_id=channel.id)
            return bridge.run(deliver("telegram", items, channel), timeout + lookup_timeout)

        return webhook("telegram", handle)

    @app.post("/webhooks/custom/<channel_id>")
    def custom_post(channel_id: str) -> Response:
        def handle() -> dict[str, Any]:
            body = read_json_body("custom")
            channel = by_url("custom", channel_id)
            check(verify_custom_signature(body, request.headers.get(CUSTOM_HEADER), channel.secret), CUSTOM_HEADER)
            items = parse_custom(body, channel_id=channel.id)
            return bridge.run(deliver("custom", items, channel), timeout + lookup_timeout)

        return webhook("custom", handle)

    @app.post("/webhooks/line/<channel_id>")
    def line_post(channel_id: str) -> Response:
        def handle() -> dict[str, Any]:
            body = read_json_body("line")
            channel = by_url("line", channel_id)
            check(verify_line_signature(body, request.headers.get(LINE_HEADER), channel.secret), LINE_HEADER)
            items = parse_line(body, channel_id=channel.id)
            return bridge.run(deliver("line", items, channel), timeout + lookup_timeout)

        return webhook("line", handle)

    @app.post("/webhooks/viber/<channel_id>")
    def viber_post(channel_id: str) -> Response:
        def handle() -> dict[str, Any]:
            body = read_json_body("viber")
            if is_setup_check(load_callback(body)):
                # Viber sends it while set_webhook runs, before ConnectChannel commits the channel: no lookup.
                return {"status": "ok", "published": 0, "ignored": 0}
            channel = by_url("viber", channel_id)
            check(verify_viber_signature(body, request.headers.get(VIBER_HEADER), channel.secret), VIBER_HEADER)
            items = parse_viber(body, channel_id=channel.id)
            return bridge.run(deliver("viber", items, channel), timeout + lookup_timeout)

        return webhook("viber", handle)

    @app.post("/webhooks/twilio_sms/<channel_id>")
    def twilio_sms_post(channel_id: str) -> Response:
        def handle() -> dict[str, Any]:
            body = read_json_body("twilio_sms", "application/x-www-form-urlencoded")
            channel = by_url("twilio_sms", channel_id)
            params = parse_form(body)
            # Twilio signs the URL it requested: the public one, rebuilt from the setting (not the Host header,
            # which behind the Ingress names the gateway itself).
            query = request.query_string.decode("latin-1")
            url = f"{public_url}/webhooks/twilio_sms/{channel_id}" + (f"?{query}" if query else "")
            check(
                verify_twilio_signature(url, params, request.headers.get(TWILIO_HEADER), channel.secret), TWILIO_HEADER
            )
            items = parse_twilio_sms(params, channel_id=channel.id)
            return bridge.run(deliver("twilio_sms", items, channel), timeout + lookup_timeout)

        return webhook("twilio_sms", handle, lambda _: Response(EMPTY_TWIML, mimetype="text/xml"))

    # -- probes and metrics -----------------------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> Response:
        """Liveness: the bridge's main task runs (NATS outages show on /readyz only)."""
        if bridge.alive:
            return jsonify({"status": "ok"})
        return _error(503, "not_alive", "the NATS/database bridge has stopped")

    @app.get("/readyz")
    def readyz() -> Response:
        if bridge.ready:
            return jsonify({"status": "ready"})
        return _error(503, "not_ready", "not connected to NATS yet")

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        registry: CollectorRegistry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app
