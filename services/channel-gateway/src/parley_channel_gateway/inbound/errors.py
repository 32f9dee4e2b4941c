"""The one error a parser raises: the body is not a webhook of its route."""

from __future__ import annotations

from parley_kit.errors import InvalidArgument


class InvalidEnvelope(InvalidArgument):
    """The body is not valid for its route (not a JSON object, wrong `object`, missing envelope keys).

    Nothing was parsed; the HTTP layer answers 400 with `as_json()`. Items inside a valid envelope that
    the gateway does not understand never raise: they become UNKNOWN events.
    """

    def as_json(self) -> dict[str, str]:
        """The JSON body of the 400 answer."""
        return {"error": "invalid_envelope", "message": self.message}
