"""The `parley conversations|shortcuts|reports` commands against a running service."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner
from parley_cli.main import cli


async def _parley(target: str, token: str, *args: str) -> tuple[int, str]:
    """Run `parley ...` in a thread (the CLI runs its own event loop)."""
    env = {"PARLEY_CONVERSATIONS_ADDR": target, "PARLEY_TOKEN": token}
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    return result.exit_code, result.output


async def test_cli_lists_shows_replies_assigns_closes_and_reopens(service, helpers, mint_token, admin) -> None:
    app, target = service
    sp = await admin.space()
    u1 = await admin.member(sp)
    owner = mint_token(space_id=sp, role="owner", subject="user:boss", extra={"name": "Boss"})
    await helpers.publish_inbound(app.rt.js, [helpers.inbound(sp, f"ch-{sp}", "psid-cli", f"{sp}-1", first_name="Ada")])

    async def listed():
        code, out = await _parley(target, owner, "conversations", "list", "--json")
        data = json.loads(out) if code == 0 else {}
        return data.get("conversations")

    (conv,) = await helpers.wait_for(listed)
    cid = conv["conversation_id"]
    code, out = await _parley(target, owner, "conversations", "list")
    assert code == 0 and cid in out and "open" in out

    assert (await _parley(target, owner, "shortcuts", "create", "hi", "--text", "Hi {{contact.first_name}}"))[0] == 0
    code, out = await _parley(target, owner, "shortcuts", "render", "hi", "--conversation", cid)
    assert (code, out.strip()) == (0, "Hi Ada")
    code, out = await _parley(target, owner, "conversations", "reply", cid, "--shortcut", "hi", "--json")
    assert code == 0 and json.loads(out)["text"] == "Hi Ada"
    code, out = await _parley(target, owner, "conversations", "assign", cid, "--user", u1, "--json")
    assert code == 0 and json.loads(out)["conversation"]["assignee_user_id"] == u1

    assert (await _parley(target, owner, "conversations", "categories", "create", "Sales"))[0] == 0
    assert (await _parley(target, owner, "conversations", "settings", "set", "--require-category"))[0] == 0
    code, out = await _parley(target, owner, "conversations", "close", cid)
    assert code == 1 and "FAILED_PRECONDITION" in out and "closing category" in out
    code, out = await _parley(target, owner, "conversations", "close", cid, "--category", "sales", "--json")
    assert code == 0 and json.loads(out)["closing_note"]["category_name"] == "Sales"
    code, out = await _parley(target, owner, "conversations", "reopen", cid, "--json")
    assert code == 0 and json.loads(out)["previous_conversation_id"] == cid

    code, out = await _parley(target, owner, "conversations", "show", cid)
    assert code == 0 and "Hi Ada" in out and u1 in out
    code, out = await _parley(target, owner, "conversations", "counts", "--json")
    assert code == 0 and json.loads(out)["open"] == "1"
    code, out = await _parley(target, owner, "reports", "conversations", "--json")
    assert code == 0 and json.loads(out)["opened"] == "2"
    code, out = await _parley(target, owner, "reports", "conversations", "--period", "week")
    assert code == 0 and "first response time" in out
