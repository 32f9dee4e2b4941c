"""Run a service's runtime inside a test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from parley_kit.runtime import ServiceRuntime


@asynccontextmanager
async def running(runtime: ServiceRuntime, startup_seconds: float = 30.0) -> AsyncIterator[str]:
    """Start a connected, wired runtime; yield its gRPC target; stop it gracefully on exit."""
    task = asyncio.create_task(runtime.run(install_signal_handlers=False))
    ready = asyncio.create_task(runtime.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=startup_seconds, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # re-raise the startup failure
    if ready not in done:
        raise TimeoutError("service did not become ready")
    try:
        yield f"127.0.0.1:{runtime.grpc.port}"
    finally:
        runtime.request_stop()
        await task
