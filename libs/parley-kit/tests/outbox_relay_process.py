"""An OutboxRelay in its own process, for the crash test: `python outbox_relay_process.py DB_URL NATS_URL DELAY`.

Each publish waits DELAY seconds first, so the test can SIGKILL the process mid-batch. SIGTERM
stops it gracefully.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import nats
from nats.js.api import PubAck
from parley_kit.db import create_engine, new_metadata, session_factory
from parley_kit.nats import Publisher
from parley_kit.outbox import OutboxRelay, outbox_table


class SlowPublisher(Publisher):
    delay = 0.0

    async def publish_raw(self, *args: Any, **kwargs: Any) -> PubAck:
        await asyncio.sleep(self.delay)
        return await super().publish_raw(*args, **kwargs)


async def main(database_url: str, nats_url: str, delay: float) -> None:
    nc = await nats.connect(nats_url)
    engine = create_engine(database_url, pool_size=2)
    publisher = SlowPublisher(nc.jetstream(), "kit-outbox-test")
    publisher.delay = delay
    table = outbox_table(new_metadata())
    relay = OutboxRelay(session_factory(engine), table, publisher, "kit-outbox-test", batch_size=50, poll_interval=0.1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await relay.start()
    await stop.wait()
    await relay.stop()
    await nc.drain()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
