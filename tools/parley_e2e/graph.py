"""A local stand-in for graph.facebook.com: answers the Send API and records every request."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class FakeGraph:
    """Threaded HTTP server on 127.0.0.1. `POST /<page>/messages` answers `{"recipient_id", "message_id"}` with
    message ids `m_out_<n>`; anything else answers `{}`. `url` is what PARLEY_CHANNEL_GATEWAY_GRAPH_API_URL takes."""

    requests: list[Recorded] = field(default_factory=list)
    record: bool = True
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v21.0"

    def env(self) -> dict[str, str]:
        return {"PARLEY_CHANNEL_GATEWAY_GRAPH_API_URL": self.url}

    def start(self) -> FakeGraph:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as graph.facebook.com

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = fake._answer(self.command, self.path, dict(self.headers), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-graph", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        with self._lock:
            self._counter += 1
            n = self._counter
            if self.record:
                self.requests.append(Recorded(method, path, headers, body, time.time()))
        if path.endswith("/messages"):
            try:
                recipient = json.loads(body).get("recipient", {}).get("id", "")
            except (ValueError, AttributeError):
                return 400, {"error": {"message": "invalid JSON", "code": 100}}
            return 200, {"recipient_id": recipient, "message_id": f"m_out_{n}"}
        return 200, {}

    def received(self, path_suffix: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(path_suffix)]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> Recorded:
        """The first recorded request for which `predicate(recorded)` is true, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for r in self.requests:
                    if predicate(r):
                        return r
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake Graph API received no matching request in {timeout}s: {self.requests}")
            time.sleep(0.05)
