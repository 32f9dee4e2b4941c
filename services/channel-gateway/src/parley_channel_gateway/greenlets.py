"""Synchronous code on an asyncio loop: run a function in a greenlet that can wait for awaitables.

`await run_in_greenlet(fn, *args)` (a coroutine, on the loop) calls `fn` in a new greenlet; inside it,
`wait(awaitable)` switches back to the caller, which awaits the awaitable on the loop and switches back in
with its result (or exception). Many such greenlets interleave on one thread, each with its own contextvars
context (greenlet gives every greenlet its own), so the request contexts of Flask and OpenTelemetry stay apart.
This is the technique of SQLAlchemy's asyncio layer, without thread hand-offs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import greenlet

T = TypeVar("T")


class _Child(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet started by run_in_greenlet; `driver` is the greenlet that awaits on its behalf."""

    def __init__(self, fn: Callable[..., Any], driver: greenlet.greenlet) -> None:
        super().__init__(fn, driver)
        self.driver = driver


def in_greenlet() -> bool:
    """True inside a function that run_in_greenlet is running (where `wait` may be called)."""
    return isinstance(greenlet.getcurrent(), _Child)


def wait(awaitable: Awaitable[T]) -> T:
    """From inside run_in_greenlet: let the loop await `awaitable`; return its result or raise its exception."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Child):
        if isinstance(awaitable, Coroutine):
            awaitable.close()  # never awaited: close it rather than leak it
        raise RuntimeError("wait() called outside run_in_greenlet")
    return current.driver.switch(awaitable)  # type: ignore[no-any-return]


async def run_in_greenlet(fn: Callable[..., T], *args: Any) -> T:
    """Call `fn(*args)` in a greenlet, awaiting on the loop whatever it passes to `wait`."""
    child = _Child(fn, greenlet.getcurrent())
    result = child.switch(*args)
    while not child.dead:
        try:
            value = await result
        except BaseException as exc:  # handed back to the greenlet, which raises it (or handles it)
            result = child.throw(exc)
        else:
            result = child.switch(value)
    return result  # type: ignore[no-any-return]
