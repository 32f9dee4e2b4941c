"""`parley contacts|fields|tags|views` against a real contacts gRPC server."""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from parley.contacts.v1 import contacts_service_pb2 as pb
from parley_cli.commands import contacts_import
from parley_cli.main import cli
from parley_contacts.grpc_api import SERVICE_NAME, ContactsApi, register
from parley_contacts.repository import Repository
from parley_contacts.service import Actor, ContactsService
from parley_kit.auth import SigningKey, TokenVerifier, jwks
from parley_kit.db import session_factory
from parley_kit.errors import Unavailable
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
    *rows, last = [json.loads(line) for line in result.stdout.splitlines()]  # JSON Lines: rows, then a summary
    assert last["summary"] == {"created": 2, "updated": 0, "failed": 2, "complete": True}
    errors = {r["line"]: (r["error_code"], r["error"]) for r in rows if r["outcome"] == "failed"}
    assert set(errors) == {3, 4} and "email" in errors[3][1] and "field 'age'" in errors[4][1]
    assert errors[3][0] == "INVALID_ARGUMENT"
    assert [r["line"] for r in rows if r["outcome"] == "created" and r["contact_id"]] == [2, 5]
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


async def test_csv_import_reports_the_line_each_record_starts_on_and_can_start_at_a_line(
    parley, tmp_path: Path
) -> None:
    csv_file = tmp_path / "lines.csv"
    csv_file.write_text('First Name,E-mail,notes\nAnn,ann@lines.com,"two\nlines"\n\nBad,nope,\nCid,cid@lines.com,\n')
    result = await parley("contacts", "import", str(csv_file), "--map", "E-mail=email", "--map", "notes=-")
    assert result.exit_code == 3
    assert result.stderr.splitlines() == ["line 5: field 'email': 'nope' is not an email address (name@example.com)"]
    assert "lines 2-6: 2 created, 0 updated, 1 failed" in result.stdout
    again = await parley(
        "contacts", "import", str(csv_file), "--map", "E-mail=email", "--map", "notes=-", "--start-line", "6",
        "--dedupe-by", "email", "--json",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    (row, last) = [json.loads(line) for line in again.stdout.splitlines()]
    assert (row["line"], row["outcome"]) == (6, "updated")
    assert last["summary"]["updated"] == 1
    refused = await parley(
        "contacts", "import", str(csv_file), "--map", "E-mail=email", "--map", "notes=-", role="agent"
    )
    assert refused.exit_code == 1 and "error: PERMISSION_DENIED" in refused.stderr
    assert "lines 2-6: not imported" in refused.stderr and "unknown" not in refused.stderr
    assert refused.stderr.strip().endswith(
        f"resume with: parley contacts import {csv_file} --map=E-mail=email --map=notes=- --start-line=2"
    )


class FailingSecondCall(ContactsApi):
    """Imports its second batch, then fails the call, as a server restarting or a deadline passing would."""

    def __init__(self, service: ContactsService) -> None:
        super().__init__(service)
        self.calls = 0

    async def ImportContacts(self, request: pb.ImportContactsRequest, context: object) -> pb.ImportContactsResponse:
        self.calls += 1
        response = await super().ImportContacts(request, context)
        if self.calls == 2:
            raise Unavailable("the service is restarting")
        return response


async def test_a_failed_batch_stops_the_import_saying_which_lines_are_done_and_how_to_resume(
    service: ContactsService, signing_key: SigningKey, mint_token: Callable[..., str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(contacts_import, "IMPORT_BATCH", 2)
    api = FailingSecondCall(service)
    server = GrpcServer("contacts", authenticator=JwtAuthenticator(TokenVerifier.from_jwks(jwks(signing_key))))
    server.add(register, api, SERVICE_NAME)
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    env = {
        "PARLEY_CONTACTS_ADDR": f"127.0.0.1:{port}",
        "PARLEY_TOKEN": mint_token(space_id="sp_cli_resume", role="manager", subject="user:m"),
    }

    async def parley(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env, catch_exceptions=False)

    csv_file = tmp_path / "people.csv"
    csv_file.write_text("first_name,email\n" + "".join(f"p{i},p{i}@x.com\n" for i in range(5)))
    try:
        stopped = await parley("contacts", "import", str(csv_file), "--json")
        assert stopped.exit_code == 1 and api.calls == 2  # the failed call is not repeated by itself
        *rows, last = [json.loads(line) for line in stopped.stdout.splitlines()]
        assert [(r["line"], r["outcome"]) for r in rows] == [(2, "created"), (3, "created")]
        summary = last["summary"]
        assert summary["complete"] is False and summary["error"] == "UNAVAILABLE: the service is restarting"
        lines = (summary["done_lines"], summary["unknown_lines"], summary["not_imported_lines"])
        assert lines == ([2, 3], [4, 5], [6, 6])
        assert summary["resume"] == f"parley contacts import {csv_file} --dedupe-by=email --start-line=4 --json"
        human = await parley("contacts", "import", str(csv_file), "--start-line", "6")  # the third call: fine
        assert human.exit_code == 0 and "lines 6: 1 created, 0 updated, 0 failed" in human.stdout
        api.calls = 1  # the next call fails again, after importing its rows
        stopped = await parley("contacts", "import", str(csv_file), "--dedupe-by", "email", "--start-line", "4")
        assert stopped.exit_code == 1
        assert "lines 4-5: 0 created, 2 updated" not in stopped.stdout  # its answer never came
        assert "lines 4-5: unknown" in stopped.stderr and "lines 6: not imported" in stopped.stderr
        resume = stopped.stderr.split("resume with: ")[1].splitlines()[0]
        assert resume.endswith("--dedupe-by=email --start-line=4")
        resumed = await parley(*shlex.split(resume)[1:])
        assert resumed.exit_code == 0, resumed.output
        assert "lines 4-5: 0 created, 2 updated, 0 failed" in resumed.stdout
        assert "lines 6: 0 created, 1 updated, 0 failed" in resumed.stdout
        listed = await service.list_contacts("sp_cli_resume", Actor(subject="user:m"), page_size=50)
        assert sorted(c.email for c in listed.contacts) == [f"p{i}@x.com" for i in range(5)]  # no duplicate
    finally:
        await server.stop(1)
