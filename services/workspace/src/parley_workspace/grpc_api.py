"""gRPC layer: maps protobuf to the domain and back, and calls service.py. Never touches a session."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from parley.common.v1 import common_pb2
from parley.workspace.v1 import api_key_service_pb2 as key_pb
from parley.workspace.v1 import api_key_service_pb2_grpc as key_grpc
from parley.workspace.v1 import auth_service_pb2 as auth_pb
from parley.workspace.v1 import auth_service_pb2_grpc as auth_grpc
from parley.workspace.v1 import availability_service_pb2 as avail_pb
from parley.workspace.v1 import availability_service_pb2_grpc as avail_grpc
from parley.workspace.v1 import organization_service_pb2 as org_pb
from parley.workspace.v1 import organization_service_pb2_grpc as org_grpc
from parley.workspace.v1 import resources_pb2 as r
from parley.workspace.v1 import space_service_pb2 as space_pb
from parley.workspace.v1 import space_service_pb2_grpc as space_grpc
from parley.workspace.v1 import team_service_pb2 as team_pb
from parley.workspace.v1 import team_service_pb2_grpc as team_grpc
from parley.workspace.v1 import user_service_pb2 as user_pb
from parley.workspace.v1 import user_service_pb2_grpc as user_grpc
from parley_kit.auth import Caller, TokenVerifier, current_caller
from parley_kit.errors import Unavailable
from parley_kit.permissions import ROLE_PERMISSIONS, Role

from parley_workspace import hours as bh
from parley_workspace import metrics
from parley_workspace import models as m
from parley_workspace.paging import Page
from parley_workspace.repository import MemberRow, OrgMemberRow, SpaceAccessRow, TeamMemberRow, TeamRow
from parley_workspace.service import API_KEY_PREFIX, Hours, IssuedTokens, WorkspaceService

# -- enums --------------------------------------------------------------------------------------------

SPACE_ROLE_TO_PB = {"agent": r.SPACE_ROLE_AGENT, "manager": r.SPACE_ROLE_MANAGER, "owner": r.SPACE_ROLE_OWNER}
SPACE_ROLE_FROM_PB = {v: k for k, v in SPACE_ROLE_TO_PB.items()}
ORG_ROLE_TO_PB = {
    "admin": r.ORGANIZATION_ROLE_ADMIN,
    "billing_admin": r.ORGANIZATION_ROLE_BILLING_ADMIN,
    "member": r.ORGANIZATION_ROLE_MEMBER,
}
ORG_ROLE_FROM_PB = {v: k for k, v in ORG_ROLE_TO_PB.items()}
AVAILABILITY_TO_PB = {
    "online": r.AVAILABILITY_STATUS_ONLINE,
    "away": r.AVAILABILITY_STATUS_AWAY,
    "offline": r.AVAILABILITY_STATUS_OFFLINE,
}
AVAILABILITY_FROM_PB = {v: k for k, v in AVAILABILITY_TO_PB.items()}

PUBLIC_METHODS = frozenset(
    f"/{auth_pb.DESCRIPTOR.services_by_name['AuthService'].full_name}/{name}"
    for name in ("Login", "Refresh", "Logout", "GetJwks", "AcceptInvite", "Bootstrap")
)


def space_role_of(value: int) -> str:
    return SPACE_ROLE_FROM_PB.get(value, "")  # "" is refused by the domain with a clear message


def org_role_of(value: int) -> str:
    return ORG_ROLE_FROM_PB.get(value, "")


def availability_of(value: int) -> str:
    return AVAILABILITY_FROM_PB.get(value, "")


def ts(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def page_of(request: Any) -> Page:
    return Page.parse(request.page.page_size, request.page.page_token)


def page_out(token: str) -> common_pb2.PageResponse:
    return common_pb2.PageResponse(next_page_token=token)


# -- resources ----------------------------------------------------------------------------------------


def org_pb_of(org: m.Organization, role: str | None) -> r.Organization:
    return r.Organization(
        id=org.id, name=org.name, created_at=ts(org.created_at), my_role=ORG_ROLE_TO_PB.get(role or "", 0)
    )


def org_member_pb(row: OrgMemberRow) -> r.OrganizationMember:
    return r.OrganizationMember(
        organization_id=row.member.organization_id,
        user_id=row.user.id,
        email=row.user.email,
        display_name=row.user.display_name,
        role=ORG_ROLE_TO_PB[row.member.role],
        joined_at=ts(row.member.created_at),
    )


def space_pb_of(space: m.Space) -> r.Space:
    return r.Space(
        id=space.id,
        organization_id=space.organization_id,
        name=space.name,
        time_zone=space.time_zone,
        archived=space.archived_at is not None,
        archived_at=ts(space.archived_at),
        created_at=ts(space.created_at),
    )


def member_pb(row: MemberRow) -> r.SpaceMember:
    return r.SpaceMember(
        space_id=row.member.space_id,
        user_id=row.user.id,
        email=row.user.email,
        display_name=row.user.display_name,
        role=SPACE_ROLE_TO_PB[row.member.role],
        availability=AVAILABILITY_TO_PB[row.member.availability],
        availability_changed_at=ts(row.member.availability_changed_at),
        joined_at=ts(row.member.created_at),
    )


def user_pb_of(user: m.User) -> r.User:
    return r.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        status=r.USER_STATUS_ACTIVE if user.password_hash else r.USER_STATUS_INVITED,
        created_at=ts(user.created_at),
    )


def team_pb_of(team: m.Team, member_count: int) -> r.Team:
    return r.Team(
        id=team.id, space_id=team.space_id, name=team.name, member_count=member_count, created_at=ts(team.created_at)
    )


def team_row_pb(row: TeamRow) -> r.Team:
    return team_pb_of(row.team, row.member_count)


def team_member_pb(row: TeamMemberRow) -> r.TeamMember:
    return r.TeamMember(
        team_id=row.member.team_id,
        user_id=row.user.id,
        email=row.user.email,
        display_name=row.user.display_name,
        added_at=ts(row.member.created_at),
    )


def api_key_pb(key: m.ApiKey) -> r.ApiKey:
    return r.ApiKey(
        id=key.id,
        space_id=key.space_id,
        name=key.name,
        role=SPACE_ROLE_TO_PB[key.role],
        token_prefix=f"{API_KEY_PREFIX}{key.id}_",
        created_by=key.created_by,
        created_at=ts(key.created_at),
        last_used_at=ts(key.last_used_at),
        revoked=key.revoked_at is not None,
        revoked_at=ts(key.revoked_at),
    )


def ranges_pb(ranges: list[tuple[int, int]] | list[list[int]]) -> list[r.TimeRange]:
    return [r.TimeRange(opens=bh.format_time(o), closes=bh.format_time(c)) for o, c in ranges]


def hours_pb(hours: Hours) -> r.BusinessHours:
    return r.BusinessHours(
        space_id=hours.space.id,
        time_zone=hours.space.time_zone,
        weekly=[r.WeekdayHours(day=day, ranges=ranges_pb(ranges)) for day, ranges in sorted(hours.weekly.items())],
        exceptions=[
            r.BusinessHoursException(date=e.day.isoformat(), name=e.name, ranges=ranges_pb(e.ranges))
            for e in hours.exceptions
        ],
        configured=hours.configured,
    )


def tokens_pb(tokens: IssuedTokens) -> r.TokenPair:
    return r.TokenPair(
        access_token=tokens.access_token,
        access_token_expires_at=ts(tokens.access_expires_at),
        refresh_token=tokens.refresh_token,
        refresh_token_expires_at=ts(tokens.refresh_expires_at),
        space_id=tokens.space_id,
        role=SPACE_ROLE_TO_PB.get(tokens.role, 0),
        organization_id=tokens.org_id,
    )


def access_pb(row: SpaceAccessRow) -> r.SpaceAccess:
    return r.SpaceAccess(
        space_id=row.space.id,
        space_name=row.space.name,
        organization_id=row.organization.id,
        organization_name=row.organization.name,
        role=SPACE_ROLE_TO_PB[row.role],
    )


# -- authentication -------------------------------------------------------------------------------------


class LocalAuthenticator:
    """The workspace's own authenticator: JWTs with the public keys, API keys straight from its database."""

    def __init__(self, verifier: TokenVerifier, service: WorkspaceService | None = None) -> None:
        self._verifier = verifier
        self._service = service

    def bind(self, service: WorkspaceService) -> None:
        """Attach the service (built after the runtime, whose sessions it uses)."""
        self._service = service

    async def authenticate(self, token: str) -> Caller:
        if token.startswith(API_KEY_PREFIX):
            if self._service is None:
                raise Unavailable("the workspace service is starting; retry")
            try:
                verified = await self._service.verify_api_key(token)
            except Exception:
                metrics.API_KEY_VERIFICATIONS.labels("refused").inc()
                raise
            metrics.API_KEY_VERIFICATIONS.labels("ok").inc()
            return Caller(
                subject=f"apikey:{verified.key.id}",
                space_id=verified.key.space_id,
                role=verified.key.role,
                org_id=verified.org_id,
            )
        return self._verifier.verify(token)


# -- servicers ------------------------------------------------------------------------------------------


class AuthApi(auth_grpc.AuthServiceServicer):
    def __init__(self, service: WorkspaceService) -> None:
        self._s = service

    async def Login(self, request: auth_pb.LoginRequest, context: Any) -> auth_pb.LoginResponse:
        result = await self._s.login(request.email, request.password, request.space_id)
        metrics.TOKENS_ISSUED.labels("login").inc()
        return auth_pb.LoginResponse(
            tokens=tokens_pb(result.tokens), user=user_pb_of(result.user), spaces=[access_pb(a) for a in result.spaces]
        )

    async def Refresh(self, request: auth_pb.RefreshRequest, context: Any) -> auth_pb.RefreshResponse:
        tokens = await self._s.refresh(request.refresh_token, request.space_id)
        metrics.TOKENS_ISSUED.labels("refresh").inc()
        return auth_pb.RefreshResponse(tokens=tokens_pb(tokens))

    async def Logout(self, request: auth_pb.LogoutRequest, context: Any) -> auth_pb.LogoutResponse:
        count = await self._s.logout(request.refresh_token, all_sessions=request.all_sessions)
        return auth_pb.LogoutResponse(revoked_sessions=count)

    async def SwitchSpace(self, request: auth_pb.SwitchSpaceRequest, context: Any) -> auth_pb.SwitchSpaceResponse:
        tokens = await self._s.switch_space(current_caller(), request.space_id)
        metrics.TOKENS_ISSUED.labels("switch_space").inc()
        return auth_pb.SwitchSpaceResponse(tokens=tokens_pb(tokens))

    async def WhoAmI(self, request: auth_pb.WhoAmIRequest, context: Any) -> auth_pb.WhoAmIResponse:
        identity = await self._s.whoami(current_caller())
        caller = identity.caller
        try:
            permissions = sorted(ROLE_PERMISSIONS[Role(caller.role)])
        except ValueError:
            permissions = []
        return auth_pb.WhoAmIResponse(
            subject=caller.subject,
            space_id=caller.space_id,
            role=caller.role,
            organization_id=caller.org_id,
            user=user_pb_of(identity.user) if identity.user else None,
            spaces=[access_pb(a) for a in identity.spaces],
            permissions=[str(p) for p in permissions],
        )

    async def GetJwks(self, request: auth_pb.GetJwksRequest, context: Any) -> auth_pb.GetJwksResponse:
        document, kid = self._s.jwks()
        return auth_pb.GetJwksResponse(jwks_json=json.dumps(document), signing_key_id=kid)

    async def VerifyApiKey(self, request: auth_pb.VerifyApiKeyRequest, context: Any) -> auth_pb.VerifyApiKeyResponse:
        try:
            verified = await self._s.verify_api_key_for(current_caller(), request.api_key)
        except Exception:
            metrics.API_KEY_VERIFICATIONS.labels("refused").inc()
            raise
        metrics.API_KEY_VERIFICATIONS.labels("ok").inc()
        key = verified.key
        return auth_pb.VerifyApiKeyResponse(
            api_key_id=key.id,
            space_id=key.space_id,
            role=SPACE_ROLE_TO_PB[key.role],
            organization_id=verified.org_id,
            name=key.name,
        )

    async def AcceptInvite(self, request: auth_pb.AcceptInviteRequest, context: Any) -> auth_pb.AcceptInviteResponse:
        user = await self._s.accept_invite(request.setup_token, request.password, request.display_name)
        return auth_pb.AcceptInviteResponse(user=user_pb_of(user))

    async def Bootstrap(self, request: auth_pb.BootstrapRequest, context: Any) -> auth_pb.BootstrapResponse:
        result = await self._s.bootstrap(
            request.operator_secret,
            org_name=request.organization_name,
            space_name=request.space_name,
            email=request.email,
            password=request.password,
            display_name=request.display_name,
            time_zone=request.time_zone,
            force=request.force,
        )
        metrics.TOKENS_ISSUED.labels("bootstrap").inc()
        return auth_pb.BootstrapResponse(
            organization_id=result.org.id,
            space_id=result.space.id,
            user_id=result.user.id,
            tokens=tokens_pb(result.tokens),
            user_created=result.user_created,
        )


class OrganizationApi(org_grpc.OrganizationServiceServicer):
    def __init__(self, service: WorkspaceService) -> None:
        self._s = service

    async def CreateOrganization(self, request: Any, context: Any) -> org_pb.CreateOrganizationResponse:
        org, role = await self._s.create_org(current_caller(), request.name)
        return org_pb.CreateOrganizationResponse(organization=org_pb_of(org, role))

    async def GetOrganization(self, request: Any, context: Any) -> org_pb.GetOrganizationResponse:
        org, role = await self._s.get_org(current_caller(), request.organization_id)
        return org_pb.GetOrganizationResponse(organization=org_pb_of(org, role))

    async def RenameOrganization(self, request: Any, context: Any) -> org_pb.RenameOrganizationResponse:
        org, role = await self._s.rename_org(current_caller(), request.organization_id, request.name)
        return org_pb.RenameOrganizationResponse(organization=org_pb_of(org, role))

    async def ListOrganizations(self, request: Any, context: Any) -> org_pb.ListOrganizationsResponse:
        paged = await self._s.list_orgs(current_caller(), page_of(request))
        return org_pb.ListOrganizationsResponse(
            organizations=[org_pb_of(o, role) for o, role in paged.items], page=page_out(paged.next_token)
        )

    async def ListOrganizationMembers(self, request: Any, context: Any) -> org_pb.ListOrganizationMembersResponse:
        paged = await self._s.list_org_members(current_caller(), request.organization_id, page_of(request))
        return org_pb.ListOrganizationMembersResponse(
            members=[org_member_pb(row) for row in paged.items], page=page_out(paged.next_token)
        )

    async def AddOrganizationMember(self, request: Any, context: Any) -> org_pb.AddOrganizationMemberResponse:
        row = await self._s.add_org_member(
            current_caller(), request.organization_id, request.user_id, org_role_of(request.role)
        )
        return org_pb.AddOrganizationMemberResponse(member=org_member_pb(row))

    async def SetOrganizationMemberRole(self, request: Any, context: Any) -> org_pb.SetOrganizationMemberRoleResponse:
        row = await self._s.set_org_member_role(
            current_caller(), request.organization_id, request.user_id, org_role_of(request.role)
        )
        return org_pb.SetOrganizationMemberRoleResponse(member=org_member_pb(row))

    async def RemoveOrganizationMember(self, request: Any, context: Any) -> org_pb.RemoveOrganizationMemberResponse:
        await self._s.remove_org_member(current_caller(), request.organization_id, request.user_id)
        return org_pb.RemoveOrganizationMemberResponse()


class SpaceApi(space_grpc.SpaceServiceServicer):
    def __init__(self, service: WorkspaceService) -> None:
        self._s = service

    async def CreateSpace(self, request: Any, context: Any) -> space_pb.CreateSpaceResponse:
        space = await self._s.create_space(current_caller(), request.organization_id, request.name, request.time_zone)
        return space_pb.CreateSpaceResponse(space=space_pb_of(space))

    async def GetSpace(self, request: Any, context: Any) -> space_pb.GetSpaceResponse:
        return space_pb.GetSpaceResponse(space=space_pb_of(await self._s.get_space(current_caller(), request.space_id)))

    async def RenameSpace(self, request: Any, context: Any) -> space_pb.RenameSpaceResponse:
        space = await self._s.rename_space(current_caller(), request.space_id, request.name)
        return space_pb.RenameSpaceResponse(space=space_pb_of(space))

    async def ArchiveSpace(self, request: Any, context: Any) -> space_pb.ArchiveSpaceResponse:
        space = await self._s.archive_space(current_caller(), request.space_id)
        return space_pb.ArchiveSpaceResponse(space=space_pb_of(space))

    async def ListSpaces(self, request: Any, context: Any) -> space_pb.ListSpacesResponse:
        paged = await self._s.list_spaces(
            current_caller(), request.organization_id, page_of(request), include_archived=request.include_archived
        )
        return space_pb.ListSpacesResponse(
            spaces=[space_pb_of(s) for s in paged.items], page=page_out(paged.next_token)
        )

    async def AddSpaceMember(self, request: Any, context: Any) -> space_pb.AddSpaceMemberResponse:
        row = await self._s.add_space_member(
            current_caller(), request.space_id, request.user_id, space_role_of(request.role)
        )
        return space_pb.AddSpaceMemberResponse(member=member_pb(row))

    async def SetSpaceMemberRole(self, request: Any, context: Any) -> space_pb.SetSpaceMemberRoleResponse:
        row = await self._s.set_space_member_role(
            current_caller(), request.space_id, request.user_id, space_role_of(request.role)
        )
        return space_pb.SetSpaceMemberRoleResponse(member=member_pb(row))

    async def RemoveSpaceMember(self, request: Any, context: Any) -> space_pb.RemoveSpaceMemberResponse:
        await self._s.remove_space_member(current_caller(), request.space_id, request.user_id)
        return space_pb.RemoveSpaceMemberResponse()

    async def GetSpaceMember(self, request: Any, context: Any) -> space_pb.GetSpaceMemberResponse:
        row = await self._s.get_space_member(current_caller(), request.space_id, request.user_id)
        return space_pb.GetSpaceMemberResponse(member=member_pb(row))

    async def ListSpaceMembers(self, request: Any, context: Any) -> space_pb.ListSpaceMembersResponse:
        role = space_role_of(request.role) if request.role else ""
        paged = await self._s.list_space_members(current_caller(), request.space_id, page_of(request), role=role)
        return space_pb.ListSpaceMembersResponse(
            members=[member_pb(row) for row in paged.items], page=page_out(paged.next_token)
        )


class UserApi(user_grpc.UserServiceServicer):
    def __init__(self, service: WorkspaceService) -> None:
        self._s = service

    async def CreateUser(self, request: Any, context: Any) -> user_pb.CreateUserResponse:
        row = await self._s.create_user(
            current_caller(),
            request.space_id,
            request.email,
            request.display_name,
            request.password,
            space_role_of(request.role),
        )
        return user_pb.CreateUserResponse(user=user_pb_of(row.user), member=member_pb(row))

    async def InviteUser(self, request: Any, context: Any) -> user_pb.InviteUserResponse:
        invitation = await self._s.invite_user(
            current_caller(), request.space_id, request.email, request.display_name, space_role_of(request.role)
        )
        return user_pb.InviteUserResponse(
            user=user_pb_of(invitation.user),
            member=member_pb(invitation.member),
            created=invitation.created,
            setup_token=invitation.setup_token,
        )

    async def GetUser(self, request: Any, context: Any) -> user_pb.GetUserResponse:
        return user_pb.GetUserResponse(user=user_pb_of(await self._s.get_user(current_caller(), request.user_id)))

    async def UpdateUser(self, request: Any, context: Any) -> user_pb.UpdateUserResponse:
        user = await self._s.update_user(current_caller(), request.user_id, request.display_name)
        return user_pb.UpdateUserResponse(user=user_pb_of(user))

    async def ChangePassword(self, request: Any, context: Any) -> user_pb.ChangePasswordResponse:
        count = await self._s.change_password(current_caller(), request.current_password, request.new_password)
        return user_pb.ChangePasswordResponse(revoked_sessions=count)


class TeamApi(team_grpc.TeamServiceServicer):
    def __init__(self, service: WorkspaceService) -> None:
        self._s = service

    async def CreateTeam(self, request: Any, context: Any) -> team_pb.CreateTeamResponse:
        row = await self._s.create_team(current_caller(), request.space_id, request.name)
        return team_pb.CreateTeamResponse(team=team_row_pb(row))

    async def GetTeam(self, request: Any, context: Any) -> team_pb.GetTeamResponse:
        return team_pb.GetTeamResponse(team=team_row_pb(await self._s.get_team(current_caller(), request.team_id)))

    async def RenameTeam(self, request: Any, context: Any) -> team_pb.RenameTeamResponse:
        row = await self._s.rename_team(current_caller(), request.team_id, request.name)
        return team_pb.RenameTeamResponse(team=team_row_pb(row))

    async def DeleteTeam(self, request: Any, context: Any) -> team_pb.DeleteTeamResponse:
        await self._s.delete_team(current_caller(), request.team_id)
        return team_pb.DeleteTeamResponse()

    async def ListTeams(self, request: Any, context: Any) -> team_pb.ListTeamsResponse:
        paged = await self._s.list_teams(current_caller(), request.space_id, page_of(request), user_id=request.user_id)
        return team_pb.ListTeamsResponse(teams=[team_row_pb(t) for t in paged.items], page=page_out(paged.next_token))

    async def AddTeamMember(self, request: Any, context: Any) -> team_pb.AddTeamMemberResponse:
        row = await self._s.add_team_member(current_caller(), request.team_id, request.user_id)
        return team_pb.AddTeamMemberResponse(member=team_member_pb(row))

    async def RemoveTeamMember(self, request: Any, context: Any) -> team_pb.RemoveTeamMemberResponse:
        await self._s.remove_team_member(current_caller(), request.team_id, request.user_id)
        return team_pb.RemoveTeamMemberResponse()

    async def ListTeamMembers(self, request: Any, context: Any) -> team_pb.ListTeamMembersResponse:
        paged = await self._s.list_team_members(current_caller(), request.team_id, page_of(request))
        return team_pb.ListTeamMembersResponse(
            members=[team_member_pb(row) for row in paged.items], page=page_out(paged.next_token)
        )


class ApiKeyApi(key_grpc.ApiKeyServiceServicer):
    def __init__(self, service: WorkspaceService) -> None:
        self._s = service

    async def CreateApiKey(self, request: Any, context: Any) -> key_pb.CreateApiKeyResponse:
        key, token = await self._s.create_api_key(
            current_caller(), request.space_id, request.name, space_role_of(request.role)
        )
        return key_pb.CreateApiKeyResponse(api_key=api_key_pb(key), token=token)

    async def GetApiKey(self, request: Any, context: Any) -> key_pb.GetApiKeyResponse:
        return key_pb.GetApiKeyResponse(
            api_key=api_key_pb(await self._s.get_api_key(current_caller(), request.api_key_id))
        )

    async def ListApiKeys(self, request: Any, context: Any) -> key_pb.ListApiKeysResponse:
        paged = await self._s.list_api_keys(
            current_caller(), request.space_id, page_of(request), include_revoked=request.include_revoked
        )
        return key_pb.ListApiKeysResponse(
            api_keys=[api_key_pb(k) for k in paged.items], page=page_out(paged.next_token)
        )

    async def RevokeApiKey(self, request: Any, context: Any) -> key_pb.RevokeApiKeyResponse:
        key = await self._s.revoke_api_key(current_caller(), request.api_key_id)
        return key_pb.RevokeApiKeyResponse(api_key=api_key_pb(key))


class AvailabilityApi(avail_grpc.AvailabilityServiceServicer):
    def __init__(self, service: WorkspaceService) -> None:
        self._s = service

    async def SetAvailability(self, request: Any, context: Any) -> avail_pb.SetAvailabilityResponse:
        row, changed = await self._s.set_availability(
            current_caller(), request.space_id, request.user_id, availability_of(request.status)
        )
        return avail_pb.SetAvailabilityResponse(member=member_pb(row), changed=changed)

    async def ListAvailability(self, request: Any, context: Any) -> avail_pb.ListAvailabilityResponse:
        status = availability_of(request.status) if request.status else ""
        paged = await self._s.list_availability(current_caller(), request.space_id, status, page_of(request))
        return avail_pb.ListAvailabilityResponse(
            members=[member_pb(row) for row in paged.items], page=page_out(paged.next_token)
        )

    async def GetBusinessHours(self, request: Any, context: Any) -> avail_pb.GetBusinessHoursResponse:
        hours = await self._s.get_business_hours(current_caller(), request.space_id)
        return avail_pb.GetBusinessHoursResponse(business_hours=hours_pb(hours))

    async def SetBusinessHours(self, request: Any, context: Any) -> avail_pb.SetBusinessHoursResponse:
        weekly = [(int(day.day), [(t.opens, t.closes) for t in day.ranges]) for day in request.weekly]
        hours = await self._s.set_business_hours(current_caller(), request.space_id, request.time_zone, weekly)
        return avail_pb.SetBusinessHoursResponse(business_hours=hours_pb(hours))

    async def SetBusinessHoursException(self, request: Any, context: Any) -> avail_pb.SetBusinessHoursExceptionResponse:
        exc = request.exception
        hours = await self._s.set_hours_exception(
            current_caller(), request.space_id, exc.date, exc.name, [(t.opens, t.closes) for t in exc.ranges]
        )
        return avail_pb.SetBusinessHoursExceptionResponse(business_hours=hours_pb(hours))

    async def DeleteBusinessHoursException(
        self, request: Any, context: Any
    ) -> avail_pb.DeleteBusinessHoursExceptionResponse:
        hours = await self._s.delete_hours_exception(current_caller(), request.space_id, request.date)
        return avail_pb.DeleteBusinessHoursExceptionResponse(business_hours=hours_pb(hours))

    async def CheckAvailability(self, request: Any, context: Any) -> avail_pb.CheckAvailabilityResponse:
        at = request.at.ToDatetime(tzinfo=dt.UTC) if request.HasField("at") else None
        result = await self._s.check_availability(current_caller(), request.space_id, at)
        return avail_pb.CheckAvailabilityResponse(
            within_business_hours=result.decision.open,
            any_agent_online=result.online_agents > 0,
            online_agent_count=result.online_agents,
            time_zone=result.time_zone,
            local_time=result.decision.local_time.isoformat(),
            exception_name=result.decision.exception_name,
            hours_configured=result.decision.configured,
        )


def servicers(service: WorkspaceService) -> list[tuple[Callable[[Any, Any], None], Any, str]]:
    """(register function, servicer, full service name) for every workspace gRPC service."""

    def name(module: Any, service_name: str) -> str:
        return str(module.DESCRIPTOR.services_by_name[service_name].full_name)

    return [
        (auth_grpc.add_AuthServiceServicer_to_server, AuthApi(service), name(auth_pb, "AuthService")),
        (
            org_grpc.add_OrganizationServiceServicer_to_server,
            OrganizationApi(service),
            name(org_pb, "OrganizationService"),
        ),
        (space_grpc.add_SpaceServiceServicer_to_server, SpaceApi(service), name(space_pb, "SpaceService")),
        (user_grpc.add_UserServiceServicer_to_server, UserApi(service), name(user_pb, "UserService")),
        (team_grpc.add_TeamServiceServicer_to_server, TeamApi(service), name(team_pb, "TeamService")),
        (key_grpc.add_ApiKeyServiceServicer_to_server, ApiKeyApi(service), name(key_pb, "ApiKeyService")),
        (
            avail_grpc.add_AvailabilityServiceServicer_to_server,
            AvailabilityApi(service),
            name(avail_pb, "AvailabilityService"),
        ),
    ]
