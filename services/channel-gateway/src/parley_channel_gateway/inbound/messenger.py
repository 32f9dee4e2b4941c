"""Messenger webhooks (object "page")."""

from __future__ import annotations

from .meta import MESSENGER, parse_envelope
from .model import ParsedItem


def parse_messenger(body: bytes | str) -> list[ParsedItem]:
    """Parse a Messenger webhook body into events; raise InvalidEnvelope when it is not one.

    Channel keys: the Page id (`entry[].id`, then the page-side participant: recipient, or sender for echoes).
    """
    return parse_envelope(body, MESSENGER)
