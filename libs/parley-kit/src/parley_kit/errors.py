"""Domain errors. Services raise these; the gRPC layer maps each to a status code.

They know nothing of gRPC, so domain logic can raise them freely. The message is shown
to the caller, so it should say what was wrong and how to fix it.
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
    """An unexpected failure, already logged; for answers that report an error per item."""
