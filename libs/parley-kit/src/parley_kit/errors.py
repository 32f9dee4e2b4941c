"""Domain errors. Services raise these; the gRPC layer maps each to a status code.

They know nothing of gRPC, so domain logic can raise them freely. The message is shown
to the caller, so it should say what was wrong and how to fix it. `database_conflict` turns a
PostgreSQL deadlock or serialization failure into `Aborted` (the gRPC layer does it for every service);
`database_unavailable` turns a lost or unobtainable database connection into `Unavailable` (for a part of a
batch that answers for itself).
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import sqlalchemy.exc


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
    for current in _causes(exc):
        reason = _CONFLICT_SQLSTATES.get(str(getattr(current, "sqlstate", "")))
        if reason is not None:
            return Aborted(f"the request {reason} and was rolled back; retry it")
    return None


# SQLSTATE classes of a connection lost or refused: connection exception (08, e.g. asyncpg's
# ConnectionDoesNotExistError), insufficient resources (53, e.g. too many connections), operator
# intervention (57P: shutdown, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def database_unavailable(exc: BaseException) -> Unavailable | None:
    """`Unavailable` when the database could not be reached or a connection broke, else None.

    That is: a pooled connection found dropped (SQLAlchemy marks its error `connection_invalidated`; a query
    on the bare asyncpg connection raises its `InterfaceError` "connection is closed"), a connection-class
    SQLSTATE (08, 53, 57P), an `OSError` (refused, reset, timed out while connecting) or the pool's timeout
    waiting for a free connection; found through `orig` and `__cause__` like `database_conflict`.
    """
    for current in _causes(exc):
        sqlstate = getattr(current, "sqlstate", None)
        if (
            getattr(current, "connection_invalidated", False)
            or (isinstance(current, asyncpg.InterfaceError) and "connection is closed" in str(current))
            or (isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES))
            or isinstance(current, OSError | sqlalchemy.exc.TimeoutError)
        ):
            return Unavailable("the database is unreachable or its connection was lost; retry it")
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps (SQLAlchemy's `orig`) or was raised from (`__cause__`), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__
