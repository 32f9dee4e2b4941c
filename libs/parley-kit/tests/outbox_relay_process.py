"""An OutboxRelay in its own process, for the crash test: `python outbox_relay_process.py DB_URL NATS_URL DELAY`.

Each publish waits DELAY seconds before it is sent (the relay pipelines a batch's publishes: the acks of
the first ones come back while the later ones wait), so the test can SIGKILL the process mid-batch, with
events stored in JetStream and not yet marked published. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import nats
from parley_kit.db import create_engine, new_metadata, session_factory
from parley_kit.nats import Publisher
from parley_kit.outbox import OutboxRelay, outbox_table


class SlowPublisher(Publisher):
    delay = 0.0

    async def _send(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(self.delay)
        await super()._send(*args, **kwargs)


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
