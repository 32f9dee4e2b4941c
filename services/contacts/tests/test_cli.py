"""`parley contacts|fields|tags|views` against a real contacts gRPC server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from parley_cli.main import cli
from parley_contacts.grpc_api import SERVICE_NAME, ContactsApi, register
from parley_contacts.repository import Repository
from parley_contacts.service import Actor, ContactsService
from parley_kit.auth import SigningKey, TokenVerifier, jwks
from parley_kit.db import session_factory
from parley_kit.grpc_server import GrpcServer, JwtAuthenticator
from parley_kit.testing.processes import WorkspaceProcess


@pytest.fixture(scope="module")
async def target(service: ContactsService, signing_key: SigningKey) -> AsyncIterator[str]:
    server = GrpcServer("contacts", authenticator=JwtAuthenticator(TokenVerifier.from_jwks(jwks(signing_key))))
    server.add(register, ContactsApi(service), SERVICE_NAME)
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    yield f"127.0.0.1:{port}"
    await server.stop(1)


@pytest.fixture(scope="module")
async def cli_space(workspace_service: WorkspaceProcess) -> str:
    return await workspace_service.admin.space()


@pytest.fixture(scope="module")
def parley(target: str, mint_token: Callable[..., str], cli_space: str) -> Callable[..., object]:
    """parley(*args, role="manager") -> click Result, the CLI running in a thread (it has its own loop)."""

    async def run(*args: str, role: str = "manager") -> Result:
        token = mint_token(space_id=cli_space, role=role, subject="user:m")
        env = {"PARLEY_CONTACTS_ADDR": target, "PARLEY_TOKEN": token}
        return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env, catch_exceptions=False)

    return run


async def test_cli_drives_fields_tags_contacts_views_with_json(parley, tmp_path: Path, admin, cli_space) -> None:
    juan = await admin.member(cli_space)
    assert (
        await parley("fields", "create", "plan", "--type", "list", "--option", "free", "--option", "pro")
    ).exit_code == 0
    assert (await parley("tags", "create", "vip")).exit_code == 0
    made = await parley(
        "contacts",
        "create",
        "--first-name",
        "Ana",
        "--email",
        "ana@x.com",
        "--field",
        "plan=pro",
        "--tag",
        "VIP",
        "--identity",
        "ch-wa:5511",
        "--json",
    )
    assert made.exit_code == 0, made.output
    contact = json.loads(made.output)
    assert contact["field_values"][0]["value"] == "pro" and contact["identities"][0]["external_id"] == "5511"
    listed = json.loads((await parley("contacts", "list", "--search", "an", "--json")).output)
    assert [c["id"] for c in listed["contacts"]] == [contact["id"]]
    table = await parley("contacts", "list")
    assert "Ana" in table.output and "vip" in table.output and "1 contact(s)" in table.output
    criteria = {
        "root": {"nodes": [{"field": {"field": "plan", "operator": "FIELD_OPERATOR_EQUALS", "values": ["pro"]}}]}
    }
    view = json.loads(
        (await parley("views", "create", "Pro", "--criteria", json.dumps(criteria), "--shared", "--json")).output
    )
    by_view = json.loads((await parley("contacts", "list", "--view", view["id"], "--json")).output)
    assert by_view["page"]["total_count"] == "1"
    assert (await parley("contacts", "assign", contact["id"], "--user", juan)).exit_code == 0
    assert (await parley("contacts", "untag", contact["id"], "--tag", "vip")).exit_code == 0
    shown = json.loads((await parley("contacts", "show", contact["id"], "--json")).output)
    assert shown["assignee"]["user_id"] == juan and "tag_ids" not in shown


async def test_cli_errors_are_one_line_and_non_zero(parley) -> None:
    result = await parley("contacts", "delete", "--yes", "00000000-0000-4000-8000-000000000000", role="agent")
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: PERMISSION_DENIED:")
    missing = await parley("contacts", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output


async def test_csv_import_maps_columns_and_reports_bad_rows_without_stopping(parley, tmp_path: Path) -> None:
    await parley("fields", "create", "age", "--type", "number")
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "First Name,E-mail,age,tags,notes\n"
        "Bea,bea@x.com,31,csv;new,hello\n"
        "Bad,not-an-email,40,,\n"
        "Cy,,abc,,\n"
        "Dee,dee@x.com,,csv,\n"
    )
    result = await parley("contacts", "import", str(csv_file), "--map", "E-mail=email", "--map", "notes=-", "--json")
    assert result.exit_code == 3  # some rows failed, some were imported
    report = json.loads(result.stdout)
    assert (report["created"], report["failed"]) == (2, 2)
    errors = {r["line"]: r["error"] for r in report["results"] if r["error"]}
    assert set(errors) == {3, 4} and "email" in errors[3] and "field 'age'" in errors[4]
    listed = json.loads((await parley("contacts", "list", "--search", "dee", "--json")).output)
    assert listed["contacts"][0]["email"] == "dee@x.com"
    unmapped = await parley("contacts", "import", str(csv_file))
    assert unmapped.exit_code != 0 and "E-mail" in unmapped.output


async def test_cli_says_a_capped_total_is_a_lower_bound(
    engine, sink, signing_key: SigningKey, mint_token: Callable[..., str]
) -> None:
    capped = ContactsService(Repository(session_factory(engine), sink), count_limit=2)
    for name in ("a", "b", "c"):
        await capped.create_contact("sp_cli_cap", Actor(subject="user:m"), {"first_name": name})
    server = GrpcServer("contacts", authenticator=JwtAuthenticator(TokenVerifier.from_jwks(jwks(signing_key))))
    server.add(register, ContactsApi(capped), SERVICE_NAME)
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    try:
        env = {
            "PARLEY_CONTACTS_ADDR": f"127.0.0.1:{port}",
            "PARLEY_TOKEN": mint_token(space_id="sp_cli_cap", role="manager", subject="user:m"),
        }
        table = await asyncio.to_thread(CliRunner().invoke, cli, ["contacts", "list"], env=env, catch_exceptions=False)
        assert "\n2+ contact(s)" in table.output
        raw = await asyncio.to_thread(CliRunner().invoke, cli, ["contacts", "list", "--json"], env=env)
        assert json.loads(raw.output)["total_count_capped"] is True
    finally:
        await server.stop(1)
