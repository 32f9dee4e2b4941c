"""The `parley` CLI drives the workspace: bootstrap, login, and every group, with --json."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
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


# -- every command's table and --json output ----------------------------------------------------------------


def rows(result: Result) -> list[dict[str, str]]:
    """The table `result` printed on stdout, as rows keyed by the lower-case column names."""
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if re.fullmatch(r"[A-Z_]+( +[A-Z_]+)*", line))
    spans = [(m.start(), m.group().lower()) for m in re.finditer(r"\S+", lines[at])]
    ends = [start for start, _ in spans[1:]] + [None]
    body = itertools.takewhile(bool, lines[at + 1 :])
    return [{col: line[start:end].strip() for (start, col), end in zip(spans, ends, strict=True)} for line in body]


@pytest.fixture
async def owner(cli_env: dict[str, str]) -> dict[str, Any]:
    """A fresh installation owned by a user logged in through the CLI (the token is in the token file)."""
    email = unique_email("owner")
    boot = await parley_json(
        cli_env, "admin", "bootstrap", "--org", unique("Org"), "--space", "Support", "--email", email,
        "--password", PASSWORD, "--force",
    )  # fmt: skip
    assert (await parley(cli_env, "login", "--email", email, "--password", PASSWORD)).exit_code == 0
    return {**boot, "email": email}


async def test_cli_whoami_orgs_print_tables_and_json(cli_env: dict[str, str], owner: dict[str, Any]) -> None:
    assert rows(await parley(cli_env, "whoami")) == [
        {"subject": f"user:{owner['user_id']}", "email": owner["email"], "space_id": owner["space_id"],
         "role": "owner", "spaces": "1"},
    ]  # fmt: skip
    created = rows(await parley(cli_env, "orgs", "create", "Second"))
    assert [(r["name"], r["my_role"]) for r in created] == [("Second", "admin")]
    second = created[0]["id"]
    assert (await parley_json(cli_env, "orgs", "get", second))["my_role"] == "ORGANIZATION_ROLE_ADMIN"
    assert rows(await parley(cli_env, "orgs", "get", second)) == created
    assert (await parley_json(cli_env, "orgs", "rename", second, "Second Bis"))["name"] == "Second Bis"
    assert rows(await parley(cli_env, "orgs", "rename", second, "Third"))[0]["name"] == "Third"
    assert {(r["id"], r["my_role"]) for r in rows(await parley(cli_env, "orgs", "list"))} == {
        (owner["organization_id"], "admin"),
        (second, "admin"),
    }
    one = await parley(cli_env, "orgs", "list", "--page-size", "1")
    assert len(rows(one)) == 1 and one.stderr.startswith("more: --page-token ")

    user = await parley_json(
        cli_env, "users", "create", "--email", unique_email("bob"), "--name", "Bob", "--password", PASSWORD
    )
    added = rows(await parley(cli_env, "orgs", "add-member", second, user["id"]))
    assert added == [{"user_id": user["id"], "email": user["email"], "role": "member"}]
    promoted = await parley_json(cli_env, "orgs", "set-role", second, user["id"], "--role", "billing_admin")
    assert promoted["role"] == "ORGANIZATION_ROLE_BILLING_ADMIN"
    members = rows(await parley(cli_env, "orgs", "members", second))
    assert {(m["user_id"], m["display_name"], m["role"]) for m in members} == {
        (owner["user_id"], owner["email"].split("@")[0], "admin"),
        (user["id"], "Bob", "billing_admin"),
    }
    assert (await parley_json(cli_env, "orgs", "members", second, "--page-size", "1"))[0]["role"].startswith(
        "ORGANIZATION_ROLE_"
    )
    assert rows(await parley(cli_env, "orgs", "remove-member", second, user["id"])) == [{"removed": user["id"]}]
    await parley_json(cli_env, "orgs", "add-member", second, user["id"], "--role", "admin")
    assert await parley_json(cli_env, "orgs", "remove-member", second, user["id"]) == {"removed": user["id"]}


async def test_cli_spaces_print_tables_and_json(cli_env: dict[str, str], owner: dict[str, Any]) -> None:
    org, home = owner["organization_id"], owner["space_id"]
    sales = await parley_json(cli_env, "spaces", "create", "Sales", "--org", org, "--time-zone", "Europe/Paris")
    assert (sales["name"], sales["time_zone"], sales["archived"]) == ("Sales", "Europe/Paris", False)
    assert rows(await parley(cli_env, "spaces", "create", "Billing", "--org", org))[0]["time_zone"] == "UTC"
    assert rows(await parley(cli_env, "spaces", "get")) == [
        {"id": home, "organization_id": org, "name": "Support", "time_zone": "UTC", "archived": "False"}
    ]
    assert (await parley_json(cli_env, "spaces", "get", "--space", sales["id"]))["name"] == "Sales"
    assert rows(await parley(cli_env, "spaces", "rename", "Help desk"))[0]["name"] == "Help desk"
    assert (await parley_json(cli_env, "spaces", "rename", "Helpdesk", "--space", home))["name"] == "Helpdesk"
    archived = rows(await parley(cli_env, "spaces", "archive", sales["id"]))
    assert [(s["id"], s["archived"]) for s in archived] == [(sales["id"], "True")]
    listed = rows(await parley(cli_env, "spaces", "list", "--org", org))
    assert {s["name"] for s in listed} == {"Helpdesk", "Billing"}
    everything = await parley_json(cli_env, "spaces", "list", "--org", org, "--archived")
    assert {s["name"] for s in everything} == {"Helpdesk", "Billing", "Sales"}

    user = await parley_json(cli_env, "users", "create", "--email", unique_email("ann"), "--password", PASSWORD)
    assert rows(await parley(cli_env, "spaces", "remove-member", user["id"])) == [{"removed": user["id"]}]
    added = rows(await parley(cli_env, "spaces", "add-member", user["id"], "--role", "manager"))
    assert [(m["user_id"], m["role"], m["availability"]) for m in added] == [(user["id"], "manager", "offline")]
    assert (await parley_json(cli_env, "spaces", "set-role", user["id"], "--role", "agent"))["role"] == (
        "SPACE_ROLE_AGENT"
    )
    assert rows(await parley(cli_env, "spaces", "set-role", user["id"], "--role", "owner"))[0]["role"] == "owner"
    members = rows(await parley(cli_env, "spaces", "members"))
    assert {(m["user_id"], m["role"]) for m in members} == {(owner["user_id"], "owner"), (user["id"], "owner")}
    agents = await parley_json(cli_env, "spaces", "members", "--role", "owner", "--page-size", "1")
    assert len(agents) == 1 and agents[0]["role"] == "SPACE_ROLE_OWNER"
    assert await parley_json(cli_env, "spaces", "remove-member", user["id"]) == {"removed": user["id"]}

    billing = next(s["id"] for s in everything if s["name"] == "Billing")
    tokens = await parley_json(cli_env, "spaces", "switch", billing)
    assert tokens["space_id"] == billing and tokens["access_token"]
    printed = await parley(cli_env, "spaces", "switch", billing, "--print")
    assert printed.exit_code == 0 and printed.stdout.startswith("export PARLEY_TOKEN=")
    saved = await parley(cli_env, "spaces", "switch", billing)
    assert saved.stdout == f"token for space {billing} saved to {common.TOKEN_FILE}\n"
    assert (await parley_json(cli_env, "whoami"))["space_id"] == billing


async def test_cli_users_print_tables_and_json(cli_env: dict[str, str], owner: dict[str, Any]) -> None:
    me = rows(await parley(cli_env, "users", "get"))
    assert me == [{"id": owner["user_id"], "email": owner["email"], "display_name": owner["email"].split("@")[0],
                   "status": "active"}]  # fmt: skip
    made = rows(await parley(cli_env, "users", "create", "--email", unique_email("cy"), "--name", "Cy",
                             "--password", PASSWORD, "--role", "manager"))  # fmt: skip
    assert [(u["display_name"], u["status"]) for u in made] == [("Cy", "active")]
    assert (await parley_json(cli_env, "users", "get", made[0]["id"]))["status"] == "USER_STATUS_ACTIVE"
    assert rows(await parley(cli_env, "users", "rename", "Cyril", "--user", made[0]["id"]))[0]["display_name"] == (
        "Cyril"
    )
    assert (await parley_json(cli_env, "users", "rename", "Boss"))["display_name"] == "Boss"

    invited = await parley(cli_env, "users", "invite", "--email", unique_email("dee"), "--name", "Dee")
    invitee = rows(invited)[0]  # the table's one row, then the setup token lines
    assert (invitee["display_name"], invitee["status"]) == ("Dee", "invited")
    setup = re.search(r"^setup token \(shown once\): (\S+)$", invited.stdout, re.M)
    assert setup and "parley users accept-invite --token-from-invite <setup token>" in invited.stdout
    accepted = rows(await parley(cli_env, "users", "accept-invite", "--token-from-invite", setup[1],
                                 "--password", PASSWORD))  # fmt: skip
    assert [(u["id"], u["status"]) for u in accepted] == [(invitee["id"], "active")]
    again = await parley_json(cli_env, "users", "invite", "--email", unique_email("eve"))
    welcomed = await parley_json(
        cli_env, "users", "accept-invite", "--token-from-invite", again["setup_token"], "--password", PASSWORD,
        "--name", "Eve",
    )  # fmt: skip
    assert (welcomed["display_name"], welcomed["status"]) == ("Eve", "USER_STATUS_ACTIVE")

    listed = rows(await parley(cli_env, "users", "list", "--role", "manager"))
    assert [(u["display_name"], u["role"]) for u in listed] == [("Cyril", "manager")]
    assert len(await parley_json(cli_env, "users", "list")) == 4

    changed = rows(await parley(cli_env, "users", "passwd", "--current", PASSWORD, "--new", PASSWORD + "!"))
    assert changed == [{"revoked_sessions": "2"}]  # the bootstrap and the login sessions
    back = await parley_json(cli_env, "users", "passwd", "--current", PASSWORD + "!", "--new", PASSWORD)
    assert back == {"revoked_sessions": 0}


async def test_cli_teams_and_keys_print_tables_and_json(cli_env: dict[str, str], owner: dict[str, Any]) -> None:
    me = owner["user_id"]
    made = rows(await parley(cli_env, "teams", "create", "Billing"))
    assert [(t["name"], t["member_count"]) for t in made] == [("Billing", "0")]
    other = await parley_json(cli_env, "teams", "create", "Sales", "--space", owner["space_id"])
    added = rows(await parley(cli_env, "teams", "add-member", made[0]["id"], me))
    assert added == [{"team_id": made[0]["id"], "user_id": me, "email": owner["email"]}]
    assert (await parley_json(cli_env, "teams", "add-member", other["id"], me))["team_id"] == other["id"]
    assert rows(await parley(cli_env, "teams", "get", made[0]["id"])) == [{**made[0], "member_count": "1"}]
    assert (await parley_json(cli_env, "teams", "rename", other["id"], "Sales EU"))["name"] == "Sales EU"
    assert rows(await parley(cli_env, "teams", "rename", made[0]["id"], "Billing EU"))[0]["name"] == "Billing EU"
    assert {t["name"] for t in rows(await parley(cli_env, "teams", "list", "--user", me))} == {"Billing EU", "Sales EU"}
    assert len(await parley_json(cli_env, "teams", "list", "--page-size", "1")) == 1
    members = rows(await parley(cli_env, "teams", "members", made[0]["id"]))
    assert members == [{"user_id": me, "email": owner["email"], "display_name": owner["email"].split("@")[0]}]
    assert [m["user_id"] for m in await parley_json(cli_env, "teams", "members", other["id"])] == [me]
    removed = rows(await parley(cli_env, "teams", "remove-member", made[0]["id"], me))
    assert removed == [{"removed": me, "team_id": made[0]["id"]}]
    assert await parley_json(cli_env, "teams", "remove-member", other["id"], me) == {
        "removed": me,
        "team_id": other["id"],
    }
    assert rows(await parley(cli_env, "teams", "delete", other["id"])) == [{"deleted": other["id"]}]
    assert await parley_json(cli_env, "teams", "delete", made[0]["id"]) == {"deleted": made[0]["id"]}
    assert (await parley(cli_env, "teams", "list")).stdout == "(none)\n"

    created = await parley(cli_env, "keys", "create", "zapier", "--role", "manager")
    key = rows(created)[0]  # the table's one row, then the token line
    assert (key["name"], key["role"], key["last_used_at"], key["revoked"]) == ("zapier", "manager", "", "False")
    assert re.search(r"^token \(shown once, store it now\): pk_\S+$", created.stdout, re.M)
    assert rows(await parley(cli_env, "keys", "get", key["id"])) == [key]
    assert (await parley_json(cli_env, "keys", "get", key["id"]))["role"] == "SPACE_ROLE_MANAGER"
    assert rows(await parley(cli_env, "keys", "revoke", key["id"]))[0]["revoked"] == "True"
    spare = (await parley_json(cli_env, "keys", "create", "spare", "--space", owner["space_id"]))["api_key"]
    assert (await parley_json(cli_env, "keys", "revoke", spare["id"]))["revoked"] is True
    assert (await parley(cli_env, "keys", "list")).stdout == "(none)\n"
    listed = rows(await parley(cli_env, "keys", "list", "--revoked"))
    assert {(k["name"], k["revoked"]) for k in listed} == {("zapier", "True"), ("spare", "True")}
    assert len(await parley_json(cli_env, "keys", "list", "--revoked", "--page-size", "1")) == 1


async def test_cli_hours_availability_logout_print_tables_and_json(
    cli_env: dict[str, str], owner: dict[str, Any]
) -> None:
    days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
    unset = await parley(cli_env, "hours", "get")
    assert unset.stdout.splitlines()[0] == "time zone UTC (no weekly hours: always open)"
    assert rows(unset) == [{"when": day, "hours": "closed", "name": ""} for day in days]
    weekly = await parley(cli_env, "hours", "set", "--tz", "Europe/Paris", "--day", "mon=09:00-12:00,13:00-17:00")
    assert weekly.stdout.splitlines()[0] == "time zone Europe/Paris"
    assert rows(weekly)[:2] == [
        {"when": "monday", "hours": "09:00-12:00, 13:00-17:00", "name": ""},
        {"when": "tuesday", "hours": "closed", "name": ""},
    ]
    exception = await parley(cli_env, "hours", "exception", "2026-12-24", "--name", "Eve", "--open", "10:00-14:00")
    assert rows(exception)[7:] == [{"when": "2026-12-24", "hours": "10:00-14:00", "name": "Eve"}]
    closed = await parley_json(cli_env, "hours", "exception", "2026-12-25", "--name", "Christmas")
    assert [(e["date"], e["name"], e["ranges"]) for e in closed["exceptions"]][-1] == ("2026-12-25", "Christmas", [])
    assert [e["date"] for e in (await parley_json(cli_env, "hours", "get"))["exceptions"]] == [
        "2026-12-24",
        "2026-12-25",
    ]
    removed = rows(await parley(cli_env, "hours", "remove-exception", "2026-12-24"))
    assert [r["when"] for r in removed] == [*days, "2026-12-25"] and removed[-1]["hours"] == "closed"
    left = await parley_json(cli_env, "hours", "remove-exception", "2026-12-25", "--space", owner["space_id"])
    assert (left["time_zone"], left["configured"], left["exceptions"]) == ("Europe/Paris", True, [])
    checked = rows(await parley(cli_env, "hours", "check", "--at", "2026-12-21T10:30:00+01:00"))
    assert [(c["within_business_hours"], c["any_agent_online"], c["online_agent_count"]) for c in checked] == [
        ("True", "False", "0")
    ]

    online = rows(await parley(cli_env, "availability", "set", "online"))
    assert [(m["user_id"], m["role"], m["availability"]) for m in online] == [(owner["user_id"], "owner", "online")]
    assert (await parley_json(cli_env, "availability", "set", "away"))["availability"] == "AVAILABILITY_STATUS_AWAY"
    assert [m["availability"] for m in rows(await parley(cli_env, "availability", "list"))] == ["away"]
    assert await parley_json(cli_env, "availability", "list", "--status", "online") == []

    assert rows(await parley(cli_env, "logout")) == [{"revoked_sessions": "1"}]
    assert not common.TOKEN_FILE.exists()
    assert (await parley(cli_env, "login", "--email", owner["email"], "--password", PASSWORD)).exit_code == 0
    assert await parley_json(cli_env, "logout", "--all") == {"revoked_sessions": 2}
