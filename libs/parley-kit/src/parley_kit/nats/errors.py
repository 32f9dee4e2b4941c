"""What a consumer handler raises to choose its message's fate, and which errors are transient.

- `TransientError` (and anything `is_transient` recognises): the message is redelivered after
  the consumer's backoff; after `max_deliver` attempts it is dead-lettered.
- `PoisonMessage`: the message can never succeed; it is dead-lettered at once.
- Any other exception is retried like a transient one (a bug may be fixed by a deploy) but
  logged with its traceback.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
import sqlalchemy.exc

from parley_kit.errors import Aborted, ResourceExhausted, Unavailable


class TransientError(Exception):
    """A dependency failed in a way that may pass: retry the message later."""


class PoisonMessage(Exception):
    """The message can never be handled (invalid content, unknown reference): dead-letter it."""


class ProvisioningError(Exception):
    """A stream or consumer could not be created or brought to its declared config."""


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    Unavailable,
    Aborted,
    ResourceExhausted,
    OSError,  # includes ConnectionError and TimeoutError (asyncio's too)
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
# SQLSTATE classes that mean "try again": connection exception, transaction rollback
# (serialization failure, deadlock), insufficient resources, operator intervention (shutdown).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "40", "53", "57P", "55P03")


def is_transient(exc: BaseException) -> bool:
    """True when `exc` is worth retrying later: our own marker, `Unavailable`, connection and
    database operational errors (including serialization failures and deadlocks)."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
