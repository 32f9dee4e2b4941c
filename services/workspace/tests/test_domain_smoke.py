from __future__ import annotations

import uuid

from parley_kit.auth import TokenVerifier, jwks

from .conftest import OPERATOR_SECRET, PASSWORD


async def test_bootstrap_login_and_space_flow(domain, signing_key) -> None:  # type: ignore[no-untyped-def]
    svc, rec = domain
    email = f"owner-{uuid.uuid4().hex[:6]}@example.com"
    result = await svc.bootstrap(
        OPERATOR_SECRET, org_name="Acme " + email, space_name="Support", email=email, password=PASSWORD
    )
    caller = TokenVerifier.from_jwks(jwks(signing_key)).verify(result.tokens.access_token)
    assert caller.role == "owner" and caller.space_id == result.space.id
    login = await svc.login(email.upper(), PASSWORD)
    assert login.tokens.space_id == result.space.id
    member = await svc.create_user(
        caller, "", f"agent-{uuid.uuid4().hex[:6]}@example.com", "Ann", PASSWORD + "!", "agent"
    )
    assert member.member.role == "agent"
    team = await svc.create_team(caller, "", "Billing")
    await svc.add_team_member(caller, team.team.id, member.user.id)
    await svc.set_availability(caller, "", member.user.id, "online")
    check = await svc.check_availability(caller, "", None)
    assert check.online_agents == 1 and check.decision.open
    key, token = await svc.create_api_key(caller, "", "zapier", "agent")
    verified = await svc.verify_api_key(token)
    assert verified.key.id == key.id
    await svc.revoke_api_key(caller, key.id)
    refreshed = await svc.refresh(login.tokens.refresh_token)
    assert refreshed.refresh_token != login.tokens.refresh_token
    await svc.remove_space_member(caller, "", member.user.id)
    kinds = [e.kind for e in rec.events]
    assert "member.removed" in kinds and "api_key.revoked" in kinds
