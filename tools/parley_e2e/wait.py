"""Polling with a deadline: the platform is asynchronous (JetStream, outbox relays), tests wait for outcomes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.1) -> T:
    """`check()`'s first result that neither raises AssertionError nor is falsy, retried until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            problem: object = f"returned {result!r}"
        except AssertionError as exc:
            problem = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout}s: {problem}")
        time.sleep(interval)
