"""Passwords (argon2id), password policy, and high-entropy secrets stored as sha256."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from parley_kit.errors import InvalidArgument

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256  # argon2 takes any length; this bounds the work an attacker can ask for

# The most used passwords (and their obvious stems); a password equal to one, or to one followed by
# digits and symbols, is refused.
_COMMON = frozenset(
    """
    password passw0rd p@ssword p@ssw0rd 123456 1234567 12345678 123456789 1234567890 0123456789 qwerty
    qwertyuiop azerty asdfgh asdfghjkl zxcvbnm abc123 abcdef abcdefgh letmein welcome welcome1 iloveyou
    admin administrator root secret changeme monkey dragon football baseball sunshine princess master
    shadow superman trustno1 whatever starwars parley parleyparley login default guest test testtest
    qazwsx 1q2w3e4r 1qaz2wsx zaq12wsx
    """.split()  # noqa: SIM905
)


def password_problem(password: str, *, email: str = "", display_name: str = "") -> str | None:
    """Why a password is refused, or None when it is acceptable."""
    if not password:
        return "the password is empty"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters"
    if len(set(password)) < 5:
        return "the password repeats too few characters: use at least 5 different ones"
    lowered = password.lower()
    stem = re.sub(r"[\d\W_]+$", "", lowered)
    if lowered in _COMMON or stem in _COMMON or re.fullmatch(r"[\d\W_]+", lowered):
        return "the password is too common or too simple: choose a passphrase of several words"
    local = email.split("@", 1)[0].lower()
    if len(local) >= 4 and local in lowered:
        return "the password contains the email address"
    name = display_name.strip().lower()
    if len(name) >= 4 and name in lowered:
        return "the password contains the display name"
    return None


def require_strong_password(password: str, *, email: str = "", display_name: str = "") -> None:
    problem = password_problem(password, email=email, display_name=display_name)
    if problem:
        raise InvalidArgument(f"{problem}; nothing was changed")


class PasswordHasher:
    """argon2id hashing off the event loop; `verify_or_dummy` takes the same time for unknown users."""

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65_536, parallelism: int = 4) -> None:
        self._argon = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._dummy = self._argon.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._argon.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        too_long = len(password) > MAX_PASSWORD_LENGTH  # never a valid password; same work anyway
        try:
            matched = self._argon.verify(stored or self._dummy, password[:MAX_PASSWORD_LENGTH])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return matched and stored is not None and not too_long

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`; with no stored hash, hash a dummy anyway (same timing)."""
        return await asyncio.to_thread(self._verify, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        return self._argon.check_needs_rehash(stored)


def new_secret() -> str:
    """256 bits of randomness, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def same_digest(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (of any length)."""
    return hmac.compare_digest(digest(given), digest(expected))
