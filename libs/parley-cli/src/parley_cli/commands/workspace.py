"""Workspace commands: `parley admin bootstrap`, `parley login`, and the orgs, spaces, users, teams,
keys, hours and availability groups. Every command takes `--json`; all but bootstrap, login, logout and
`users accept-invite` (which work without an access token) also `--token`."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.common.v1 import common_pb2
from parley.workspace.v1 import api_key_service_pb2 as keys_pb
from parley.workspace.v1 import api_key_service_pb2_grpc as keys_grpc
from parley.workspace.v1 import auth_service_pb2 as auth_pb
from parley.workspace.v1 import auth_service_pb2_grpc as auth_grpc
from parley.workspace.v1 import availability_service_pb2 as av_pb
from parley.workspace.v1 import availability_service_pb2_grpc as av_grpc
from parley.workspace.v1 import organization_service_pb2 as org_pb
from parley.workspace.v1 import organization_service_pb2_grpc as org_grpc
from parley.workspace.v1 import resources_pb2 as res
from parley.workspace.v1 import space_service_pb2 as sp_pb
from parley.workspace.v1 import space_service_pb2_grpc as sp_grpc
from parley.workspace.v1 import team_service_pb2 as tm_pb
from parley.workspace.v1 import team_service_pb2_grpc as tm_grpc
from parley.workspace.v1 import user_service_pb2 as us_pb
from parley.workspace.v1 import user_service_pb2_grpc as us_grpc

from parley_cli import common
from parley_cli.common import command, emit, json_option, rpc_command

SPACE_ROLES = {"agent": res.SPACE_ROLE_AGENT, "manager": res.SPACE_ROLE_MANAGER, "owner": res.SPACE_ROLE_OWNER}
ORG_ROLES = {
    "admin": res.ORGANIZATION_ROLE_ADMIN,
    "billing_admin": res.ORGANIZATION_ROLE_BILLING_ADMIN,
    "member": res.ORGANIZATION_ROLE_MEMBER,
}
STATUSES = {
    "online": res.AVAILABILITY_STATUS_ONLINE,
    "away": res.AVAILABILITY_STATUS_AWAY,
    "offline": res.AVAILABILITY_STATUS_OFFLINE,
}
DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
ENUM_PREFIXES = ("SPACE_ROLE_", "ORGANIZATION_ROLE_", "AVAILABILITY_STATUS_", "USER_STATUS_", "WEEKDAY_")
MEMBER_COLS = ["user_id", "email", "display_name", "role", "availability"]


def refresh_file() -> Any:
    return common.TOKEN_FILE.parent / "refresh_token"


def _plain(value: Any) -> Any:
    """Enum names without their prefix ("SPACE_ROLE_OWNER" -> "owner") for tables."""
    if isinstance(value, str):
        for prefix in ENUM_PREFIXES:
            if value.startswith(prefix):
                return value.removeprefix(prefix).lower()
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_dict(message: Message) -> dict[str, Any]:
    """Every field, defaults included (so `false` and `0` show up in tables and JSON)."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def out(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    """A message, a dict, or a list of either, as JSON or a table."""
    if isinstance(data, list):
        rows: Any = [to_dict(m) if isinstance(m, Message) else m for m in data]
    elif isinstance(data, Message):
        rows = to_dict(data)
    else:
        rows = data
    emit(rows if as_json else _plain(rows), as_json, columns)


async def rpc(stub: Callable[..., Any], method: str, request: Message, token_value: str | None) -> Any:
    return await common.call("workspace", stub, method, request, token_value=token_value)


def page(size: int, token: str) -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=size, page_token=token)


def paging(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--page-token", default="", help="next_page_token of the previous page.")(fn)
    return click.option("--page-size", default=0, type=int, help="Items per page (default 50, at most 200).")(fn)


def space_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--space", "space", default="", help="Space id (default: the token's space).")(fn)


def role_option(choices: dict[str, int], default: str | None = None) -> Callable[..., Any]:
    return click.option(
        "--role", type=click.Choice(list(choices)), default=default, required=default is None, show_default=True
    )


def next_page(reply: Any) -> None:
    if reply.page.next_page_token:
        click.echo(f"more: --page-token {reply.page.next_page_token}", err=True)


def _operator_secret(explicit: str | None) -> str:
    value = explicit or os.environ.get("PARLEY_OPERATOR_SECRET", "")
    if not value:
        raise click.UsageError("give --operator-secret or set PARLEY_OPERATOR_SECRET")
    return value


def save_session(tokens: res.TokenPair) -> str:
    path = common.save_token(tokens.access_token)
    if tokens.refresh_token:
        refresh_file().write_text(tokens.refresh_token + "\n")
        refresh_file().chmod(0o600)
    return str(path)


# -- admin bootstrap, login, logout, whoami ---------------------------------------------------------------


@click.group()
def admin() -> None:
    """Installation administration."""


@admin.command("bootstrap")
@click.option("--org", "org_name", required=True, help="Name of the first organization.")
@click.option("--space", "space_name", required=True, help="Name of its first space.")
@click.option("--email", required=True, help="Email of the first owner.")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Owner's password.")
@click.option("--display-name", default="", help="Owner's display name (default: from the email).")
@click.option("--time-zone", default="", help="IANA time zone of the space (default UTC).")
@click.option("--operator-secret", default=None, help="Operator secret (default: $PARLEY_OPERATOR_SECRET).")
@click.option("--force", is_flag=True, help="Bootstrap again although the installation has an owner.")
@click.option("--save", is_flag=True, help="Also store the token as `parley login` does.")
@json_option
@command
async def bootstrap(
    org_name: str,
    space_name: str,
    email: str,
    password: str,
    display_name: str,
    time_zone: str,
    operator_secret: str | None,
    force: bool,
    save: bool,
    as_json: bool,
) -> None:
    """Create the first organization, space and owner; print the owner's token."""
    request = auth_pb.BootstrapRequest(
        operator_secret=_operator_secret(operator_secret),
        organization_name=org_name,
        space_name=space_name,
        email=email,
        password=password,
        display_name=display_name,
        time_zone=time_zone,
        force=force,
    )
    reply = await rpc(auth_grpc.AuthServiceStub, "Bootstrap", request, None)
    if save:
        save_session(reply.tokens)
    if as_json:
        out(
            {
                "organization_id": reply.organization_id,
                "space_id": reply.space_id,
                "user_id": reply.user_id,
                "user_created": reply.user_created,
                "token": reply.tokens.access_token,
                "refresh_token": reply.tokens.refresh_token,
            },
            True,
        )
        return
    click.echo(
        f"organization {reply.organization_id}, space {reply.space_id}, owner {reply.user_id}; "
        "token below (export PARLEY_TOKEN=...)",
        err=True,
    )
    click.echo(reply.tokens.access_token)


@click.command()
@click.option("--email", prompt=True, help="Your email.")
@click.option("--password", prompt=True, hide_input=True, help="Your password.")
@click.option("--space", "space", default="", help="Space to log into (default: your first).")
@click.option("--print", "print_only", is_flag=True, help="Print `export PARLEY_TOKEN=...` instead of storing it.")
@json_option
@command
async def login(email: str, password: str, space: str, print_only: bool, as_json: bool) -> None:
    """Log in; store the token in ~/.config/parley/token (or print it)."""
    reply = await rpc(
        auth_grpc.AuthServiceStub, "Login", auth_pb.LoginRequest(email=email, password=password, space_id=space), None
    )
    if as_json:
        out(reply, True)
        return
    if print_only:
        click.echo(f"export PARLEY_TOKEN={reply.tokens.access_token}")
        return
    path = save_session(reply.tokens)
    spaces = ", ".join(f"{s.space_name} ({s.space_id})" for s in reply.spaces) or "none yet"
    click.echo(f"logged in as {reply.user.email}; token for space {reply.tokens.space_id or '-'} saved to {path}")
    click.echo(f"your spaces: {spaces}")


@click.command()
@click.option("--all", "all_sessions", is_flag=True, help="End every session of your user.")
@json_option
@command
async def logout(all_sessions: bool, as_json: bool) -> None:
    """Revoke the stored session and forget the token."""
    path = refresh_file()
    if not path.exists():
        raise click.UsageError("no stored session (log in with `parley login` first)")
    request = auth_pb.LogoutRequest(refresh_token=path.read_text().strip(), all_sessions=all_sessions)
    reply = await rpc(auth_grpc.AuthServiceStub, "Logout", request, None)
    path.unlink()
    if common.TOKEN_FILE.exists():
        common.TOKEN_FILE.unlink()
    out({"revoked_sessions": reply.revoked_sessions}, as_json)


@click.command()
@rpc_command()
async def whoami(token_value: str | None, as_json: bool) -> None:
    """Who the token names, its space, role and permissions."""
    reply = await rpc(auth_grpc.AuthServiceStub, "WhoAmI", auth_pb.WhoAmIRequest(), token_value)
    if as_json:
        out(reply, True)
        return
    out(
        {
            "subject": reply.subject,
            "email": reply.user.email,
            "space_id": reply.space_id,
            "role": reply.role,
            "spaces": len(reply.spaces),
        },
        False,
    )


# -- orgs -------------------------------------------------------------------------------------------------

ORG_COLS = ["id", "name", "my_role"]


@click.group()
def orgs() -> None:
    """Organizations and their members."""


@orgs.command("list")
@rpc_command(paging)
async def orgs_list(page_size: int, page_token: str, token_value: str | None, as_json: bool) -> None:
    """Your organizations."""
    reply = await rpc(
        org_grpc.OrganizationServiceStub,
        "ListOrganizations",
        org_pb.ListOrganizationsRequest(page=page(page_size, page_token)),
        token_value,
    )
    out(list(reply.organizations), as_json, ORG_COLS)
    next_page(reply)


@orgs.command("create")
@click.argument("name")
@rpc_command()
async def orgs_create(name: str, token_value: str | None, as_json: bool) -> None:
    """Create an organization (you become its admin)."""
    reply = await rpc(
        org_grpc.OrganizationServiceStub, "CreateOrganization", org_pb.CreateOrganizationRequest(name=name), token_value
    )
    out(reply.organization, as_json, ORG_COLS)


@orgs.command("get")
@click.argument("organization_id")
@rpc_command()
async def orgs_get(organization_id: str, token_value: str | None, as_json: bool) -> None:
    """One organization."""
    request = org_pb.GetOrganizationRequest(organization_id=organization_id)
    reply = await rpc(org_grpc.OrganizationServiceStub, "GetOrganization", request, token_value)
    out(reply.organization, as_json, ORG_COLS)


@orgs.command("rename")
@click.argument("organization_id")
@click.argument("name")
@rpc_command()
async def orgs_rename(organization_id: str, name: str, token_value: str | None, as_json: bool) -> None:
    """Rename an organization (admins)."""
    request = org_pb.RenameOrganizationRequest(organization_id=organization_id, name=name)
    reply = await rpc(org_grpc.OrganizationServiceStub, "RenameOrganization", request, token_value)
    out(reply.organization, as_json, ORG_COLS)


@orgs.command("members")
@click.argument("organization_id")
@rpc_command(paging)
async def orgs_members(
    organization_id: str, page_size: int, page_token: str, token_value: str | None, as_json: bool
) -> None:
    """Members of an organization and their organization roles."""
    request = org_pb.ListOrganizationMembersRequest(organization_id=organization_id, page=page(page_size, page_token))
    reply = await rpc(org_grpc.OrganizationServiceStub, "ListOrganizationMembers", request, token_value)
    out(list(reply.members), as_json, ["user_id", "email", "display_name", "role"])
    next_page(reply)


@orgs.command("add-member")
@click.argument("organization_id")
@click.argument("user_id")
@role_option(ORG_ROLES, "member")
@rpc_command()
async def orgs_add_member(
    organization_id: str, user_id: str, role: str, token_value: str | None, as_json: bool
) -> None:
    """Add an existing user to an organization (admins)."""
    request = org_pb.AddOrganizationMemberRequest(
        organization_id=organization_id, user_id=user_id, role=ORG_ROLES[role]
    )
    reply = await rpc(org_grpc.OrganizationServiceStub, "AddOrganizationMember", request, token_value)
    out(reply.member, as_json, ["user_id", "email", "role"])


@orgs.command("set-role")
@click.argument("organization_id")
@click.argument("user_id")
@role_option(ORG_ROLES)
@rpc_command()
async def orgs_set_role(organization_id: str, user_id: str, role: str, token_value: str | None, as_json: bool) -> None:
    """Change a member's organization role (admins)."""
    request = org_pb.SetOrganizationMemberRoleRequest(
        organization_id=organization_id, user_id=user_id, role=ORG_ROLES[role]
    )
    reply = await rpc(org_grpc.OrganizationServiceStub, "SetOrganizationMemberRole", request, token_value)
    out(reply.member, as_json, ["user_id", "email", "role"])


@orgs.command("remove-member")
@click.argument("organization_id")
@click.argument("user_id")
@rpc_command()
async def orgs_remove_member(organization_id: str, user_id: str, token_value: str | None, as_json: bool) -> None:
    """Remove a user from an organization (after removing them from its spaces)."""
    request = org_pb.RemoveOrganizationMemberRequest(organization_id=organization_id, user_id=user_id)
    await rpc(org_grpc.OrganizationServiceStub, "RemoveOrganizationMember", request, token_value)
    out({"removed": user_id}, as_json)


# -- spaces -----------------------------------------------------------------------------------------------

SPACE_COLS = ["id", "organization_id", "name", "time_zone", "archived"]


@click.group()
def spaces() -> None:
    """Spaces and their members."""


@spaces.command("list")
@click.option("--org", "org_id", default="", help="Only this organization.")
@click.option("--archived", is_flag=True, help="Include archived spaces.")
@rpc_command(paging)
async def spaces_list(
    org_id: str, archived: bool, page_size: int, page_token: str, token_value: str | None, as_json: bool
) -> None:
    """Spaces you can see."""
    request = sp_pb.ListSpacesRequest(
        organization_id=org_id, include_archived=archived, page=page(page_size, page_token)
    )
    reply = await rpc(sp_grpc.SpaceServiceStub, "ListSpaces", request, token_value)
    out(list(reply.spaces), as_json, SPACE_COLS)
    next_page(reply)


@spaces.command("create")
@click.argument("name")
@click.option("--org", "org_id", required=True, help="Organization id.")
@click.option("--time-zone", default="", help="IANA time zone (default UTC).")
@rpc_command()
async def spaces_create(name: str, org_id: str, time_zone: str, token_value: str | None, as_json: bool) -> None:
    """Create a space (organization admins; you become its owner)."""
    request = sp_pb.CreateSpaceRequest(organization_id=org_id, name=name, time_zone=time_zone)
    reply = await rpc(sp_grpc.SpaceServiceStub, "CreateSpace", request, token_value)
    out(reply.space, as_json, SPACE_COLS)


@spaces.command("get")
@rpc_command(space_option)
async def spaces_get(space: str, token_value: str | None, as_json: bool) -> None:
    """One space."""
    reply = await rpc(sp_grpc.SpaceServiceStub, "GetSpace", sp_pb.GetSpaceRequest(space_id=space), token_value)
    out(reply.space, as_json, SPACE_COLS)


@spaces.command("rename")
@click.argument("name")
@rpc_command(space_option)
async def spaces_rename(name: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Rename a space."""
    request = sp_pb.RenameSpaceRequest(space_id=space, name=name)
    reply = await rpc(sp_grpc.SpaceServiceStub, "RenameSpace", request, token_value)
    out(reply.space, as_json, SPACE_COLS)


@spaces.command("archive")
@click.argument("space_id")
@rpc_command()
async def spaces_archive(space_id: str, token_value: str | None, as_json: bool) -> None:
    """Archive a space (organization admins)."""
    reply = await rpc(
        sp_grpc.SpaceServiceStub, "ArchiveSpace", sp_pb.ArchiveSpaceRequest(space_id=space_id), token_value
    )
    out(reply.space, as_json, SPACE_COLS)


@spaces.command("switch")
@click.argument("space_id")
@click.option("--print", "print_only", is_flag=True, help="Print `export PARLEY_TOKEN=...` instead of storing it.")
@rpc_command()
async def spaces_switch(space_id: str, print_only: bool, token_value: str | None, as_json: bool) -> None:
    """Get a token for another of your spaces."""
    reply = await rpc(
        auth_grpc.AuthServiceStub, "SwitchSpace", auth_pb.SwitchSpaceRequest(space_id=space_id), token_value
    )
    if as_json:
        out(reply.tokens, True)
    elif print_only:
        click.echo(f"export PARLEY_TOKEN={reply.tokens.access_token}")
    else:
        click.echo(f"token for space {space_id} saved to {common.save_token(reply.tokens.access_token)}")


async def _members(
    space: str, role: str | None, page_size: int, page_token: str, as_json: bool, token: str | None
) -> None:
    request = sp_pb.ListSpaceMembersRequest(
        space_id=space, role=SPACE_ROLES.get(role or "", 0), page=page(page_size, page_token)
    )
    reply = await rpc(sp_grpc.SpaceServiceStub, "ListSpaceMembers", request, token)
    out(list(reply.members), as_json, MEMBER_COLS)
    next_page(reply)


@spaces.command("members")
@space_option
@click.option("--role", type=click.Choice(list(SPACE_ROLES)), default=None, help="Only this role.")
@rpc_command(paging)
async def spaces_members(
    space: str, role: str | None, page_size: int, page_token: str, token_value: str | None, as_json: bool
) -> None:
    """Members of a space."""
    await _members(space, role, page_size, page_token, as_json, token_value)


@spaces.command("add-member")
@click.argument("user_id")
@role_option(SPACE_ROLES, "agent")
@rpc_command(space_option)
async def spaces_add_member(user_id: str, role: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Add an existing user to a space."""
    request = sp_pb.AddSpaceMemberRequest(space_id=space, user_id=user_id, role=SPACE_ROLES[role])
    reply = await rpc(sp_grpc.SpaceServiceStub, "AddSpaceMember", request, token_value)
    out(reply.member, as_json, MEMBER_COLS)


@spaces.command("set-role")
@click.argument("user_id")
@role_option(SPACE_ROLES)
@rpc_command(space_option)
async def spaces_set_role(user_id: str, role: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Change a member's space role."""
    request = sp_pb.SetSpaceMemberRoleRequest(space_id=space, user_id=user_id, role=SPACE_ROLES[role])
    reply = await rpc(sp_grpc.SpaceServiceStub, "SetSpaceMemberRole", request, token_value)
    out(reply.member, as_json, MEMBER_COLS)


@spaces.command("remove-member")
@click.argument("user_id")
@rpc_command(space_option)
async def spaces_remove_member(user_id: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Remove a user from a space (and its teams)."""
    request = sp_pb.RemoveSpaceMemberRequest(space_id=space, user_id=user_id)
    await rpc(sp_grpc.SpaceServiceStub, "RemoveSpaceMember", request, token_value)
    out({"removed": user_id}, as_json)


# -- users ------------------------------------------------------------------------------------------------

USER_COLS = ["id", "email", "display_name", "status"]


@click.group()
def users() -> None:
    """Users of your space."""


@users.command("list")
@space_option
@click.option("--role", type=click.Choice(list(SPACE_ROLES)), default=None, help="Only this role.")
@rpc_command(paging)
async def users_list(
    space: str, role: str | None, page_size: int, page_token: str, token_value: str | None, as_json: bool
) -> None:
    """Users of the space, with their roles."""
    await _members(space, role, page_size, page_token, as_json, token_value)


@users.command("create")
@click.option("--email", required=True)
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@role_option(SPACE_ROLES, "agent")
@rpc_command(space_option)
async def users_create(
    email: str, display_name: str, password: str, role: str, space: str, token_value: str | None, as_json: bool
) -> None:
    """Create a user with a password in the space."""
    request = us_pb.CreateUserRequest(
        space_id=space, email=email, display_name=display_name, password=password, role=SPACE_ROLES[role]
    )
    reply = await rpc(us_grpc.UserServiceStub, "CreateUser", request, token_value)
    out(reply.user, as_json, USER_COLS)


@users.command("invite")
@click.option("--email", required=True)
@click.option("--name", "display_name", default="", help="Display name.")
@role_option(SPACE_ROLES, "agent")
@rpc_command(space_option)
async def users_invite(
    email: str, display_name: str, role: str, space: str, token_value: str | None, as_json: bool
) -> None:
    """Invite by email (a new user gets a one-time setup token, printed once)."""
    request = us_pb.InviteUserRequest(space_id=space, email=email, display_name=display_name, role=SPACE_ROLES[role])
    reply = await rpc(us_grpc.UserServiceStub, "InviteUser", request, token_value)
    if as_json:
        out(reply, True)
        return
    out(reply.user, False, USER_COLS)
    if reply.setup_token:
        click.echo(f"setup token (shown once): {reply.setup_token}")
        click.echo("the user sets a password with: parley users accept-invite --token-from-invite <setup token>")


@users.command("accept-invite")
@click.option("--token-from-invite", "setup_token", required=True, help="The setup token of the invitation.")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--name", "display_name", default="", help="Display name.")
@json_option
@command
async def users_accept_invite(setup_token: str, password: str, display_name: str, as_json: bool) -> None:
    """Set your first password with an invitation's setup token."""
    request = auth_pb.AcceptInviteRequest(setup_token=setup_token, password=password, display_name=display_name)
    reply = await rpc(auth_grpc.AuthServiceStub, "AcceptInvite", request, None)
    out(reply.user, as_json, USER_COLS)


@users.command("get")
@click.argument("user_id", default="")
@rpc_command()
async def users_get(user_id: str, token_value: str | None, as_json: bool) -> None:
    """A user (default: you)."""
    reply = await rpc(us_grpc.UserServiceStub, "GetUser", us_pb.GetUserRequest(user_id=user_id), token_value)
    out(reply.user, as_json, USER_COLS)


@users.command("rename")
@click.argument("display_name")
@click.option("--user", "user_id", default="", help="User id (default: you).")
@rpc_command()
async def users_rename(display_name: str, user_id: str, token_value: str | None, as_json: bool) -> None:
    """Change a display name."""
    request = us_pb.UpdateUserRequest(user_id=user_id, display_name=display_name)
    reply = await rpc(us_grpc.UserServiceStub, "UpdateUser", request, token_value)
    out(reply.user, as_json, USER_COLS)


@users.command("passwd")
@click.option("--current", "current", prompt="Current password", hide_input=True)
@click.option("--new", "new", prompt="New password", hide_input=True, confirmation_prompt=True)
@rpc_command()
async def users_passwd(current: str, new: str, token_value: str | None, as_json: bool) -> None:
    """Change your password (ends your other sessions)."""
    request = us_pb.ChangePasswordRequest(current_password=current, new_password=new)
    reply = await rpc(us_grpc.UserServiceStub, "ChangePassword", request, token_value)
    out({"revoked_sessions": reply.revoked_sessions}, as_json)


# -- teams ------------------------------------------------------------------------------------------------

TEAM_COLS = ["id", "name", "member_count"]


@click.group()
def teams() -> None:
    """Teams of your space."""


@teams.command("list")
@space_option
@click.option("--user", "user_id", default="", help="Only teams of this user.")
@rpc_command(paging)
async def teams_list(
    space: str, user_id: str, page_size: int, page_token: str, token_value: str | None, as_json: bool
) -> None:
    """Teams of the space."""
    request = tm_pb.ListTeamsRequest(space_id=space, user_id=user_id, page=page(page_size, page_token))
    reply = await rpc(tm_grpc.TeamServiceStub, "ListTeams", request, token_value)
    out(list(reply.teams), as_json, TEAM_COLS)
    next_page(reply)


@teams.command("create")
@click.argument("name")
@rpc_command(space_option)
async def teams_create(name: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Create a team."""
    reply = await rpc(
        tm_grpc.TeamServiceStub, "CreateTeam", tm_pb.CreateTeamRequest(space_id=space, name=name), token_value
    )
    out(reply.team, as_json, TEAM_COLS)


@teams.command("get")
@click.argument("team_id")
@rpc_command()
async def teams_get(team_id: str, token_value: str | None, as_json: bool) -> None:
    """One team."""
    reply = await rpc(tm_grpc.TeamServiceStub, "GetTeam", tm_pb.GetTeamRequest(team_id=team_id), token_value)
    out(reply.team, as_json, TEAM_COLS)


@teams.command("rename")
@click.argument("team_id")
@click.argument("name")
@rpc_command()
async def teams_rename(team_id: str, name: str, token_value: str | None, as_json: bool) -> None:
    """Rename a team."""
    request = tm_pb.RenameTeamRequest(team_id=team_id, name=name)
    reply = await rpc(tm_grpc.TeamServiceStub, "RenameTeam", request, token_value)
    out(reply.team, as_json, TEAM_COLS)


@teams.command("delete")
@click.argument("team_id")
@rpc_command()
async def teams_delete(team_id: str, token_value: str | None, as_json: bool) -> None:
    """Delete a team."""
    await rpc(tm_grpc.TeamServiceStub, "DeleteTeam", tm_pb.DeleteTeamRequest(team_id=team_id), token_value)
    out({"deleted": team_id}, as_json)


@teams.command("members")
@click.argument("team_id")
@rpc_command(paging)
async def teams_members(team_id: str, page_size: int, page_token: str, token_value: str | None, as_json: bool) -> None:
    """Members of a team."""
    request = tm_pb.ListTeamMembersRequest(team_id=team_id, page=page(page_size, page_token))
    reply = await rpc(tm_grpc.TeamServiceStub, "ListTeamMembers", request, token_value)
    out(list(reply.members), as_json, ["user_id", "email", "display_name"])
    next_page(reply)


@teams.command("add-member")
@click.argument("team_id")
@click.argument("user_id")
@rpc_command()
async def teams_add_member(team_id: str, user_id: str, token_value: str | None, as_json: bool) -> None:
    """Add a space member to a team."""
    request = tm_pb.AddTeamMemberRequest(team_id=team_id, user_id=user_id)
    reply = await rpc(tm_grpc.TeamServiceStub, "AddTeamMember", request, token_value)
    out(reply.member, as_json, ["team_id", "user_id", "email"])


@teams.command("remove-member")
@click.argument("team_id")
@click.argument("user_id")
@rpc_command()
async def teams_remove_member(team_id: str, user_id: str, token_value: str | None, as_json: bool) -> None:
    """Remove a user from a team."""
    request = tm_pb.RemoveTeamMemberRequest(team_id=team_id, user_id=user_id)
    await rpc(tm_grpc.TeamServiceStub, "RemoveTeamMember", request, token_value)
    out({"removed": user_id, "team_id": team_id}, as_json)


# -- API keys ---------------------------------------------------------------------------------------------

KEY_COLS = ["id", "name", "role", "last_used_at", "revoked"]


@click.group()
def keys() -> None:
    """API keys of your space."""


@keys.command("list")
@space_option
@click.option("--revoked", is_flag=True, help="Include revoked keys.")
@rpc_command(paging)
async def keys_list(
    space: str, revoked: bool, page_size: int, page_token: str, token_value: str | None, as_json: bool
) -> None:
    """API keys of the space."""
    request = keys_pb.ListApiKeysRequest(space_id=space, include_revoked=revoked, page=page(page_size, page_token))
    reply = await rpc(keys_grpc.ApiKeyServiceStub, "ListApiKeys", request, token_value)
    out(list(reply.api_keys), as_json, KEY_COLS)
    next_page(reply)


@keys.command("create")
@click.argument("name")
@role_option(SPACE_ROLES, "agent")
@rpc_command(space_option)
async def keys_create(name: str, role: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Create an API key; its token is printed once."""
    request = keys_pb.CreateApiKeyRequest(space_id=space, name=name, role=SPACE_ROLES[role])
    reply = await rpc(keys_grpc.ApiKeyServiceStub, "CreateApiKey", request, token_value)
    if as_json:
        out(reply, True)
        return
    out(reply.api_key, False, KEY_COLS)
    click.echo(f"token (shown once, store it now): {reply.token}")


@keys.command("get")
@click.argument("api_key_id")
@rpc_command()
async def keys_get(api_key_id: str, token_value: str | None, as_json: bool) -> None:
    """One API key (never its secret)."""
    request = keys_pb.GetApiKeyRequest(api_key_id=api_key_id)
    reply = await rpc(keys_grpc.ApiKeyServiceStub, "GetApiKey", request, token_value)
    out(reply.api_key, as_json, KEY_COLS)


@keys.command("revoke")
@click.argument("api_key_id")
@rpc_command()
async def keys_revoke(api_key_id: str, token_value: str | None, as_json: bool) -> None:
    """Revoke an API key; every service refuses it from now on."""
    request = keys_pb.RevokeApiKeyRequest(api_key_id=api_key_id)
    reply = await rpc(keys_grpc.ApiKeyServiceStub, "RevokeApiKey", request, token_value)
    out(reply.api_key, as_json, KEY_COLS)


# -- business hours ---------------------------------------------------------------------------------------


@click.group()
def hours() -> None:
    """Business hours of your space."""


def _ranges(text: str) -> list[res.TimeRange]:
    """ "09:00-12:00,13:00-17:00" -> TimeRange list."""
    result = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        opens, sep, closes = part.partition("-")
        if not sep:
            raise click.BadParameter(f"'{part}' is not a range like 09:00-17:00")
        result.append(res.TimeRange(opens=opens.strip(), closes=closes.strip()))
    return result


def _hours_rows(bh: res.BusinessHours) -> list[dict[str, str]]:
    rows = [
        {
            "when": res.Weekday.Name(day.day).removeprefix("WEEKDAY_").lower(),
            "hours": ", ".join(f"{r.opens}-{r.closes}" for r in day.ranges) or "closed",
            "name": "",
        }
        for day in bh.weekly
    ]
    rows += [
        {"when": e.date, "hours": ", ".join(f"{r.opens}-{r.closes}" for r in e.ranges) or "closed", "name": e.name}
        for e in bh.exceptions
    ]
    return rows


def _show_hours(bh: res.BusinessHours, as_json: bool) -> None:
    if as_json:
        out(bh, True)
        return
    click.echo(f"time zone {bh.time_zone}" + ("" if bh.configured else " (no weekly hours: always open)"))
    out(_hours_rows(bh), False, ["when", "hours", "name"])


@hours.command("get")
@rpc_command(space_option)
async def hours_get(space: str, token_value: str | None, as_json: bool) -> None:
    """Weekly hours and exceptions."""
    reply = await rpc(
        av_grpc.AvailabilityServiceStub, "GetBusinessHours", av_pb.GetBusinessHoursRequest(space_id=space), token_value
    )
    _show_hours(reply.business_hours, as_json)


@hours.command("set")
@click.option("--tz", "time_zone", default="", help="IANA time zone (default: keep the space's).")
@click.option(
    "--day",
    "days",
    multiple=True,
    help="DAY=RANGES, e.g. mon=09:00-12:00,13:00-17:00 (repeat per day; days not given are closed).",
)
@rpc_command(space_option)
async def hours_set(time_zone: str, days: tuple[str, ...], space: str, token_value: str | None, as_json: bool) -> None:
    """Replace the weekly hours."""
    weekly = []
    for item in days:
        day, sep, ranges = item.partition("=")
        if not sep or day.strip().lower()[:3] not in DAYS:
            raise click.BadParameter(f"'{item}' must be DAY=RANGES with DAY one of {', '.join(DAYS)}")
        weekly.append(res.WeekdayHours(day=DAYS[day.strip().lower()[:3]], ranges=_ranges(ranges)))
    request = av_pb.SetBusinessHoursRequest(space_id=space, time_zone=time_zone, weekly=weekly)
    reply = await rpc(av_grpc.AvailabilityServiceStub, "SetBusinessHours", request, token_value)
    _show_hours(reply.business_hours, as_json)


@hours.command("exception")
@click.argument("date")
@click.option("--name", default="", help="E.g. Christmas.")
@click.option("--open", "ranges", default="", help="Special hours that day, e.g. 10:00-14:00 (default: closed).")
@rpc_command(space_option)
async def hours_exception(
    date: str, name: str, ranges: str, space: str, token_value: str | None, as_json: bool
) -> None:
    """Set the exception for DATE (YYYY-MM-DD): closed, or special hours."""
    exception = res.BusinessHoursException(date=date, name=name, ranges=_ranges(ranges))
    request = av_pb.SetBusinessHoursExceptionRequest(space_id=space, exception=exception)
    reply = await rpc(av_grpc.AvailabilityServiceStub, "SetBusinessHoursException", request, token_value)
    _show_hours(reply.business_hours, as_json)


@hours.command("remove-exception")
@click.argument("date")
@rpc_command(space_option)
async def hours_remove_exception(date: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Remove the exception for DATE."""
    request = av_pb.DeleteBusinessHoursExceptionRequest(space_id=space, date=date)
    reply = await rpc(av_grpc.AvailabilityServiceStub, "DeleteBusinessHoursException", request, token_value)
    _show_hours(reply.business_hours, as_json)


@hours.command("check")
@click.option("--at", "at", default="", help="ISO instant, e.g. 2026-12-24T18:00:00+01:00 (default: now).")
@rpc_command(space_option)
async def hours_check(at: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Within business hours? Any agent online?"""
    request = av_pb.CheckAvailabilityRequest(space_id=space)
    if at:
        try:
            instant = dt.datetime.fromisoformat(at)
        except ValueError as exc:
            raise click.BadParameter(f"--at '{at}' is not an ISO date-time") from exc
        stamp = Timestamp()
        stamp.FromDatetime(instant if instant.tzinfo else instant.replace(tzinfo=dt.UTC))
        request.at.CopyFrom(stamp)
    reply = await rpc(av_grpc.AvailabilityServiceStub, "CheckAvailability", request, token_value)
    out(reply, as_json, ["within_business_hours", "any_agent_online", "online_agent_count", "local_time"])


# -- availability -----------------------------------------------------------------------------------------


@click.group()
def availability() -> None:
    """Availability of the space's members."""


@availability.command("set")
@click.argument("status", type=click.Choice(list(STATUSES)))
@click.option("--user", "user_id", default="", help="Another member (managers), default: you.")
@rpc_command(space_option)
async def availability_set(status: str, user_id: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Set a status: online, away or offline."""
    request = av_pb.SetAvailabilityRequest(space_id=space, user_id=user_id, status=STATUSES[status])
    reply = await rpc(av_grpc.AvailabilityServiceStub, "SetAvailability", request, token_value)
    out(reply.member, as_json, MEMBER_COLS)


@availability.command("list")
@click.option("--status", type=click.Choice(list(STATUSES)), default=None, help="Only this status.")
@rpc_command(space_option, paging)
async def availability_list(
    status: str | None, space: str, page_size: int, page_token: str, token_value: str | None, as_json: bool
) -> None:
    """Members and their statuses."""
    request = av_pb.ListAvailabilityRequest(
        space_id=space, status=STATUSES.get(status or "", 0), page=page(page_size, page_token)
    )
    reply = await rpc(av_grpc.AvailabilityServiceStub, "ListAvailability", request, token_value)
    out(list(reply.members), as_json, MEMBER_COLS)
    next_page(reply)


# Registered by parley_cli.main.
GROUPS = [admin, login, logout, whoami, orgs, spaces, users, teams, keys, hours, availability]
