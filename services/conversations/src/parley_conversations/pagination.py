"""Keyset page tokens: opaque, bound to the query they came from."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any

from parley_kit.errors import InvalidArgument

from parley_conversations.domain import PageRequest


def page_size(page: PageRequest, *, default: int, maximum: int) -> int:
    if page.size < 0:
        raise InvalidArgument(f"page_size must not be negative (got {page.size})")
    if page.size > maximum:
        raise InvalidArgument(f"page_size {page.size} is above the maximum of {maximum}; ask for at most {maximum}")
    return page.size or default


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:12]


def encode(values: list[Any], query: str) -> str:
    raw = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    data = json.dumps({"k": raw, "q": query}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def decode(token: str, query: str, types: tuple[type, ...]) -> list[Any] | None:
    """The keyset values of `token` (None for an empty token); InvalidArgument when it is not ours."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["q"] != query:
            raise InvalidArgument(
                "page_token belongs to a different query (filters or order changed); start again without a token"
            )
        values = data["k"]
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError("wrong shape")
        out: list[Any] = []
        for value, kind in zip(values, types, strict=True):
            if kind is datetime:
                out.append(datetime.fromisoformat(value))
            elif not isinstance(value, kind):
                raise ValueError("wrong type")
            else:
                out.append(value)
        return out
    except InvalidArgument:
        raise
    except Exception:
        raise InvalidArgument("page_token is malformed; pass the next_page_token of the previous page as is") from None
