"""The `parley` command: every capability of the platform over gRPC."""

from __future__ import annotations

import click

from parley_cli.commands.status import status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Drive Parley's services. Addresses default to `make run`'s; set PARLEY_<SERVICE>_ADDR to override."""


cli.add_command(status)
