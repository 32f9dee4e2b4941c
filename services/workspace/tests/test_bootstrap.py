"""Bootstrap: guarded by the operator secret, once per installation unless forced."""

from __future__ import annotations

import grpc
from parley.workspace.v1 import auth_service_pb2 as auth
from parley.workspace.v1 import space_service_pb2 as sp
from parley_kit.errors import FailedPrecondition
from sqlalchemy import text

from .conftest import OPERATOR_SECRET, PASSWORD, Workspace, make_service, unique_email


def request(**kw: object) -> auth.BootstrapRequest:
    base: dict[str, object] = {
        "operator_secret": OPERATOR_SECRET,
        "organization_name": "Acme",
        "space_name": "Support",
        "email": "founder@example.com",
        "password": PASSWORD,
        "time_zone": "Europe/Paris",
    }
    return auth.BootstrapRequest(**{**base, **kw})  # type: ignore[arg-type]


async def count(ws: Workspace, table: str) -> int:
    async with ws.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_wrong_or_missing_operator_secret_is_refused_and_creates_nothing(workspace: Workspace) -> None:
    for secret in ["", "wrong", OPERATOR_SECRET + "x"]:
        code, message = await workspace.error("auth", "Bootstrap", request(operator_secret=secret))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "operator secret" in message
    assert await count(workspace, "organizations") == 0


async def test_bootstrap_disabled_without_an_operator_secret_setting(workspace: Workspace) -> None:
    service = make_service(workspace.engine, workspace.key, operator_secret="")
    try:
        await service.bootstrap("", org_name="A", space_name="B", email="a@example.com", password=PASSWORD)
        raise AssertionError("bootstrap must be disabled")
    except FailedPrecondition as exc:
        assert "PARLEY_WORKSPACE_OPERATOR_SECRET" in exc.message


async def clear_throttle(ws: Workspace) -> None:
    async with ws.engine.begin() as conn:
        await conn.execute(text("DELETE FROM login_throttle"))


async def test_bad_input_is_refused_before_anything_is_created(workspace: Workspace) -> None:
    await clear_throttle(workspace)
    for bad, word in [
        (request(email="not-an-email"), "email"),
        (request(password="short"), "password"),
        (request(organization_name=""), "name"),
        (request(time_zone="Moon/Base"), "time zone"),
    ]:
        code, message = await workspace.error("auth", "Bootstrap", bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and word in message
    assert await count(workspace, "users") == 0


async def test_first_bootstrap_creates_org_space_owner_and_token_then_refuses(workspace: Workspace) -> None:
    await clear_throttle(workspace)
    reply = await workspace.call("auth", "Bootstrap", request())
    assert reply.user_created and reply.organization_id and reply.space_id and reply.user_id
    caller = workspace.verify(reply.tokens.access_token)
    assert (caller.space_id, caller.role, caller.user_id) == (reply.space_id, "owner", reply.user_id)
    space = await workspace.call("spaces", "GetSpace", sp.GetSpaceRequest(), reply.tokens.access_token)
    assert space.space.name == "Support" and space.space.time_zone == "Europe/Paris"
    login = await workspace.call("auth", "Login", auth.LoginRequest(email="Founder@Example.com", password=PASSWORD))
    assert login.tokens.space_id == reply.space_id

    code, message = await workspace.error("auth", "Bootstrap", request(organization_name="Other", email=unique_email()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already has an owner" in message and "force" in message
    assert await count(workspace, "organizations") == 1

    forced = await workspace.call(
        "auth", "Bootstrap", request(organization_name="Second", email=unique_email("second"), force=True)
    )
    assert forced.organization_id != reply.organization_id and await count(workspace, "organizations") == 2
    # force with an existing user's email needs that user's password, and keeps it
    code, message = await workspace.error(
        "auth", "Bootstrap", request(organization_name="Third", password="another long passphrase", force=True)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "password" in message
    again = await workspace.call("auth", "Bootstrap", request(organization_name="Third", force=True))
    assert not again.user_created and again.user_id == reply.user_id
    # forced bootstrap still needs the secret
    code, _ = await workspace.error("auth", "Bootstrap", request(operator_secret="nope", force=True))
    assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_guessing_the_operator_secret_is_slowed_down(workspace: Workspace) -> None:
    await clear_throttle(workspace)
    codes = []
    for _ in range(6):
        code, _ = await workspace.error("auth", "Bootstrap", request(operator_secret="guess", force=True))
        codes.append(code)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
