"""Token verification: only genuine, unexpired tokens for the right space pass."""

from __future__ import annotations

import base64
import json

import pytest
from parley_kit.auth import ANY_SPACE, Caller, SigningKey, TokenIssuer, TokenVerifier, jwks
from parley_kit.errors import InvalidArgument, PermissionDenied, Unauthenticated
from parley_kit.permissions import Permission


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("k1")


@pytest.fixture
def verifier(key: SigningKey) -> TokenVerifier:
    return TokenVerifier.from_jwks(jwks(key))


def test_valid_token_names_the_caller(key: SigningKey, verifier: TokenVerifier) -> None:
    token = TokenIssuer(key).issue(space_id="s1", role="agent", subject="user:u1", org_id="o1")
    caller = verifier.verify(token)
    assert (caller.user_id, caller.space_id, caller.role, caller.org_id) == ("u1", "s1", "agent", "o1")


def test_expired_token_is_refused(key: SigningKey, verifier: TokenVerifier) -> None:
    token = TokenIssuer(key).issue(space_id="s1", role="agent", ttl=-60)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


def test_tampered_claims_are_refused(key: SigningKey, verifier: TokenVerifier) -> None:
    header, payload, signature = TokenIssuer(key).issue(space_id="s1", role="agent").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "owner"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated):
        verifier.verify(f"{header}.{forged}.{signature}")


def test_token_from_another_key_is_refused(verifier: TokenVerifier) -> None:
    stranger = SigningKey.generate("k1")  # same kid, different key
    with pytest.raises(Unauthenticated):
        verifier.verify(TokenIssuer(stranger).issue(space_id="s1", role="owner"))


def test_unknown_key_id_and_garbage_are_refused(verifier: TokenVerifier) -> None:
    with pytest.raises(Unauthenticated, match="unknown key id"):
        verifier.verify(TokenIssuer(SigningKey.generate("other")).issue(space_id="s1", role="owner"))
    with pytest.raises(Unauthenticated, match="malformed"):
        verifier.verify("not-a-token")


def test_rotation_accepts_old_and_new_keys() -> None:
    old, new = SigningKey.generate("old"), SigningKey.generate("new")
    verifier = TokenVerifier.from_jwks(jwks(old, new))
    for k in (old, new):
        assert verifier.verify(TokenIssuer(k).issue(space_id="s", role="agent")).space_id == "s"


def test_wrong_space_and_low_role_are_denied(key: SigningKey, verifier: TokenVerifier) -> None:
    caller = verifier.verify(TokenIssuer(key).issue(space_id="A", role="agent"))
    with pytest.raises(PermissionDenied, match="space 'A'"):
        caller.require(Permission.CONTACTS_READ, space_id="B")
    with pytest.raises(PermissionDenied, match=r"contacts\.delete"):
        caller.require(Permission.CONTACTS_DELETE, space_id="A")
    caller.require(Permission.CONTACTS_READ, space_id="A")


def test_platform_token_names_a_space_that_fits_the_space_id_columns() -> None:
    system = Caller(subject="service:conversations", space_id=ANY_SPACE, role="system")
    assert system.scoped_space("sp_" + "x" * 61) == "sp_" + "x" * 61
    for bad in ("s" * 65, "sp\x00one", "sp\none"):
        with pytest.raises(InvalidArgument, match="not a space id: at most 64 printable characters"):
            system.scoped_space(bad)
    with pytest.raises(InvalidArgument, match="space_id is required"):
        system.scoped_space("")
