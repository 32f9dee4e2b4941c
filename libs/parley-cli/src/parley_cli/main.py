"""The `parley` command: every capability of the platform over gRPC."""

from __future__ import annotations

import click

from parley_cli.commands.channels import channels
from parley_cli.commands.contacts import GROUPS as CONTACTS_GROUPS
from parley_cli.commands.conversations import GROUPS as CONVERSATIONS_COMMANDS
from parley_cli.commands.status import status
from parley_cli.commands.workspace import GROUPS as WORKSPACE_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Drive Parley's services. Addresses default to `make run`'s; set PARLEY_<SERVICE>_ADDR to override."""


cli.add_command(status)
cli.add_command(channels)
for _command in WORKSPACE_COMMANDS:
    cli.add_command(_command)
for _group in CONTACTS_GROUPS:
    cli.add_command(_group)
for _command in CONVERSATIONS_COMMANDS:
    cli.add_command(_command)
