"""Domain errors. Services raise these; the gRPC layer maps each to a status code.

They know nothing of gRPC, so domain logic can raise them freely. The message is shown
to the caller, so it should say what was wrong and how to fix it. `database_conflict` turns a
PostgreSQL deadlock or serialization failure into `Aborted` (the gRPC layer does it for every service).
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a caller is meant to see."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request is malformed or a value is invalid; nothing was changed."""


class NotFound(DomainError):
    """The thing does not exist in the caller's space (or the caller may not know it does)."""


class AlreadyExists(DomainError):
    """A unique name, key or identity is already taken."""


class FailedPrecondition(DomainError):
    """The request is valid but the current state forbids it (e.g. closing a closed conversation)."""


class PermissionDenied(DomainError):
    """The caller is authenticated but lacks the permission or the space."""


class Unauthenticated(DomainError):
    """No valid credentials."""


class ResourceExhausted(DomainError):
    """A limit was hit (rate, size, attempts); retry later."""


class Unavailable(DomainError):
    """A dependency is down; the same request may succeed later."""


class Aborted(DomainError):
    """A concurrent change won; retry the read-modify-write."""


class Internal(DomainError):
    """An unexpected failure (a bug or an unexpected database error), logged where it happened; a part of a
    batch reports it for itself instead of failing the whole call."""


# PostgreSQL rolled the transaction back because of a concurrent one; the same request may succeed.
_CONFLICT_SQLSTATES = {
    "40001": "conflicted with a concurrent change (serialization failure)",
    "40P01": "deadlocked with a concurrent change",
}


def database_conflict(exc: BaseException) -> Aborted | None:
    """`Aborted` for a PostgreSQL serialization failure (40001) or deadlock (40P01), else None.

    Finds the SQLSTATE however the error surfaces: asyncpg's own exception, SQLAlchemy's `DBAPIError`
    (its `orig`), or either as the `__cause__` of another exception.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reason = _CONFLICT_SQLSTATES.get(str(getattr(current, "sqlstate", "")))
        if reason is not None:
            return Aborted(f"the request {reason} and was rolled back; retry it")
        current = getattr(current, "orig", None) or current.__cause__
    return None
