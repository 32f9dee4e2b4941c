"""The `parley` CLI drives the workspace: bootstrap, login, and every group, with --json."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from parley_cli import common
from parley_cli.main import cli

from .conftest import OPERATOR_SECRET, PASSWORD, Workspace, unique, unique_email


@pytest.fixture
def cli_env(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(common, "TOKEN_FILE", tmp_path / "parley" / "token")
    return {"PARLEY_WORKSPACE_ADDR": workspace.target, "PARLEY_TOKEN": "", "PARLEY_OPERATOR_SECRET": OPERATOR_SECRET}


async def parley(env: dict[str, str], *args: str) -> Result:
    # The CLI runs its own event loop, so it runs in a thread while the service serves in this one.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env, catch_exceptions=False)


async def parley_json(env: dict[str, str], *args: str) -> Any:
    result = await parley(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_cli_bootstrap_login_and_every_group(cli_env: dict[str, str]) -> None:
    email = unique_email("cli")
    boot = await parley_json(
        cli_env, "admin", "bootstrap", "--org", unique("Cli Org"), "--space", "Support", "--email", email,
        "--password", PASSWORD, "--force",
    )  # fmt: skip
    assert {"organization_id", "space_id", "user_id", "token"} <= boot.keys()

    plain = await parley(cli_env, "login", "--email", email, "--password", PASSWORD)
    assert plain.exit_code == 0 and "saved to" in plain.output
    assert common.TOKEN_FILE.read_text().strip()  # later commands use the stored token
    printed = await parley(cli_env, "login", "--email", email, "--password", PASSWORD, "--print")
    assert printed.stdout.startswith("export PARLEY_TOKEN=")

    me = await parley_json(cli_env, "whoami")
    assert me["space_id"] == boot["space_id"] and me["role"] == "owner" and "api_keys.manage" in me["permissions"]
    assert [o["id"] for o in (await parley_json(cli_env, "orgs", "list"))] == [boot["organization_id"]]
    assert [s["id"] for s in await parley_json(cli_env, "spaces", "list")] == [boot["space_id"]]

    invited = await parley_json(cli_env, "users", "invite", "--email", unique_email("inv"), "--role", "manager")
    assert invited["created"] and invited["setup_token"]
    members = await parley_json(cli_env, "users", "list")
    assert {m["role"] for m in members} == {"SPACE_ROLE_OWNER", "SPACE_ROLE_MANAGER"}

    team = await parley_json(cli_env, "teams", "create", "Billing")
    await parley_json(cli_env, "teams", "add-member", team["id"], boot["user_id"])
    assert (await parley_json(cli_env, "teams", "get", team["id"]))["member_count"] == 1

    key = await parley_json(cli_env, "keys", "create", "zapier", "--role", "agent")
    assert key["token"].startswith("pk_")
    revoked = await parley_json(cli_env, "keys", "revoke", key["api_key"]["id"])
    assert revoked["revoked"]

    await parley_json(
        cli_env,
        "hours",
        "set",
        "--tz",
        "Europe/Paris",
        "--day",
        "mon=09:00-12:00,13:00-17:00",
        "--day",
        "tue=09:00-17:00",
    )
    await parley_json(cli_env, "hours", "exception", "2026-12-28", "--name", "Holiday")
    monday_morning = await parley_json(cli_env, "hours", "check", "--at", "2026-12-21T10:30:00+01:00")
    assert monday_morning["within_business_hours"] is True
    holiday = await parley_json(cli_env, "hours", "check", "--at", "2026-12-28T10:30:00+01:00")
    assert holiday["within_business_hours"] is False and holiday["exception_name"] == "Holiday"
    await parley_json(cli_env, "availability", "set", "online")
    online = await parley_json(cli_env, "availability", "list", "--status", "online")
    assert [m["user_id"] for m in online] == [boot["user_id"]]

    table = await parley(cli_env, "hours", "get")
    assert table.exit_code == 0 and "09:00-12:00, 13:00-17:00" in table.output and "Holiday" in table.output


async def test_cli_errors_are_one_line_and_exit_1(cli_env: dict[str, str]) -> None:
    result = await parley(cli_env, "login", "--email", unique_email("nobody"), "--password", "wrong password")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: UNAUTHENTICATED: email or password is incorrect"
    refused = await parley(
        {**cli_env, "PARLEY_OPERATOR_SECRET": "wrong"}, "admin", "bootstrap", "--org", "X", "--space", "Y",
        "--email", unique_email(), "--password", PASSWORD,
    )  # fmt: skip
    assert refused.exit_code == 1 and "operator secret" in refused.stderr
