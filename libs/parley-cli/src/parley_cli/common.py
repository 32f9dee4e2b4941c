"""Helpers every `parley` command shares: addresses, token, output, errors."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from parley_kit.grpc_client import create_channel
from parley_kit.local.spec import PORTS, addr_env_name

T = TypeVar("T")
TOKEN_FILE = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "parley" / "token"


def address(service: str) -> str:
    """PARLEY_<SERVICE>_ADDR, or the `make run` default on 127.0.0.1."""
    default = f"127.0.0.1:{PORTS[service][0]}" if service in PORTS else ""
    value = os.environ.get(addr_env_name(service), default)
    if not value:
        raise click.UsageError(f"no address for {service}: set {addr_env_name(service)}")
    return value


def token(explicit: str | None = None) -> str:
    """--token, else PARLEY_TOKEN, else the file `parley login` wrote."""
    if explicit:
        return explicit
    if os.environ.get("PARLEY_TOKEN"):
        return os.environ["PARLEY_TOKEN"]
    if TOKEN_FILE.exists():
        return TOKEN_FILE.read_text().strip()
    return ""


def save_token(value: str) -> Path:
    TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    TOKEN_FILE.write_text(value + "\n")
    TOKEN_FILE.chmod(0o600)
    return TOKEN_FILE


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adds `--json` (machine-readable output) to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def token_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adds `--token` (defaults to PARLEY_TOKEN or the saved login)."""
    return click.option("--token", "token_value", default=None, help="Bearer token (default: $PARLEY_TOKEN).")(fn)


def run(coro: Awaitable[T]) -> T:
    """Run one async call; a gRPC error becomes one readable line and exit status 1."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as exc:
        click.echo(f"error: {exc.code().name}: {exc.details()}", err=True)
        sys.exit(1)


async def call(service: str, stub_cls: Callable[[grpc.aio.Channel], Any], method: str, request: Message,
               *, token_value: str | None = None, timeout: float = 15.0, max_attempts: int = 2) -> Any:  # fmt: skip
    """One unary RPC to `service` (retried on UNAVAILABLE up to `max_attempts`; 1 for calls not safe to repeat)."""
    channel = create_channel(address(service), token=token(token_value), timeout=timeout, max_attempts=max_attempts)
    async with channel as ch:
        return await getattr(stub_cls(ch), method)(request)


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print `data` (a message, dict or list of them) as JSON or as a table."""
    if isinstance(data, Message):
        data = to_dict(data)
    elif isinstance(data, list):
        data = [to_dict(d) if isinstance(d, Message) else d for d in data]
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    click.echo(table(rows, columns))


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain aligned text table."""
    rows = list(rows)
    if not rows:
        return "(none)"
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line.rstrip(), *(b.rstrip() for b in body)])


def _cell(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def command(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Wrap an async click callback so it runs with `run()`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run(fn(*args, **kwargs))

    return wrapper


def rpc_command(*options: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[..., Any]:
    """The tail every RPC command repeats: `@rpc_command(space_option)` stands for `@space_option @token_option
    @json_option @command` (innermost last), so the flags, their order in --help and the output stay the same."""

    def decorate(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        wrapped = token_option(json_option(command(fn)))
        for option in reversed(options):
            wrapped = option(wrapped)
        return wrapped

    return decorate
