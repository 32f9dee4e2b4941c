"""`python -m parley_channel_gateway serve|web|worker|migrate`."""

from __future__ import annotations

import asyncio
import sys

from parley_kit.settings import load_settings

from parley_channel_gateway.config import Settings


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "serve"
    if command == "web":
        from parley_channel_gateway.app import web
        from parley_channel_gateway.crypto import SecretBox

        # Fail here, clearly, rather than in every gunicorn worker.
        SecretBox(load_settings(Settings).channel_gateway_encryption_key)
        web()
    elif command == "worker":
        from parley_channel_gateway.app import worker

        asyncio.run(worker(load_settings(Settings)))
    else:
        from parley_kit.runtime import service_main

        from parley_channel_gateway.app import serve

        service_main("parley_channel_gateway", Settings, serve, args)


if __name__ == "__main__":
    main()
