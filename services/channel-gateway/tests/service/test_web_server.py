"""The web process's HTTP/1.1 server (`web_worker.WebServer`) on the wire: keep-alive and pipelining in order,
chunked bodies, Expect: 100-continue, and refusals that never reach a provider route (unparseable requests,
oversized heads and bodies) answered with JSON and the connection closed."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

LIMIT = 2048


@pytest.fixture(scope="module")
def port(migrated: str, make_settings: Callable[..., Any], gw: Any) -> Iterator[int]:
    client = gw.WebClient(make_settings(channel_gateway_max_body_bytes=LIMIT))
    gw.wait_until(lambda: client.get("/readyz").status_code == 200, timeout=20)
    yield int(client.base_url.rsplit(":", 1)[1])
    client.close()


def exchange(port: int, data: bytes, *, until_closed: bool = True) -> list[tuple[bytes, dict[str, str], bytes]]:
    """Send raw bytes; the answers read until the server closes the connection (or 3 s of silence)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        sock.settimeout(3)
        raw = b""
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except TimeoutError:
            assert not until_closed, "the server kept the connection open"
    answers = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {k.decode().lower(): v.decode().strip() for k, _, v in (ln.partition(b":") for ln in lines)}
        length = int(headers.get("content-length", "0"))
        answers.append((status, headers, raw[:length]))
        raw = raw[length:]
    return answers


def test_keep_alive_answers_pipelined_requests_in_order_then_closes_on_request(port: int) -> None:
    answers = exchange(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /no/such/route HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK"]
    assert json.loads(answers[1][2])["error"] == "not_found"
    assert answers[2][1]["connection"] == "close" and "date" in answers[0][1]


def test_a_chunked_body_reaches_the_app(port: int) -> None:
    (answer,) = exchange(
        port,
        b"POST /webhooks/messenger HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n{"ob\r\n4\r\nj":1\r\n1\r\n}\r\n0\r\n\r\n',
    )
    # The signature is checked over the reassembled body: the app saw it.
    assert answer[0] == b"HTTP/1.1 401 Unauthorized" and json.loads(answer[2])["error"] == "signature_missing"


def test_expect_100_continue_is_answered_before_the_body(port: int) -> None:
    answers = exchange(
        port,
        b"POST /webhooks/messenger HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n{}",
    )
    assert [a[0] for a in answers] == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 401 Unauthorized"]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_413_json(port: int, chunked: bool) -> None:
    body = b"x" * (LIMIT * 4)
    framing = (
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        if chunked
        else b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body[:100]  # the rest is never read
    )
    answers = exchange(
        port, b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing,
        until_closed=not chunked,
    )  # fmt: skip
    assert answers[0][0] == b"HTTP/1.1 413 Content Too Large"
    assert json.loads(answers[0][2])["error"] == "body_too_large"


def test_unparseable_requests_and_oversized_heads_are_refused_and_closed(port: int) -> None:
    (garbage,) = exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert garbage[0] == b"HTTP/1.1 400 Bad Request" and json.loads(garbage[2])["error"] == "bad_request"
    (long_head,) = exchange(port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert long_head[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(long_head[2])["error"] == "headers_too_large"
