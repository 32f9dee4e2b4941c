"""Instagram messaging webhooks (object "instagram"): Messenger's shapes plus story replies and mentions,
shares, reels, unsends (`is_deleted`, kind DELETE) and `messaging_seen` receipts that name a `mid`."""

from __future__ import annotations

from .meta import INSTAGRAM, parse_envelope
from .model import ParsedItem


def parse_instagram(body: bytes | str) -> list[ParsedItem]:
    """Parse an Instagram webhook body into events; raise InvalidEnvelope when it is not one.

    Channel keys: the Instagram professional account id (`entry[].id`, then the account-side participant).
    """
    return parse_envelope(body, INSTAGRAM)
