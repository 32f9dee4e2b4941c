"""Bearer tokens: Ed25519-signed JWTs, verified with public keys only.

The workspace service issues tokens with its private key; every other service verifies
them with the public keys (a JWKS document). The key id (`kid`) in the token header picks
the key, so keys rotate without downtime: publish the new key beside the old one, switch
issuing, and drop the old key once its tokens have expired.

Claims: `sub` ("user:<id>" or "service:<id>"), `sid` (space id, "*" for platform-wide
system tokens), `role`, `org` (organization id), `jti`, `iat`, `exp`, `iss`.
"""

from __future__ import annotations

import contextvars
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from parley_kit.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from parley_kit.permissions import Permission, Role, check

ISSUER = "parley"
ALGORITHM = "EdDSA"
ANY_SPACE = "*"
# The longest space id a service stores (`String(64)` columns); workspace issues shorter ones.
MAX_SPACE_ID = 64


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the verified token says."""

    subject: str
    space_id: str
    role: str
    org_id: str = ""
    token_id: str = ""
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """'user', 'service' or 'apikey' (the part of `subject` before ':')."""
        return self.subject.split(":", 1)[0]

    @property
    def principal_id(self) -> str:
        return self.subject.split(":", 1)[1] if ":" in self.subject else self.subject

    @property
    def user_id(self) -> str | None:
        return self.principal_id if self.kind == "user" else None

    def can(self, permission: Permission) -> bool:
        from parley_kit.permissions import allows

        return allows(self.role, permission)

    def require(self, permission: Permission, space_id: str | None = None) -> None:
        """Raise PermissionDenied unless the caller holds `permission` in `space_id`."""
        if space_id is not None:
            self.require_space(space_id)
        check(self.role, permission)

    def require_space(self, space_id: str) -> None:
        if self.space_id != ANY_SPACE and self.space_id != space_id:
            raise PermissionDenied(f"this token is for space '{self.space_id}', not '{space_id}'")

    def scoped_space(self, requested: str = "") -> str:
        """The space a request acts on: the token's space, or for system tokens the requested one."""
        if self.space_id == ANY_SPACE:
            if not requested:
                raise InvalidArgument("space_id is required for platform-wide service tokens")
            if len(requested) > MAX_SPACE_ID or not requested.isprintable():
                raise InvalidArgument(
                    f"space_id {requested[:40]!r} is not a space id: at most {MAX_SPACE_ID} printable characters "
                    f"(got {len(requested)})"
                )
            return requested
        if requested and requested != self.space_id:
            raise PermissionDenied(f"this token is for space '{self.space_id}', not '{requested}'")
        return self.space_id


_current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("parley_caller", default=None)


def current_caller() -> Caller:
    """The caller of the RPC being handled (set by the auth interceptor)."""
    caller = _current_caller.get()
    if caller is None:
        raise Unauthenticated("no authenticated caller for this request")
    return caller


def set_current_caller(caller: Caller | None) -> contextvars.Token[Caller | None]:
    return _current_caller.set(caller)


def reset_current_caller(token: contextvars.Token[Caller | None]) -> None:
    _current_caller.reset(token)


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key with its key id."""

    kid: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        return cls(kid or uuid.uuid4().hex[:12], Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, kid: str, pem: str | bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("signing key must be an Ed25519 private key")
        return cls(kid, key)

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


def jwks(*keys: SigningKey) -> dict[str, Any]:
    """A JWKS document publishing the public halves of `keys`."""
    return {"keys": [k.public_jwk() for k in keys]}


class TokenIssuer:
    """Signs tokens with one key (the workspace service, the launcher, and tests)."""

    def __init__(self, key: SigningKey, issuer: str = ISSUER) -> None:
        self._key = key
        self._issuer = issuer

    def issue(
        self,
        *,
        space_id: str,
        role: Role | str,
        subject: str = "user:test",
        org_id: str = "",
        ttl: float = 900,
        token_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "sub": subject,
            "sid": space_id,
            "role": str(role),
            "org": org_id,
            "jti": token_id or uuid.uuid4().hex,
            "iat": now,
            "exp": now + int(ttl),
            **(extra or {}),
        }
        return jwt.encode(claims, self._key.private_key, algorithm=ALGORITHM, headers={"kid": self._key.kid})


class TokenVerifier:
    """Verifies tokens against a JWKS; optionally re-reads a JWKS file to pick up rotations."""

    def __init__(self, keys: dict[str, Ed25519PublicKey], issuer: str = ISSUER, leeway: float = 5.0) -> None:
        self._keys = dict(keys)
        self._issuer = issuer
        self._leeway = leeway
        self._file: Path | None = None
        self._file_mtime = 0.0

    @classmethod
    def from_jwks(cls, document: dict[str, Any] | str, **kwargs: Any) -> TokenVerifier:
        return cls(_parse_jwks(document), **kwargs)

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> TokenVerifier:
        verifier = cls({}, **kwargs)
        verifier._file = path
        verifier._reload()
        return verifier

    def _reload(self) -> None:
        if self._file is None:
            return
        mtime = self._file.stat().st_mtime
        if mtime != self._file_mtime:
            self._keys = _parse_jwks(self._file.read_text())
            self._file_mtime = mtime

    def verify(self, token: str) -> Caller:
        """The caller a token names; Unauthenticated when it is malformed, forged, unknown or expired."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed token: {exc}") from exc
        kid = header.get("kid", "")
        key = self._keys.get(kid)
        if key is None:
            self._reload()
            key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated(f"token signed with unknown key id '{kid}'")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "sid", "role"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired; log in again") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        return Caller(
            subject=str(claims["sub"]),
            space_id=str(claims["sid"]),
            role=str(claims["role"]),
            org_id=str(claims.get("org", "")),
            token_id=str(claims.get("jti", "")),
            claims=claims,
        )


def _parse_jwks(document: dict[str, Any] | str) -> dict[str, Ed25519PublicKey]:
    data = json.loads(document) if isinstance(document, str) else document
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in data.get("keys", []):
        key = OKPAlgorithm.from_jwk(jwk)
        if isinstance(key, Ed25519PrivateKey):
            key = key.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"key {jwk.get('kid')} is not an Ed25519 key")
        keys[str(jwk["kid"])] = key
    return keys


def require_found(caller: Caller, space_id: str, what: str) -> None:
    """Records of another space are reported as NOT_FOUND, never as existing."""
    if caller.space_id not in (ANY_SPACE, space_id):
        raise NotFound(f"{what} not found")
