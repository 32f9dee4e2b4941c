"""Fixtures for the gateway's I/O tests: real PostgreSQL and NATS (kit fixtures), a local fake provider
server (Graph API, Telegram Bot API, LINE Messaging API, Viber REST Bot API, Twilio REST API, custom webhooks)
recording what it received, and helpers to read JetStream."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import nats
import pytest
import uvloop
from cryptography.fernet import Fernet
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from parley.channel_gateway.v1 import events_pb2 as ev
from parley_channel_gateway.bridge import Bridge
from parley_channel_gateway.config import Settings
from parley_channel_gateway.crypto import SecretBox
from parley_channel_gateway.providers import Providers
from parley_channel_gateway.repository import Repository
from parley_channel_gateway.service import ChannelService, validate_credentials
from parley_channel_gateway.web_worker import WebServer
from parley_channel_gateway.webapp import create_app
from parley_kit import db
from parley_kit.auth import jwks

APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
BOT_TOKEN = "123456789:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQ"
META_TOKEN = "EAAGtestpageaccesstoken1234567890"
VIBER_TOKEN = "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f"
VIBER_ACCOUNT = "pa:5523928843278473021"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def form(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode(), keep_blank_values=True)


@dataclass
class FakeProvider:
    """A local HTTP server standing in for graph.facebook.com, api.telegram.org, api.line.me, chatapi.viber.com,
    api.twilio.com and custom webhooks."""

    requests: list[Recorded] = field(default_factory=list)
    scripts: list[tuple[re.Pattern[str], list[tuple[int, Any, dict[str, str]]]]] = field(default_factory=list)
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, path_pattern: str, *responses: tuple[int, Any] | tuple[int, Any, dict[str, str]]) -> None:
        """The next requests whose path matches get these (status, json[, headers]) answers, in order."""
        queue = [(r[0], r[1], r[2] if len(r) > 2 else {}) for r in responses]
        with self.lock:
            self.scripts.append((re.compile(path_pattern), queue))

    def received(self, path_pattern: str = "") -> list[Recorded]:
        pattern = re.compile(path_pattern)
        with self.lock:
            return [r for r in self.requests if pattern.search(r.path)]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.scripts.clear()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            self.counter += 1
            n = self.counter
            for pattern, queue in self.scripts:
                if queue and pattern.search(path):
                    return queue.pop(0)
        if "/2010-04-01/Accounts/" in path:
            return _twilio_answer(method, path, n)
        data = json.loads(body) if body else {}
        if path.startswith("/line/"):
            if path.endswith("/v2/bot/info"):  # a new bot each time unless scripted
                return 200, {"userId": f"U{uuid.uuid4().hex}", "basicId": "@123abcde", "displayName": "Parley"}, {}
            if path.endswith("/v2/bot/message/push"):
                return 200, {"sentMessages": [{"id": f"{n}", "quoteToken": f"q{n}"}]}, {}
            return 200, {}, {}
        if path.startswith("/viber/"):
            if path.endswith("/get_account_info"):
                return 200, {"status": 0, "status_message": "ok", "id": VIBER_ACCOUNT, "name": "Parley Viber Bot"}, {}
            if path.endswith("/send_message"):  # message tokens are 64-bit integers above 2^53
                return 200, {"status": 0, "status_message": "ok", "message_token": 5098034272017990000 + n}, {}
            return 200, {"status": 0, "status_message": "ok"}, {}
        if "/bot" in path:
            method_name = path.rsplit("/", 1)[-1]
            if method_name == "getMe":
                return 200, {"ok": True, "result": {"id": 123456789, "is_bot": True, "username": "parley_test_bot"}}, {}
            if method_name.startswith("send"):
                result = {"message_id": n, "chat": {"id": int(data.get("chat_id", 0) or 0)}}
                return 200, {"ok": True, "result": result}, {}
            return 200, {"ok": True, "result": True}, {}
        if path.endswith("/messages"):
            if data.get("messaging_product") == "whatsapp":
                return 200, {"messaging_product": "whatsapp", "messages": [{"id": f"wamid.{n}"}]}, {}
            return 200, {"recipient_id": data.get("recipient", {}).get("id"), "message_id": f"m_{n}"}, {}
        return 200, {"message_id": f"custom-{n}"}, {}


def _twilio_answer(method: str, path: str, n: int) -> tuple[int, Any, dict[str, str]]:
    """Twilio REST: the looked-up number (any number belongs to the account), its update, a created message."""
    parts = urlsplit(path)
    if method == "GET" and parts.path.endswith("/IncomingPhoneNumbers.json"):
        number = parse_qs(parts.query).get("PhoneNumber", [""])[0]
        found = {"sid": f"PN{n:032x}", "phone_number": number, "capabilities": {"sms": True}}
        return 200, {"incoming_phone_numbers": [found], "page": 0}, {}
    if parts.path.endswith("/Messages.json"):
        return 201, {"sid": f"SM{n:032x}", "status": "queued"}, {}
    return 200, {"sid": parts.path.rsplit("/", 1)[-1].removesuffix(".json")}, {}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeProvider

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.fake.lock:
            self.fake.requests.append(Recorded(self.command, self.path, dict(self.headers), body, time.time()))
        status, payload, headers = self.fake.answer(self.command, self.path, body)
        if isinstance(payload, float | int) and status == 0:  # (0, seconds): hang to provoke a timeout
            time.sleep(payload)
            return
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST

    def do_HEAD(self) -> None:
        """A file's size for Viber video/file sends: `/files/<n bytes>/...` has Content-Length n."""
        with self.fake.lock:
            self.fake.requests.append(Recorded("HEAD", self.path, dict(self.headers), b"", time.time()))
        size = self.path.split("/")[2] if self.path.startswith("/files/") else ""
        self.send_response(200 if size.isdigit() else 404)
        self.send_header("Content-Length", size if size.isdigit() else "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fake_provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    handler = type("Handler", (_Handler,), {"fake": fake})
    fake.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    fake.server.daemon_threads = True
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture(scope="module")
def encryption_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def make_settings(
    database_url: str, nats_url: str, fake_provider: FakeProvider, encryption_key: str, signing_key: Any
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "nats_url": nats_url,
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": 0,
            "auth_jwks": json.dumps(jwks(signing_key)),
            "channel_gateway_encryption_key": encryption_key,
            "channel_gateway_meta_app_secret": APP_SECRET,
            "channel_gateway_meta_verify_token": VERIFY_TOKEN,
            "channel_gateway_graph_api_url": fake_provider.url + "/graph",
            "channel_gateway_telegram_api_url": fake_provider.url + "/telegram",
            "channel_gateway_line_api_url": fake_provider.url + "/line",
            "channel_gateway_viber_api_url": fake_provider.url + "/viber",
            "channel_gateway_twilio_api_url": fake_provider.url + "/twilio",
            "channel_gateway_public_url": "https://gateway.test",
            "channel_gateway_channel_cache_seconds": 0.5,
            "channel_gateway_provider_timeout_seconds": 2.0,
            "shutdown_grace_seconds": 2.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    asyncio.run(db.run_migrations("parley_channel_gateway", database_url))
    return database_url


def run(coro: Any) -> Any:
    """Run a coroutine from a synchronous test on a fresh loop."""
    return asyncio.run(coro)


async def connect_channel(settings: Settings, space_id: str, type_: str, name: str = "", **fields: str) -> Any:
    """Connect a channel through the domain service (as ConnectChannel does); returns Connected."""
    engine = db.create_engine(settings.database_url, pool_size=1)
    providers = Providers(
        settings.channel_gateway_graph_api_url,
        settings.channel_gateway_telegram_api_url,
        line_api_url=settings.channel_gateway_line_api_url,
        viber_api_url=settings.channel_gateway_viber_api_url,
        twilio_api_url=settings.channel_gateway_twilio_api_url,
    )
    try:
        service = ChannelService(
            Repository(db.session_factory(engine)),
            SecretBox(settings.channel_gateway_encryption_key),
            providers,
            settings.channel_gateway_public_url,
        )
        return await service.connect(space_id, name, validate_credentials(type_, fields))
    finally:
        await providers.aclose()
        await engine.dispose()


@dataclass
class Published:
    subject: str
    headers: dict[str, str]
    event: ev.InboundEvent


async def inbound_events(
    nats_url: str, *, channel_id: str = "", space_id: str = "", wait: float = 0.3
) -> list[Published]:
    """Every InboundEvent in the stream for `channel_id` (or `space_id`), in stream order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=5)
        sub = await js.pull_subscribe("channel_gateway.inbound.*", stream="CHANNEL_GATEWAY", config=config)
        found: list[Published] = []
        while True:
            try:
                msgs = await sub.fetch(500, timeout=wait)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for msg in msgs:
                event = ev.InboundEvent.FromString(msg.data)
                if (channel_id and event.channel_id == channel_id) or (space_id and event.space_id == space_id):
                    found.append(Published(msg.subject, dict(msg.headers or {}), event))
            if not msgs:
                break
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class Answer:
    """An HTTP answer of the web app, read like Flask's test responses (`status_code`, `data`, `json`)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.data = response.content
        self.headers = response.headers

    @property
    def is_json(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/json")

    @property
    def json(self) -> Any:
        return json.loads(self.data) if self.is_json else None


async def _cancel_other_tasks() -> None:
    """Cancel what is left on the loop (nats-py leaves tasks of replaced connections behind), as asyncio.run does
    before closing its loop, so none is destroyed pending on a closed loop."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class WebClient:
    """The web process's server (`web_worker.WebServer`: HTTP on an event loop, Flask in greenlets, the Bridge on the
    same loop) on a local port, its loop in a background thread as in a gunicorn worker, and an HTTP client."""

    def __init__(self, settings: Settings) -> None:
        self.server = WebServer(create_app(settings, Bridge(settings)), keepalive=5, log=logging.getLogger("web"))
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="web-server-loop", daemon=True)
        self.thread.start()
        listener = socket.create_server(("127.0.0.1", 0))
        self._call(self.server.start([listener]))
        self.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self.http = httpx.Client(base_url=self.base_url, timeout=30)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def get(self, path: str, query_string: dict[str, str] | None = None) -> Answer:
        return Answer(self.http.get(path, params=query_string))

    def post(self, path: str, data: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        return Answer(self.http.post(path, content=data, headers=headers))

    def close(self) -> None:
        self.http.close()
        self._call(self.server.stop(5))
        self._call(_cancel_other_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def gw() -> Any:
    """Helpers and constants for the gateway tests (test modules cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        run=run,
        connect_channel=connect_channel,
        inbound_events=inbound_events,
        wait_until=wait_until,
        WebClient=WebClient,
        APP_SECRET=APP_SECRET,
        VERIFY_TOKEN=VERIFY_TOKEN,
        BOT_TOKEN=BOT_TOKEN,
        META_TOKEN=META_TOKEN,
        VIBER_TOKEN=VIBER_TOKEN,
        VIBER_ACCOUNT=VIBER_ACCOUNT,
    )
