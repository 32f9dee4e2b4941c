"""`python -m parley_cli` is the `parley` command."""

from parley_cli.main import cli

cli()
