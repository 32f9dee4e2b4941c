"""Synchronous code waiting for awaitables on the loop it runs on (the web process's request model)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest
from parley_channel_gateway.greenlets import in_greenlet, run_in_greenlet, wait

current = contextvars.ContextVar("current", default="none")


async def _later(value: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return value


async def _fail() -> None:
    raise LookupError("from the loop")


def test_wait_returns_the_awaited_result_and_raises_its_exception() -> None:
    def handler() -> str:
        assert in_greenlet()
        first = wait(_later("a", 0))
        with pytest.raises(LookupError, match="from the loop"):
            wait(_fail())
        return first + wait(_later("b", 0))

    assert asyncio.run(run_in_greenlet(handler)) == "ab"
    assert not in_greenlet()
    outside = _later("c", 0)
    with pytest.raises(RuntimeError):
        wait(outside)
    assert outside.cr_frame is None  # closed, not left to warn "never awaited"


def test_interleaved_requests_keep_their_own_context_variables() -> None:
    def handler(name: str, delay: float) -> tuple[str, str]:
        current.set(name)
        awaited = wait(_later(name, delay))
        return awaited, current.get()

    async def both() -> list[tuple[str, str]]:
        return await asyncio.gather(run_in_greenlet(handler, "slow", 0.05), run_in_greenlet(handler, "fast", 0))

    assert asyncio.run(both()) == [("slow", "slow"), ("fast", "fast")]
    assert current.get() == "none"


def test_an_exception_of_the_function_reaches_the_caller() -> None:
    def handler() -> None:
        wait(_later("x", 0))
        raise ValueError("in the handler")

    with pytest.raises(ValueError, match="in the handler"):
        asyncio.run(run_in_greenlet(handler))
