"""The gunicorn worker class of the web process: one uvloop event loop per worker process that serves HTTP/1.1
(parsed by httptools), runs the Flask app in a greenlet per request (`greenlets.py`) and owns the Bridge (NATS,
database), whose awaits the app's greenlets wait for on that same loop.

One thread per process and no ASGI or thread-pool layer in between: a webhook costs the HTTP parse, the app and the
publish. gunicorn still manages the processes (fork, heartbeat, restarts, signals, the metrics port).

The app gunicorn loads is the Flask app of `webapp.make_app()`; the worker starts its Bridge
(`extensions["parley_bridge"]`) before listening and closes it after the last request.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import io
import os
import signal
import socket
import sys
import time
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools
import uvloop
from flask import Flask
from gunicorn.workers import base

from parley_channel_gateway.bridge import Bridge
from parley_channel_gateway.greenlets import run_in_greenlet

MAX_HEAD_BYTES = 65_536
"""Request line and headers together; more is answered 431."""
MAX_QUEUED = 16
"""Pipelined requests read ahead of the one being answered; past this the connection stops reading."""

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class WebhookWorker(base.Worker):  # type: ignore[misc]
    """gunicorn worker: a WebServer on the process's one event loop (see the module docstring)."""

    def init_process(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._quick = False
        super().init_process()  # loads the app, sets the signals, then run()

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.loop.add_signal_handler(signal.SIGTERM, self._stop, False)
        self.loop.add_signal_handler(signal.SIGQUIT, self._stop, True)
        self.loop.add_signal_handler(signal.SIGINT, self._stop, True)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        self.loop.add_signal_handler(signal.SIGWINCH, lambda: None)

    def _stop(self, quick: bool) -> None:
        self.alive = False
        self._quick = self._quick or quick

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        server = WebServer(self.wsgi, keepalive=self.cfg.keepalive or 5, log=self.log)
        await server.start([listener.sock for listener in self.sockets])
        try:
            while self.alive and self.ppid == os.getppid():
                if server.served >= self.max_requests:
                    self.log.info("autorestarting worker after %d requests", server.served)
                    break
                self.notify()
                await asyncio.sleep(1.0)
        finally:
            await server.stop(0 if self._quick else self.cfg.graceful_timeout)


class WebServer:
    """Serves the Flask app (whose `extensions["parley_bridge"]` it starts and closes) on listening sockets."""

    def __init__(self, app: Flask, *, keepalive: float, log: Any) -> None:
        self.app = app
        self.bridge: Bridge = app.extensions["parley_bridge"]
        self.limit = int(app.config["MAX_CONTENT_LENGTH"])
        self.keepalive = keepalive
        self.log = log
        self.connections: set[HttpProtocol] = set()
        self.alive = True
        self.served = 0
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self, sockets: list[socket.socket]) -> None:
        await self.bridge.start()
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._servers.append(await loop.create_server(lambda: HttpProtocol(self), sock=sock))

    async def stop(self, grace: float) -> None:
        """Stop listening, let the requests in hand finish (at most `grace` seconds), close the Bridge."""
        self.alive = False
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.close_when_idle()
        in_hand = [c.runner for c in self.connections if c.runner is not None]
        if in_hand and grace > 0:
            await asyncio.wait(in_hand, timeout=grace)
        for connection in list(self.connections):
            connection.abort()
        await self.bridge.aclose()


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: requests parsed by httptools, answered one at a time, in order."""

    def __init__(self, server: WebServer) -> None:
        self.web = server
        self.app = server.app
        self.limit = server.limit
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.runner: asyncio.Task[None] | None = None
        self.closing = False
        self.discard = False  # a body over the limit: the rest of the connection's input is ignored
        self.writable = asyncio.Event()
        self.writable.set()
        self.idle_timer: asyncio.TimerHandle | None = None
        self._new_message()

    # -- connection -------------------------------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # uvloop's TCPTransport is not an asyncio.Transport
        self.transport = transport
        sockname = transport.get_extra_info("sockname") or ("", 0)
        peername = transport.get_extra_info("peername") or ("", 0)
        self.server = (str(sockname[0]), str(sockname[1]))
        self.peer = (str(peername[0]), str(peername[1]))
        self.web.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.web.connections.discard(self)
        self.closing = True
        self.queue.clear()
        self.writable.set()
        self._cancel_idle_timer()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def close_when_idle(self) -> None:
        """Shutting down: finish the request in hand (if any), then close."""
        self.closing = True
        if self.runner is None and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return
        self._arm_idle_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # answered as a plain request; what follows is not HTTP/1.1 for us
            self.discard = self.closing = True
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadTooLarge):
                raise
            self._refuse(431, "headers_too_large", f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
        except httptools.HttpParserError:
            self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")
        if len(self.queue) > MAX_QUEUED:
            assert self.transport is not None
            self.transport.pause_reading()

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        if self.runner is None:
            self.idle_timer = self.loop.call_later(self.web.keepalive, self._idle)

    def _cancel_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _idle(self) -> None:
        if self.runner is None and self.transport is not None:
            self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------------------------------------

    def _new_message(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0

    def on_message_begin(self) -> None:
        self._new_message()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        expect_continue = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" and value.strip().isdigit() and int(value) > self.limit:
                # Answer now (the app says 413) and read no further: the body is not wanted.
                self._enqueue(keep_alive=False)
                self.discard = True
                return
            if lowered == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        room = self.limit + 1 - self.body_bytes  # one byte past the limit is enough for the app to answer 413
        if room > 0:
            self.body.append(body[:room])
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if not self.discard:
            self._enqueue(keep_alive=self.parser.should_keep_alive())

    def _enqueue(self, keep_alive: bool) -> None:
        body = b"".join(self.body)
        self.queue.append(
            {
                "method": self.parser.get_method().decode("latin-1"),
                "url": self.url,
                "version": self.parser.get_http_version(),
                "headers": self.headers,
                "body": body,
                "keep_alive": keep_alive,
            }
        )
        if self.runner is None:
            self._cancel_idle_timer()
            self.runner = self.loop.create_task(self._run())

    # -- answering ----------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.queue and not (self.transport is None or self.transport.is_closing()):
                request = self.queue.popleft()
                if len(self.queue) <= MAX_QUEUED // 2 and self.transport is not None:
                    self.transport.resume_reading()
                status, headers, content = await run_in_greenlet(self._call_app, request)
                keep_alive = request["keep_alive"] and not self.closing and self.web.alive
                await self.writable.wait()
                if self.transport is None or self.transport.is_closing():
                    return
                self.transport.write(_response(request["version"], status, headers, content, request, keep_alive))
                self.web.served += 1
                if not keep_alive:
                    self.transport.close()
                    return
        finally:
            self.runner = None
            if self.closing and self.transport is not None:
                self.transport.close()
            else:
                self._arm_idle_timer()

    def _call_app(self, request: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """In a greenlet: the WSGI call, response body included."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        try:
            result = self.app(self._environ(request), start_response)
            try:
                content = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            self.web.log.exception("the webhook app failed")
            return 500, [("Content-Type", "application/json")], b'{"error":"internal","message":"server error"}'
        status, headers = started
        return int(status[:3]), headers, content

    def _environ(self, request: dict[str, Any]) -> dict[str, Any]:
        url = httptools.parse_url(request["url"])
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request["method"],
            "SCRIPT_NAME": "",
            "PATH_INFO": _unquote(url.path or b"/"),
            "QUERY_STRING": (url.query or b"").decode("latin-1"),
            "SERVER_NAME": self.server[0],
            "SERVER_PORT": self.server[1],
            "SERVER_PROTOCOL": f"HTTP/{request['version']}",
            "REMOTE_ADDR": self.peer[0],
            "REMOTE_PORT": self.peer[1],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(request["body"]),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for raw_name, raw_value in request["headers"]:
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name
            value = raw_value.decode("latin-1")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _refuse(self, status: int, error: str, message: str) -> None:
        """A request that never reaches the app (unparseable): answer and close."""
        self.discard = True
        if self.transport is None or self.transport.is_closing():
            return
        content = f'{{"error":"{error}","message":"{message}"}}'.encode()
        headers = [("Content-Type", "application/json")]
        if self.runner is None:
            self.transport.write(_response("1.1", status, headers, content, {"method": "GET"}, False))
            self.transport.close()
        else:  # answer in order, after the request in hand
            self.queue.clear()
            self.closing = True


class _HeadTooLarge(Exception):
    pass


def _unquote(path: bytes) -> str:
    return unquote_to_bytes(path).decode("latin-1")


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _response(
    version: str, status: int, headers: list[tuple[str, str]], content: bytes, request: dict[str, Any], keep: bool
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}".encode(), b"Date: " + _date()]
    has_length = False
    for name, value in headers:
        if name.lower() == "content-length":
            has_length = True
        lines.append(f"{name}: {value}".encode("latin-1"))
    if not has_length:
        lines.append(b"Content-Length: %d" % len(content))
    if not keep:
        lines.append(b"Connection: close")
    elif version == "1.0":
        lines.append(b"Connection: keep-alive")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if request["method"] == "HEAD" else head + content
