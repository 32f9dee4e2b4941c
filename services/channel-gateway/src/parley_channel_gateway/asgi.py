"""Entry point for gunicorn's asyncio (`asgi`) worker: the Flask webhook app on the worker's one event loop.

Each request runs the Flask (WSGI) app in a greenlet on the loop (`greenlets.py`); when it publishes, the
Bridge awaits JetStream on that same loop. One thread per worker process: no hand-off between a request
thread, a thread pool and a loop thread (three wake-ups per webhook before), no GIL contention.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from flask import Flask
from parley_kit.settings import load_settings

from parley_channel_gateway.bridge import Bridge
from parley_channel_gateway.config import Settings
from parley_channel_gateway.greenlets import run_in_greenlet
from parley_channel_gateway.webapp import create_app

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class WsgiOnLoop:
    """ASGI app: builds the Bridge and the Flask app at lifespan startup, then serves HTTP through them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limit = settings.channel_gateway_max_body_bytes
        self.bridge: Bridge | None = None
        self.app: Flask | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        if self.app is None:
            self.bridge = await Bridge(self.settings).start()
            self.app = create_app(self.settings, self.bridge)

    async def shutdown(self) -> None:
        if self.bridge is not None:
            await self.bridge.aclose()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "serve with lifespan on: the app is built at lifespan startup"
        body = await self._read_body(receive)
        status, headers, content = await run_in_greenlet(self._call_wsgi, wsgi_environ(scope, body))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _read_body(self, receive: Receive) -> bytes:
        """The request body, read up to one byte past the limit (the app then answers 413)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False) or size > self.limit:
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _call_wsgi(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """In a greenlet: the whole WSGI call, response body included."""
        assert self.app is not None
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        result: Iterable[bytes] = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        return int(status[:3]), encoded, content


def wsgi_environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The PEP 3333 environ of an ASGI HTTP request whose whole body is `body`."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(client[0]), str(client[1])
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def make_app() -> WsgiOnLoop:
    """gunicorn's app factory: `parley_channel_gateway.asgi:make_app()`."""
    return WsgiOnLoop(load_settings(Settings))
