"""gRPC API: maps protobuf <-> domain, checks the permission matrix, calls the service.

Every RPC acts on the caller's space (`caller.scoped_space`); records of other spaces are
NOT_FOUND. Domain errors become status codes in the kit's interceptor. A string holding a NUL
character is refused here for every request (PostgreSQL cannot store it), naming the field;
profile hints of UpsertByIdentity and import rows are left to the domain, which drops such a
hint or reports such a row on its own.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from parley.common.v1 import common_pb2
from parley.contacts.v1 import contacts_service_pb2 as pb
from parley.contacts.v1 import contacts_service_pb2_grpc as pb_grpc
from parley_kit.auth import Caller, current_caller
from parley_kit.errors import DomainError, Internal, InvalidArgument
from parley_kit.grpc_server import status_for
from parley_kit.messages import reject_nul
from parley_kit.permissions import Permission

from parley_contacts.convert import (
    contact_to_pb,
    criteria_from_pb,
    criteria_to_pb,
    field_to_pb,
    field_type_from_pb,
    from_ts,
    profile_from_pb,
    tag_to_pb,
    view_to_pb,
)
from parley_contacts.service import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Actor,
    ContactsService,
    IdentityInput,
    ImportRow,
    UpsertItem,
    UpsertOutcome,
)

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext
_DEDUPE = {pb.IMPORT_DEDUPE_UNSPECIFIED: "", pb.IMPORT_DEDUPE_EMAIL: "email", pb.IMPORT_DEDUPE_PHONE: "phone"}
log = logging.getLogger(__name__)


def _scope(request: Any, permission: Permission, *, own_checks: Sequence[str] = ()) -> tuple[str, Actor, Caller]:
    """The space, actor and caller of a request, after refusing NUL characters in it (but in `own_checks`)."""
    reject_nul(request, skip=own_checks)
    caller = current_caller()
    space = caller.scoped_space(request.space_id)
    caller.require(permission)
    actor = Actor(
        subject=caller.subject, user_id=caller.user_id, manage_shared_views=caller.can(Permission.VIEWS_MANAGE)
    )
    return space, actor, caller


def _paginate(items: Sequence[T], key: Callable[[T], str], page: common_pb2.PageRequest) -> tuple[list[T], Any]:
    """Keyset pagination over a small, fully loaded catalog (tags, fields), in `key` order."""
    if page.page_size < 0 or page.page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}")
    size = page.page_size or DEFAULT_PAGE_SIZE
    ordered = sorted(items, key=key)
    if page.page_token:
        try:
            after = base64.urlsafe_b64decode(page.page_token.encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidArgument("page_token is malformed; pass back next_page_token unchanged") from None
        ordered = [i for i in ordered if key(i) > after]
    chunk = ordered[:size]
    token = base64.urlsafe_b64encode(key(chunk[-1]).encode()).decode() if len(ordered) > size else ""
    return chunk, common_pb2.PageResponse(next_page_token=token, total_count=len(items))


def _upsert_item(space: str, request: pb.UpsertByIdentityRequest) -> UpsertItem:
    p = request.profile
    hints = {
        "display_name": p.display_name,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "phone": p.phone,
        "language": p.language,
        "avatar_url": p.avatar_url,
    }
    return UpsertItem(
        space,
        IdentityInput(request.channel_id, int(request.channel_type), request.external_id),
        hints,
        from_ts(request.interaction_at, "interaction_at") if request.HasField("interaction_at") else None,
    )


class ContactsApi(pb_grpc.ContactsServiceServicer):
    def __init__(self, service: ContactsService) -> None:
        self.service = service

    # -- contacts -------------------------------------------------------------------------------

    async def UpsertByIdentity(self, request: pb.UpsertByIdentityRequest, context: Ctx) -> pb.UpsertByIdentityResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_WRITE, own_checks=("profile",))
        item = _upsert_item(space, request)
        contact_id, created = await self.service.upsert_by_identity(
            space, actor, item.identity, item.hints, item.interaction_at
        )
        return pb.UpsertByIdentityResponse(contact_id=str(contact_id), created=created)

    async def UpsertByIdentities(
        self, request: pb.UpsertByIdentitiesRequest, context: Ctx
    ) -> pb.UpsertByIdentitiesResponse:
        """Each item is checked and scoped to its space on its own: an item its own UpsertByIdentity call
        would refuse (a NUL in an id, a bad timestamp, a space the token may not act on) gets that error;
        the others go on. An unexpected failure of one item is logged and reported as INTERNAL for it."""
        caller = current_caller()
        caller.require(Permission.CONTACTS_WRITE)
        actor = Actor(subject=caller.subject, user_id=caller.user_id)
        items: list[UpsertItem] = []
        refused: dict[int, DomainError] = {}
        for i, one in enumerate(request.items):
            try:
                reject_nul(one, skip=("profile",))
                items.append(_upsert_item(caller.scoped_space(one.space_id), one))
            except DomainError as exc:
                refused[i] = exc
            except Exception:
                log.exception("UpsertByIdentities: item %d could not be read", i)
                refused[i] = Internal("internal error for this item; the failure was logged")
        outcomes = iter(await self.service.upsert_by_identities(actor, items))
        results = []
        for i in range(len(request.items)):
            got = UpsertOutcome(error=refused[i]) if i in refused else next(outcomes)
            if got.error is not None:
                code = status_for(got.error).value[0]
                results.append(pb.UpsertByIdentitiesResult(error_code=code, error_message=got.error.message))
            else:
                results.append(pb.UpsertByIdentitiesResult(contact_id=str(got.contact_id), created=got.created))
        return pb.UpsertByIdentitiesResponse(results=results)

    async def CreateContact(self, request: pb.CreateContactRequest, context: Ctx) -> pb.CreateContactResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_WRITE)
        identities = [IdentityInput(i.channel_id, int(i.channel_type), i.external_id) for i in request.identities]
        contact = await self.service.create_contact(
            space,
            actor,
            profile_from_pb(request.profile),
            dict(request.field_values),
            list(request.tag_ids),
            identities,
        )
        defs = await self.service.field_defs(space)
        return pb.CreateContactResponse(contact=contact_to_pb(contact, defs))

    async def GetContact(self, request: pb.GetContactRequest, context: Ctx) -> pb.GetContactResponse:
        space, _, _ = _scope(request, Permission.CONTACTS_READ)
        contact, defs = await self.service.get_contact(space, request.contact_id)
        return pb.GetContactResponse(contact=contact_to_pb(contact, defs))

    async def UpdateContact(self, request: pb.UpdateContactRequest, context: Ctx) -> pb.UpdateContactResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_WRITE)
        contact = await self.service.update_contact(
            space, actor, request.contact_id, profile_from_pb(request.profile), dict(request.field_values)
        )
        defs = await self.service.field_defs(space)
        return pb.UpdateContactResponse(contact=contact_to_pb(contact, defs))

    async def DeleteContact(self, request: pb.DeleteContactRequest, context: Ctx) -> pb.DeleteContactResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_DELETE)
        contact_id = await self.service.delete_contact(space, actor, request.contact_id)
        return pb.DeleteContactResponse(contact_id=str(contact_id))

    async def ListContacts(self, request: pb.ListContactsRequest, context: Ctx) -> pb.ListContactsResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_READ)
        criteria = criteria_from_pb(request.criteria) if request.HasField("criteria") else None
        if request.view_id:
            _scope(request, Permission.VIEWS_READ)
        page = await self.service.list_contacts(
            space,
            actor,
            view_id=request.view_id,
            criteria=criteria,
            search=request.search,
            page_size=request.page.page_size,
            page_token=request.page.page_token,
            with_total=not request.skip_total,
        )
        return pb.ListContactsResponse(
            contacts=[contact_to_pb(c, page.field_defs) for c in page.contacts],
            page=common_pb2.PageResponse(next_page_token=page.next_token, total_count=page.total or 0),
            total_count_capped=page.total_capped,
        )

    async def AddIdentity(self, request: pb.AddIdentityRequest, context: Ctx) -> pb.AddIdentityResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_WRITE)
        i = request.identity
        contact = await self.service.add_identity(
            space, actor, request.contact_id, IdentityInput(i.channel_id, int(i.channel_type), i.external_id)
        )
        defs = await self.service.field_defs(space)
        return pb.AddIdentityResponse(contact=contact_to_pb(contact, defs))

    async def MergeContacts(self, request: pb.MergeContactsRequest, context: Ctx) -> pb.MergeContactsResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_MERGE)
        contact = await self.service.merge(space, actor, request.survivor_contact_id, request.merged_contact_id)
        defs = await self.service.field_defs(space)
        return pb.MergeContactsResponse(contact=contact_to_pb(contact, defs))

    async def ImportContacts(self, request: pb.ImportContactsRequest, context: Ctx) -> pb.ImportContactsResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_IMPORT, own_checks=("rows",))
        dedupe_by = _DEDUPE.get(request.dedupe_by)
        if dedupe_by is None:
            raise InvalidArgument(f"dedupe_by {request.dedupe_by} is unknown; use IMPORT_DEDUPE_EMAIL or _PHONE")
        rows = [ImportRow(profile_from_pb(r.profile), dict(r.field_values), tuple(r.tag_names)) for r in request.rows]
        outcomes = await self.service.import_contacts(space, actor, rows, dedupe_by)
        results = []
        for i, o in enumerate(outcomes):
            if o.error is not None:
                code = status_for(o.error).value[0]
                results.append(pb.ImportResult(index=i, error=o.error.message, error_code=code))
            else:
                results.append(pb.ImportResult(index=i, contact_id=str(o.contact_id), updated=o.updated))
        updated = sum(1 for o in outcomes if o.updated)
        failed = sum(1 for o in outcomes if o.error is not None)
        return pb.ImportContactsResponse(
            results=results,
            created_count=len(outcomes) - updated - failed,
            updated_count=updated,
            failed_count=failed,
        )

    # -- tags -----------------------------------------------------------------------------------

    async def UpdateContactTags(
        self, request: pb.UpdateContactTagsRequest, context: Ctx
    ) -> pb.UpdateContactTagsResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_WRITE)
        changed = await self.service.change_tags(
            space, actor, list(request.contact_ids), list(request.add_tag_ids), list(request.remove_tag_ids)
        )
        return pb.UpdateContactTagsResponse(changed_count=changed)

    async def CreateTag(self, request: pb.CreateTagRequest, context: Ctx) -> pb.CreateTagResponse:
        space, _, _ = _scope(request, Permission.TAGS_MANAGE)
        tag = await self.service.create_tag(space, request.name, request.color, request.description)
        return pb.CreateTagResponse(tag=tag_to_pb(tag))

    async def ListTags(self, request: pb.ListTagsRequest, context: Ctx) -> pb.ListTagsResponse:
        space, _, _ = _scope(request, Permission.CONTACTS_READ)
        tags, page = _paginate(
            await self.service.list_tags(space), lambda t: f"{t.name.lower()}\x00{t.id}", request.page
        )
        return pb.ListTagsResponse(tags=[tag_to_pb(t) for t in tags], page=page)

    async def UpdateTag(self, request: pb.UpdateTagRequest, context: Ctx) -> pb.UpdateTagResponse:
        space, _, _ = _scope(request, Permission.TAGS_MANAGE)
        tag = await self.service.update_tag(
            space,
            request.tag_id,
            request.name if request.HasField("name") else None,
            request.color if request.HasField("color") else None,
            request.description if request.HasField("description") else None,
        )
        return pb.UpdateTagResponse(tag=tag_to_pb(tag))

    async def DeleteTag(self, request: pb.DeleteTagRequest, context: Ctx) -> pb.DeleteTagResponse:
        space, actor, _ = _scope(request, Permission.TAGS_MANAGE)
        return pb.DeleteTagResponse(untagged_count=await self.service.delete_tag(space, actor, request.tag_id))

    # -- assignee -------------------------------------------------------------------------------

    async def AssignContacts(self, request: pb.AssignContactsRequest, context: Ctx) -> pb.AssignContactsResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_WRITE)
        changed = await self.service.assign(
            space, actor, list(request.contact_ids), request.assignee.user_id, request.assignee.team_id
        )
        return pb.AssignContactsResponse(changed_count=changed)

    # -- fields ---------------------------------------------------------------------------------

    async def CreateField(self, request: pb.CreateFieldRequest, context: Ctx) -> pb.CreateFieldResponse:
        space, _, _ = _scope(request, Permission.FIELDS_MANAGE)
        definition = await self.service.create_field(
            space,
            request.key,
            request.label,
            field_type_from_pb(request.type),
            request.description,
            list(request.options),
        )
        return pb.CreateFieldResponse(field=field_to_pb(definition))

    async def ListFields(self, request: pb.ListFieldsRequest, context: Ctx) -> pb.ListFieldsResponse:
        space, _, _ = _scope(request, Permission.FIELDS_READ)
        fields, page = _paginate(await self.service.list_fields(space), lambda f: f.key, request.page)
        return pb.ListFieldsResponse(fields=[field_to_pb(f) for f in fields], page=page)

    async def UpdateField(self, request: pb.UpdateFieldRequest, context: Ctx) -> pb.UpdateFieldResponse:
        space, actor, _ = _scope(request, Permission.FIELDS_MANAGE)
        paths = set(request.update_mask.paths)
        unknown = paths - {"key", "label", "description", "options"}
        if unknown or not paths:
            raise InvalidArgument("update_mask must name some of: key, label, description, options")
        definition = await self.service.update_field(
            space,
            actor,
            request.field_id,
            key=request.key if "key" in paths else None,
            label=request.label if "label" in paths else None,
            description=request.description if "description" in paths else None,
            options=list(request.options) if "options" in paths else None,
        )
        return pb.UpdateFieldResponse(field=field_to_pb(definition))

    async def DeleteField(self, request: pb.DeleteFieldRequest, context: Ctx) -> pb.DeleteFieldResponse:
        space, actor, _ = _scope(request, Permission.FIELDS_MANAGE)
        await self.service.delete_field(space, actor, request.field_id)
        return pb.DeleteFieldResponse()

    # -- views ----------------------------------------------------------------------------------

    async def CreateView(self, request: pb.CreateViewRequest, context: Ctx) -> pb.CreateViewResponse:
        space, actor, _ = _scope(request, Permission.VIEWS_WRITE_OWN)
        view = await self.service.create_view(
            space, actor, request.name, criteria_from_pb(request.criteria), request.shared
        )
        return pb.CreateViewResponse(view=view_to_pb(view))

    async def GetView(self, request: pb.GetViewRequest, context: Ctx) -> pb.GetViewResponse:
        space, actor, _ = _scope(request, Permission.VIEWS_READ)
        return pb.GetViewResponse(view=view_to_pb(await self.service.get_view(space, actor, request.view_id)))

    async def ListViews(self, request: pb.ListViewsRequest, context: Ctx) -> pb.ListViewsResponse:
        space, actor, _ = _scope(request, Permission.VIEWS_READ)
        views, token = await self.service.list_views(space, actor, request.page.page_size, request.page.page_token)
        return pb.ListViewsResponse(
            views=[view_to_pb(v) for v in views], page=common_pb2.PageResponse(next_page_token=token)
        )

    async def UpdateView(self, request: pb.UpdateViewRequest, context: Ctx) -> pb.UpdateViewResponse:
        space, actor, _ = _scope(request, Permission.VIEWS_WRITE_OWN)
        paths = set(request.update_mask.paths)
        if not paths or paths - {"name", "criteria", "shared"}:
            raise InvalidArgument("update_mask must name some of: name, criteria, shared")
        view = await self.service.update_view(
            space,
            actor,
            request.view_id,
            name=request.name if "name" in paths else None,
            criteria=criteria_from_pb(request.criteria) if "criteria" in paths else None,
            shared=request.shared if "shared" in paths else None,
        )
        return pb.UpdateViewResponse(view=view_to_pb(view))

    async def DeleteView(self, request: pb.DeleteViewRequest, context: Ctx) -> pb.DeleteViewResponse:
        space, actor, _ = _scope(request, Permission.VIEWS_WRITE_OWN)
        await self.service.delete_view(space, actor, request.view_id)
        return pb.DeleteViewResponse()

    async def ValidateCriteria(self, request: pb.ValidateCriteriaRequest, context: Ctx) -> pb.ValidateCriteriaResponse:
        space, actor, _ = _scope(request, Permission.CONTACTS_READ)
        criteria = await self.service.validate_criteria(space, actor, criteria_from_pb(request.criteria))
        return pb.ValidateCriteriaResponse(criteria=criteria_to_pb(criteria))


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ContactsService"].full_name
register = pb_grpc.add_ContactsServiceServicer_to_server
