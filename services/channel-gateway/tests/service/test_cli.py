"""`parley channels ...` against a running ChannelService."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from click.testing import CliRunner
from parley_channel_gateway.app import build_serve
from parley_cli.main import cli
from parley_kit.testing.service import running


@pytest.fixture(scope="module")
async def address(migrated: str, make_settings: Callable[..., Any]) -> AsyncIterator[str]:
    async with running(await build_serve(make_settings())) as target:
        yield target


async def parley(address: str, token: str, *args: str, input: str | None = None) -> Any:
    env = {"PARLEY_CHANNEL_GATEWAY_ADDR": address, "PARLEY_TOKEN": token}
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env, input=input)


async def test_cli_connects_lists_shows_checks_health_and_disconnects(
    address: str, mint_token: Callable[..., str]
) -> None:
    token = mint_token(space_id=f"space-{uuid.uuid4().hex[:8]}", role="manager")
    page = str(uuid.uuid4().int)[:15]
    connected = await parley(
        address, token, "channels", "connect", "messenger", "--page-id", page, "--name", "Shop", "--json",
        input="EAAGclitoken0123456789abcdef\n",
    )  # fmt: skip
    assert connected.exit_code == 0, connected.output
    channel = json.loads(connected.output[connected.output.index("{") :])
    assert channel["external_id"] == page and channel["type"] == "messenger" and channel["status"] == "active"

    custom = await parley(address, token, "channels", "connect", "custom", "--webhook-url", "https://app.example/h")
    assert custom.exit_code == 0 and "webhook secret (shown once" in custom.output

    listed = await parley(address, token, "channels", "list", "--json")
    assert listed.exit_code == 0
    assert {c["type"] for c in json.loads(listed.output)} == {"messenger", "custom"}
    table = await parley(address, token, "channels", "list", "--type", "messenger")
    assert "CHANNEL_ID" in table.output and page in table.output

    shown = await parley(address, token, "channels", "show", channel["channel_id"], "--json")
    assert json.loads(shown.output)["name"] == "Shop"
    health = await parley(address, token, "channels", "health", channel["channel_id"], "--json")
    assert json.loads(health.output)["status"] == "active"

    gone = await parley(address, token, "channels", "disconnect", channel["channel_id"], "--yes", "--json")
    assert json.loads(gone.output)["status"] == "disconnected"


async def test_cli_errors_are_one_line_and_exit_1(address: str, mint_token: Callable[..., str]) -> None:
    token = mint_token(space_id="space-x", role="agent")
    denied = await parley(address, token, "channels", "connect", "custom", "--webhook-url", "https://a.example/x")
    assert denied.exit_code == 1 and denied.output.strip().startswith("error: PERMISSION_DENIED")
    missing = await parley(address, token, "channels", "show", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output


async def test_cli_connects_line_with_prompted_secrets(address: str, mint_token: Callable[..., str]) -> None:
    token = mint_token(space_id=f"space-{uuid.uuid4().hex[:8]}", role="manager")
    connected = await parley(
        address, token, "channels", "connect", "line", "--name", "LINE shop", "--json",
        input="5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d\nlineCliAccessToken0123456789=\n",
    )  # fmt: skip
    assert connected.exit_code == 0, connected.output
    channel = json.loads(connected.output[connected.output.index("{") :])
    assert channel["type"] == "line" and channel["external_id"].startswith("U") and channel["name"] == "LINE shop"
    assert channel["inbound_webhook_url"].endswith(f"/webhooks/line/{channel['channel_id']}")
    listed = await parley(address, token, "channels", "list", "--type", "line", "--json")
    assert [c["channel_id"] for c in json.loads(listed.output)] == [channel["channel_id"]]


async def test_cli_connects_a_viber_bot_with_a_prompted_token(
    address: str, mint_token: Callable[..., str], fake_provider: Any, gw: Any
) -> None:
    account = f"pa:cli-{uuid.uuid4().hex[:8]}"
    fake_provider.script("/viber/get_account_info", (200, {"status": 0, "id": account, "name": "CLI Bot"}))
    token = mint_token(space_id=f"space-{uuid.uuid4().hex[:8]}", role="manager")
    connected = await parley(address, token, "channels", "connect", "viber", "--json", input=f"{gw.VIBER_TOKEN}\n")
    assert connected.exit_code == 0, connected.output
    channel = json.loads(connected.output[connected.output.index("{") :])
    assert (channel["type"], channel["external_id"], channel["name"]) == ("viber", account, "CLI Bot")
    assert channel["inbound_webhook_url"].endswith(f"/webhooks/viber/{channel['channel_id']}")
    listed = await parley(address, token, "channels", "list", "--type", "viber", "--json")
    assert [c["channel_id"] for c in json.loads(listed.output)] == [channel["channel_id"]]


async def test_cli_connects_a_twilio_sms_number_with_a_prompted_auth_token(
    address: str, mint_token: Callable[..., str], fake_provider: Any
) -> None:
    token = mint_token(space_id=f"space-{uuid.uuid4().hex[:8]}", role="manager")
    number, sid = f"+1646{uuid.uuid4().int % 10**7:07d}", "AC" + uuid.uuid4().hex
    connected = await parley(
        address, token, "channels", "connect", "twilio-sms", "--account-sid", sid, "--phone-number", number, "--json",
        input=uuid.uuid4().hex + "\n",
    )  # fmt: skip
    assert connected.exit_code == 0, connected.output
    channel = json.loads(connected.output[connected.output.index("{") :])
    assert channel["type"] == "twilio_sms" and channel["external_id"] == number and channel["account_detail"] == sid
    assert channel["inbound_webhook_url"].endswith(f"/webhooks/twilio_sms/{channel['channel_id']}")
    listed = await parley(address, token, "channels", "list", "--type", "twilio_sms", "--json")
    assert [c["channel_id"] for c in json.loads(listed.output)] == [channel["channel_id"]]
