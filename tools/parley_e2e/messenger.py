"""Messenger webhook bodies (the Graph API's `object: page` envelope) and their `X-Hub-Signature-256`."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence


def sign_meta(body: bytes, app_secret: str) -> str:
    """The `X-Hub-Signature-256` header value Meta sends: `sha256=<hex HMAC-SHA256(app secret, raw body)>`."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def _envelope(page_id: str, messaging: list[dict[str, object]]) -> bytes:
    entry = {"id": page_id, "time": int(time.time() * 1000), "messaging": messaging}
    return json.dumps({"object": "page", "entry": [entry]}, separators=(",", ":")).encode()


def messenger_message(page_id: str, psid: str, mid: str, text: str, *, timestamp_ms: int | None = None) -> bytes:
    """A text message from the person `psid` to the Page."""
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    item = {"sender": {"id": psid}, "recipient": {"id": page_id}, "timestamp": ts}
    return _envelope(page_id, [{**item, "message": {"mid": mid, "text": text}}])


def messenger_delivery(page_id: str, psid: str, mids: Sequence[str], *, watermark_ms: int | None = None) -> bytes:
    """A delivery receipt: the Page's messages `mids` (and everything up to `watermark`) reached `psid`."""
    watermark = watermark_ms if watermark_ms is not None else int(time.time() * 1000)
    return _envelope(
        page_id,
        [
            {
                "sender": {"id": psid},
                "recipient": {"id": page_id},
                "delivery": {"mids": list(mids), "watermark": watermark},
            }
        ],
    )
