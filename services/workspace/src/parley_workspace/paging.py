"""Keyset pagination: opaque page tokens carrying the sort key of the last item returned."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from parley_kit.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class Page:
    size: int = DEFAULT_PAGE_SIZE
    after: tuple[Any, ...] | None = None

    @classmethod
    def parse(cls, size: int, token: str) -> Page:
        if size < 0 or size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE} (or 0 for {DEFAULT_PAGE_SIZE})")
        return cls(size or DEFAULT_PAGE_SIZE, decode_token(token) if token else None)


def encode_token(key: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[Any, ...]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not valid; pass the next_page_token of a previous response") from exc
    if not isinstance(value, list) or not value or not all(isinstance(v, str | int) for v in value):
        raise InvalidArgument("page_token is not valid; pass the next_page_token of a previous response")
    return tuple(value)


@dataclass(frozen=True)
class Paged(Generic[T]):
    items: list[T]
    next_token: str = ""
