"""`parley contacts|fields|tags|views ...`: the contacts service from the command line.

Criteria (for `views create/update` and `contacts list --criteria`) are the protobuf JSON form of
parley.contacts.v1.Criteria, inline or as @FILE, e.g.
  {"root": {"operator": "GROUP_OPERATOR_AND", "nodes": [
     {"tag": {"match": "TAG_MATCH_HAS_ANY", "tag_ids": ["<tag id>"]}},
     {"field": {"field": "score", "operator": "FIELD_OPERATOR_GREATER_THAN", "values": ["10"]}}]}}
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.json_format import ParseDict, ParseError
from parley.common.v1 import common_pb2
from parley.contacts.v1 import contact_pb2, criteria_pb2, fields_pb2
from parley.contacts.v1 import contacts_service_pb2 as pb
from parley.contacts.v1 import contacts_service_pb2_grpc as pb_grpc

from parley_cli.commands.contacts_import import DEDUPE, Report, import_row, read_records, resume_command, run_import
from parley_cli.common import call, emit, rpc_command, to_dict

SERVICE = "contacts"
PROFILE = ("first_name", "last_name", "email", "phone", "country", "language", "avatar_url")
CONTACT_COLUMNS = ("id", "first_name", "last_name", "email", "phone", "tags", "assignee", "last_interaction_at")
# A batch of 500 rows is 500 transactions on the server: give it time, and never repeat it on its own (a call
# that failed after some rows committed would import them twice).
IMPORT_TIMEOUT = 300.0


def space_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--space", default="", help="Space id (needed only with platform-wide service tokens).")(fn)


async def rpc(method: str, request: Any, token_value: str | None) -> Any:
    return await call(SERVICE, pb_grpc.ContactsServiceStub, method, request, token_value=token_value)


def _contact_row(contact: contact_pb2.Contact, tag_names: dict[str, str] | None = None) -> dict[str, Any]:
    names = tag_names or {}
    assignee = "/".join(x for x in (contact.assignee.user_id, contact.assignee.team_id) if x)
    last = contact.last_interaction_at.ToJsonString() if contact.HasField("last_interaction_at") else ""
    return {
        "id": contact.id,
        **{k: getattr(contact, k) for k in PROFILE if k in CONTACT_COLUMNS},
        "tags": ",".join(names.get(t, t) for t in contact.tag_ids),
        "assignee": assignee,
        "last_interaction_at": last,
    }


def _profile(values: dict[str, str | None]) -> contact_pb2.ContactProfile:
    return contact_pb2.ContactProfile(**{k: v for k, v in values.items() if v is not None})


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint=what)
        out[key.strip()] = value
    return out


def _criteria(raw: str) -> criteria_pb2.Criteria:
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        return ParseDict(json.loads(text), criteria_pb2.Criteria())
    except (json.JSONDecodeError, ParseError) as exc:
        raise click.BadParameter(f"not a Criteria in protobuf JSON form: {exc}", param_hint="--criteria") from None


async def _tag_ids(space: str, refs: Sequence[str], token_value: str | None) -> list[str]:
    """Tag ids for names or ids (names are matched case-insensitively)."""
    tags = await _all_tags(space, token_value)
    by_name = {t.name.lower(): t.id for t in tags}
    ids = {t.id for t in tags}
    out = []
    for ref in refs:
        if ref in ids:
            out.append(ref)
        elif ref.lower() in by_name:
            out.append(by_name[ref.lower()])
        else:
            raise click.UsageError(f"no tag named or with id '{ref}' (see `parley tags list`)")
    return out


async def _all_tags(space: str, token_value: str | None) -> list[Any]:
    tags, token = [], ""
    while True:
        resp = await rpc(
            "ListTags",
            pb.ListTagsRequest(space_id=space, page=common_pb2.PageRequest(page_size=500, page_token=token)),
            token_value,
        )
        tags += list(resp.tags)
        if not (token := resp.page.next_page_token):
            return tags


# -- parley contacts ----------------------------------------------------------------------------------


@click.group()
def contacts() -> None:
    """Contacts: list, search, show, create, update, delete, tag, assign, merge, import."""


@contacts.command("list")
@click.option("--view", "view_id", default="", help="List the contacts of this view.")
@click.option("--search", default="", help="Prefix search on name, email, phone, external id.")
@click.option("--criteria", default="", help="Ad-hoc criteria (protobuf JSON, or @FILE).")
@click.option("--page-size", default=50, show_default=True, type=int)
@click.option("--page-token", default="")
@rpc_command(space_option)
async def list_contacts(
    view_id: str,
    search: str,
    criteria: str,
    page_size: int,
    page_token: str,
    space: str,
    token_value: str | None,
    as_json: bool,
) -> None:
    """One page of contacts, newest first; prints the total and the next page token."""
    request = pb.ListContactsRequest(
        space_id=space,
        view_id=view_id,
        search=search,
        page=common_pb2.PageRequest(page_size=page_size, page_token=page_token),
    )
    if criteria:
        request.criteria.CopyFrom(_criteria(criteria))
    resp = await rpc("ListContacts", request, token_value)
    if as_json:
        emit(resp, True)
        return
    names = {t.id: t.name for t in await _all_tags(space, token_value)}
    emit([_contact_row(c, names) for c in resp.contacts], False, CONTACT_COLUMNS)
    # A capped total (the service's PARLEY_CONTACTS_COUNT_LIMIT) is a lower bound: "10,000+ contact(s)".
    total = f"{resp.page.total_count:,}+" if resp.total_count_capped else str(resp.page.total_count)
    click.echo(
        f"\n{total} contact(s)"
        + (f"; next page: --page-token {resp.page.next_page_token}" if resp.page.next_page_token else "")
    )


@contacts.command("show")
@click.argument("contact_id")
@rpc_command(space_option)
async def show_contact(contact_id: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Everything about one contact (a merged-away id shows its survivor)."""
    resp = await rpc("GetContact", pb.GetContactRequest(space_id=space, contact_id=contact_id), token_value)
    emit(resp.contact, as_json) if as_json else _print_contact(resp.contact)


def _print_contact(contact: contact_pb2.Contact) -> None:
    data = to_dict(contact)
    for key in ("id", *PROFILE, "assignee", "tag_ids", "created_at", "last_interaction_at"):
        if key in data:
            click.echo(f"{key:>20}: {data[key]}")
    for value in contact.field_values:
        click.echo(f"{value.key:>20}: {value.value}")
    for identity in contact.identities:
        click.echo(f"{'identity':>20}: {identity.channel_id} {identity.external_id}")


def _profile_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for name in reversed(PROFILE):
        fn = click.option(f"--{name.replace('_', '-')}", name, default=None, help=f"Set {name} ('' clears).")(fn)
    return click.option("--field", "fields", multiple=True, help="Custom field value KEY=VALUE ('' clears).")(fn)


@contacts.command("create")
@_profile_options
@click.option("--tag", "tags", multiple=True, help="Tag name or id (repeatable).")
@click.option("--identity", "identities", multiple=True, help="CHANNEL_ID:EXTERNAL_ID (repeatable).")
@rpc_command(space_option)
async def create_contact(
    fields: tuple[str, ...],
    tags: tuple[str, ...],
    identities: tuple[str, ...],
    space: str,
    token_value: str | None,
    as_json: bool,
    **profile: str | None,
) -> None:
    """Create a contact."""
    idents = []
    for raw in identities:
        channel, sep, external = raw.partition(":")
        if not sep:
            raise click.BadParameter(f"'{raw}' is not CHANNEL_ID:EXTERNAL_ID", param_hint="--identity")
        idents.append(contact_pb2.IdentityInput(channel_id=channel, external_id=external))
    request = pb.CreateContactRequest(
        space_id=space,
        profile=_profile(profile),
        field_values=_pairs(fields, "--field"),
        tag_ids=await _tag_ids(space, tags, token_value) if tags else [],
        identities=idents,
    )
    resp = await rpc("CreateContact", request, token_value)
    emit(resp.contact, as_json) if as_json else click.echo(resp.contact.id)


@contacts.command("update")
@click.argument("contact_id")
@_profile_options
@rpc_command(space_option)
async def update_contact(
    contact_id: str,
    fields: tuple[str, ...],
    space: str,
    token_value: str | None,
    as_json: bool,
    **profile: str | None,
) -> None:
    """Change some fields of a contact; the others stay."""
    request = pb.UpdateContactRequest(
        space_id=space, contact_id=contact_id, profile=_profile(profile), field_values=_pairs(fields, "--field")
    )
    resp = await rpc("UpdateContact", request, token_value)
    emit(resp.contact, as_json) if as_json else _print_contact(resp.contact)


@contacts.command("delete")
@click.argument("contact_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@rpc_command(space_option)
async def delete_contact(contact_id: str, yes: bool, space: str, token_value: str | None, as_json: bool) -> None:
    """Erase a contact with its identities, field values and tags."""
    if not yes and not click.confirm(f"Erase contact {contact_id} and everything about it?", err=True):
        raise click.Abort()
    resp = await rpc("DeleteContact", pb.DeleteContactRequest(space_id=space, contact_id=contact_id), token_value)
    emit(resp, as_json) if as_json else click.echo(f"erased {resp.contact_id}")


def _tagging(name: str, add: bool) -> click.Command:
    @click.argument("contact_ids", nargs=-1, required=True)
    @click.option("--tag", "tags", multiple=True, required=True, help="Tag name or id (repeatable).")
    @rpc_command(space_option)
    async def run(
        contact_ids: tuple[str, ...], tags: tuple[str, ...], space: str, token_value: str | None, as_json: bool
    ) -> None:
        ids = await _tag_ids(space, tags, token_value)
        request = pb.UpdateContactTagsRequest(
            space_id=space, contact_ids=list(contact_ids), **({"add_tag_ids": ids} if add else {"remove_tag_ids": ids})
        )
        resp = await rpc("UpdateContactTags", request, token_value)
        emit(resp, as_json) if as_json else click.echo(f"{resp.changed_count} change(s)")

    run.__doc__ = f"{'Add' if add else 'Remove'} tags {'to' if add else 'from'} one or many contacts."
    return contacts.command(name)(run)


_tagging("tag", True)
_tagging("untag", False)


@contacts.command("assign")
@click.argument("contact_ids", nargs=-1, required=True)
@click.option("--user", default="", help="User id (omit both --user and --team to unassign).")
@click.option("--team", default="", help="Team id.")
@rpc_command(space_option)
async def assign(
    contact_ids: tuple[str, ...], user: str, team: str, space: str, token_value: str | None, as_json: bool
) -> None:
    """Assign, reassign or unassign one or many contacts."""
    request = pb.AssignContactsRequest(
        space_id=space, contact_ids=list(contact_ids), assignee=contact_pb2.Assignee(user_id=user, team_id=team)
    )
    resp = await rpc("AssignContacts", request, token_value)
    emit(resp, as_json) if as_json else click.echo(f"{resp.changed_count} contact(s) changed")


@contacts.command("merge")
@click.argument("survivor_id")
@click.argument("merged_id")
@rpc_command(space_option)
async def merge(survivor_id: str, merged_id: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Merge MERGED_ID into SURVIVOR_ID (the survivor's values win; merged only fills gaps)."""
    request = pb.MergeContactsRequest(space_id=space, survivor_contact_id=survivor_id, merged_contact_id=merged_id)
    resp = await rpc("MergeContacts", request, token_value)
    emit(resp.contact, as_json) if as_json else click.echo(f"merged {merged_id} into {resp.contact.id}")


@contacts.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--map",
    "mapping",
    multiple=True,
    help="COLUMN=TARGET: target is a standard field, a custom field key, "
    "'tags' or '-' to ignore. Columns named like a field or 'tags' map by themselves.",
)
@click.option("--tag-separator", default=";", show_default=True, help="Separator inside the tags column.")
@click.option(
    "--start-line",
    type=click.IntRange(min=2),
    default=2,
    show_default=True,
    help="Skip the records that start before this line of the file (to resume a stopped import).",
)
@click.option(
    "--dedupe-by",
    type=click.Choice(sorted(DEDUPE)),
    default=None,
    help="A row whose email (or phone) is already a contact's updates that contact instead of adding one.",
)
@rpc_command(space_option)
async def import_contacts(
    file: Path,
    mapping: tuple[str, ...],
    tag_separator: str,
    start_line: int,
    dedupe_by: str | None,
    space: str,
    token_value: str | None,
    as_json: bool,
) -> None:
    """Import contacts from a CSV file with a header row; bad rows are reported, good rows kept.

    Each batch of 500 rows is reported as soon as it is answered (with --json, one JSON object per row,
    then a summary object). If a call fails, the import stops and says which lines are done, which are
    unknown and which are not imported, and prints the command that resumes (--start-line).
    """
    explicit = _pairs(mapping, "--map")
    field_keys = {f.key for f in await _all_fields(space, token_value)}
    columns, records = read_records(file)
    targets: dict[str, str] = {}
    for column in columns:
        target = explicit.get(column, column.strip().lower().replace(" ", "_"))
        if target == "-":
            continue
        if target not in (*PROFILE, "tags") and target not in field_keys:
            raise click.UsageError(
                f"column '{column}' maps to no field; use --map '{column}=<field key>' or --map '{column}=-'"
            )
        targets[column] = target
    records = [r for r in records if r[0] >= start_line]
    rows = [import_row(record, targets, PROFILE, tag_separator) for _, record in records]

    async def send(request: pb.ImportContactsRequest) -> pb.ImportContactsResponse:
        return await call(
            SERVICE, pb_grpc.ContactsServiceStub, "ImportContacts", request,
            token_value=token_value, timeout=IMPORT_TIMEOUT, max_attempts=1,
        )  # fmt: skip

    resume = functools.partial(
        resume_command,
        file=file,
        mapping=mapping,
        tag_separator=tag_separator,
        space=space,
        dedupe_by=dedupe_by,
        mapped=set(targets.values()),
        as_json=as_json,
    )
    report = Report(as_json)
    lines = [line for line, _ in records]
    finished = await run_import(
        lines, rows, space=space, dedupe_by=dedupe_by or "", send=send, report=report, resume=resume
    )
    if not finished or (report.failed and not report.created + report.updated):
        sys.exit(1)
    if report.failed:
        sys.exit(3)


# -- parley fields ------------------------------------------------------------------------------------

FIELD_TYPES = ["text", "number", "date", "datetime", "checkbox", "list", "email", "phone", "url"]


async def _all_fields(space: str, token_value: str | None) -> list[Any]:
    out, token = [], ""
    while True:
        resp = await rpc(
            "ListFields",
            pb.ListFieldsRequest(space_id=space, page=common_pb2.PageRequest(page_size=500, page_token=token)),
            token_value,
        )
        out += list(resp.fields)
        if not (token := resp.page.next_page_token):
            return out


def _field_row(f: fields_pb2.FieldDefinition) -> dict[str, Any]:
    kind = fields_pb2.FieldType.Name(f.type).removeprefix("FIELD_TYPE_").lower()
    return {"id": f.id, "key": f.key, "label": f.label, "type": kind, "options": ",".join(f.options)}


@click.group()
def fields() -> None:
    """Custom contact fields: list, create, update (rename), delete."""


@fields.command("list")
@rpc_command(space_option)
async def list_fields(space: str, token_value: str | None, as_json: bool) -> None:
    found = await _all_fields(space, token_value)
    emit(found if as_json else [_field_row(f) for f in found], as_json)


@fields.command("create")
@click.argument("key")
@click.option("--type", "kind", type=click.Choice(FIELD_TYPES), required=True)
@click.option("--label", default="")
@click.option("--description", default="")
@click.option("--option", "options", multiple=True, help="An option of a list field (repeatable).")
@rpc_command(space_option)
async def create_field(
    key: str,
    kind: str,
    label: str,
    description: str,
    options: tuple[str, ...],
    space: str,
    token_value: str | None,
    as_json: bool,
) -> None:
    request = pb.CreateFieldRequest(
        space_id=space,
        key=key,
        label=label or key,
        description=description,
        type=fields_pb2.FieldType.Value(f"FIELD_TYPE_{kind.upper()}"),
        options=list(options),
    )
    resp = await rpc("CreateField", request, token_value)
    emit(resp.field if as_json else _field_row(resp.field), as_json)


@fields.command("update")
@click.argument("field_id")
@click.option("--key", default=None, help="New key (values are kept).")
@click.option("--label", default=None)
@click.option("--description", default=None)
@click.option(
    "--option", "options", multiple=True, help="The list's options (replaces them; values no longer allowed go)."
)
@rpc_command(space_option)
async def update_field(
    field_id: str,
    key: str | None,
    label: str | None,
    description: str | None,
    options: tuple[str, ...],
    space: str,
    token_value: str | None,
    as_json: bool,
) -> None:
    paths = [p for p, v in (("key", key), ("label", label), ("description", description)) if v is not None]
    if options:
        paths.append("options")
    if not paths:
        raise click.UsageError("nothing to change: give --key, --label, --description or --option")
    request = pb.UpdateFieldRequest(
        space_id=space,
        field_id=field_id,
        update_mask=FieldMask(paths=paths),
        key=key or "",
        label=label or "",
        description=description or "",
        options=list(options),
    )
    resp = await rpc("UpdateField", request, token_value)
    emit(resp.field if as_json else _field_row(resp.field), as_json)


@fields.command("delete")
@click.argument("field_id")
@rpc_command(space_option)
async def delete_field(field_id: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Delete a field and every contact's value of it."""
    await rpc("DeleteField", pb.DeleteFieldRequest(space_id=space, field_id=field_id), token_value)
    emit({"deleted": field_id}, as_json)


# -- parley tags --------------------------------------------------------------------------------------


@click.group()
def tags() -> None:
    """The space's tag catalog: list, create, update, delete."""


@tags.command("list")
@rpc_command(space_option)
async def list_tags(space: str, token_value: str | None, as_json: bool) -> None:
    found = await _all_tags(space, token_value)
    emit(found if as_json else [{"id": t.id, "name": t.name, "color": t.color} for t in found], as_json)


@tags.command("create")
@click.argument("name")
@click.option("--color", default="")
@click.option("--description", default="")
@rpc_command(space_option)
async def create_tag(
    name: str, color: str, description: str, space: str, token_value: str | None, as_json: bool
) -> None:
    request = pb.CreateTagRequest(space_id=space, name=name, color=color, description=description)
    emit((await rpc("CreateTag", request, token_value)).tag, as_json)


@tags.command("update")
@click.argument("tag_id")
@click.option("--name", default=None)
@click.option("--color", default=None)
@click.option("--description", default=None)
@rpc_command(space_option)
async def update_tag(
    tag_id: str,
    name: str | None,
    color: str | None,
    description: str | None,
    space: str,
    token_value: str | None,
    as_json: bool,
) -> None:
    request = pb.UpdateTagRequest(space_id=space, tag_id=tag_id)
    for attr, value in (("name", name), ("color", color), ("description", description)):
        if value is not None:
            setattr(request, attr, value)
    emit((await rpc("UpdateTag", request, token_value)).tag, as_json)


@tags.command("delete")
@click.argument("tag_id")
@rpc_command(space_option)
async def delete_tag(tag_id: str, space: str, token_value: str | None, as_json: bool) -> None:
    """Delete a tag from the catalog and from every contact."""
    resp = await rpc("DeleteTag", pb.DeleteTagRequest(space_id=space, tag_id=tag_id), token_value)
    emit(resp, as_json) if as_json else click.echo(f"removed from {resp.untagged_count} contact(s)")


# -- parley views -------------------------------------------------------------------------------------


def _view_row(v: Any) -> dict[str, Any]:
    return {"id": v.id, "name": v.name, "owner": v.owner, "shared": v.shared}


@click.group()
def views() -> None:
    """Saved views: list, show, create, update, delete (list contacts with `parley contacts list --view`)."""


@views.command("list")
@rpc_command(space_option)
async def list_views(space: str, token_value: str | None, as_json: bool) -> None:
    found, token = [], ""
    while True:
        resp = await rpc(
            "ListViews",
            pb.ListViewsRequest(space_id=space, page=common_pb2.PageRequest(page_size=500, page_token=token)),
            token_value,
        )
        found += list(resp.views)
        if not (token := resp.page.next_page_token):
            break
    emit(found if as_json else [_view_row(v) for v in found], as_json)


@views.command("show")
@click.argument("view_id")
@rpc_command(space_option)
async def show_view(view_id: str, space: str, token_value: str | None, as_json: bool) -> None:
    resp = await rpc("GetView", pb.GetViewRequest(space_id=space, view_id=view_id), token_value)
    if as_json:
        emit(resp.view, True)
        return
    emit(_view_row(resp.view), False)
    click.echo("criteria: " + json.dumps(to_dict(resp.view.criteria), indent=2))


@views.command("create")
@click.argument("name")
@click.option("--criteria", required=True, help="Criteria (protobuf JSON, or @FILE).")
@click.option("--shared", is_flag=True, help="Visible to everyone in the space (managers).")
@rpc_command(space_option)
async def create_view(
    name: str, criteria: str, shared: bool, space: str, token_value: str | None, as_json: bool
) -> None:
    request = pb.CreateViewRequest(space_id=space, name=name, criteria=_criteria(criteria), shared=shared)
    resp = await rpc("CreateView", request, token_value)
    emit(resp.view if as_json else _view_row(resp.view), as_json)


@views.command("update")
@click.argument("view_id")
@click.option("--name", default=None)
@click.option("--criteria", default=None, help="Criteria (protobuf JSON, or @FILE).")
@click.option("--shared/--private", default=None)
@rpc_command(space_option)
async def update_view(
    view_id: str,
    name: str | None,
    criteria: str | None,
    shared: bool | None,
    space: str,
    token_value: str | None,
    as_json: bool,
) -> None:
    paths = [p for p, v in (("name", name), ("criteria", criteria), ("shared", shared)) if v is not None]
    if not paths:
        raise click.UsageError("nothing to change: give --name, --criteria or --shared/--private")
    request = pb.UpdateViewRequest(
        space_id=space,
        view_id=view_id,
        update_mask=FieldMask(paths=paths),
        name=name or "",
        shared=bool(shared),
    )
    if criteria:
        request.criteria.CopyFrom(_criteria(criteria))
    resp = await rpc("UpdateView", request, token_value)
    emit(resp.view if as_json else _view_row(resp.view), as_json)


@views.command("delete")
@click.argument("view_id")
@rpc_command(space_option)
async def delete_view(view_id: str, space: str, token_value: str | None, as_json: bool) -> None:
    await rpc("DeleteView", pb.DeleteViewRequest(space_id=space, view_id=view_id), token_value)
    emit({"deleted": view_id}, as_json)


GROUPS = (contacts, fields, tags, views)
