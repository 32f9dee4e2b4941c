"""Total readers for untrusted JSON: they never raise, and return values a protobuf field accepts."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from parley.channel_gateway.v1 import events_pb2 as ev
from parley.common.v1.common_pb2 import ChannelType

from .errors import InvalidEnvelope

JsonObject = dict[str, Any]

MAX_DEPTH = 64
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the end of protobuf's Timestamp range
_INT64_MAX = 2**63 - 1


def load_object(body: bytes | str, what: str) -> JsonObject:
    """Decode a webhook body that must be a JSON object, or raise InvalidEnvelope."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidEnvelope(f"{what} body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, over-long integers
        raise InvalidEnvelope(f"{what} body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidEnvelope(f"{what} body must be a JSON object, got {type(value).__name__}")
    # A body with at most MAX_DEPTH brackets cannot nest deeper (most webhooks): no walk.
    if _brackets(body) > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise InvalidEnvelope(f"{what} body is nested deeper than {MAX_DEPTH} levels")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _brackets(body: bytes | str) -> int:
    if isinstance(body, str):
        return body.count("{") + body.count("[")
    return body.count(b"{") + body.count(b"[")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def obj(value: Any) -> JsonObject:
    """`value` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def arr(value: Any) -> list[Any]:
    """`value` when it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def items(container: JsonObject, key: str) -> list[Any]:
    """The items under `key`: an array as is, a lone value as a one-item list, nothing when absent."""
    value = container.get(key)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def text(value: Any) -> str:
    """A string or integer as valid UTF-8 text; anything else as ""."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
            return value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def number(value: Any) -> float | None:
    """A finite number from a JSON number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        try:
            result = float(value)
        except (ValueError, OverflowError):
            return None
        return result if math.isfinite(result) else None
    return None


def integer(value: Any) -> int | None:
    """An int64 from a JSON integer, integral number or numeric string, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        result = value
    else:
        as_float = number(value)
        if as_float is None or not as_float.is_integer():
            return None
        result = int(as_float)
    return result if -_INT64_MAX <= result <= _INT64_MAX else None


def flag(value: Any) -> bool:
    """True only for JSON true."""
    return value is True


def epoch_ms(value: Any, *, seconds: bool) -> int | None:
    """Milliseconds since the epoch from a provider time (number, numeric string or ISO 8601), else None.

    `seconds` says the provider's unit for numbers. Times outside protobuf's Timestamp range are None.
    """
    amount = number(value)
    if amount is not None:
        ms = amount * 1000 if seconds else amount
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
            ms = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000
        except (ValueError, OverflowError):
            return None
    else:
        return None
    return round(ms) if 0 <= ms <= _MAX_MS else None


def timestamp(ms: int) -> Timestamp:
    """A protobuf Timestamp from epoch milliseconds (already range-checked by `epoch_ms`)."""
    result = Timestamp()
    result.FromMilliseconds(ms)
    return result


def raw_json(value: Any) -> str:
    """Compact JSON for the audit copy; escapes only when the text holds lone surrogates."""
    dumped = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        dumped.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    return dumped


def digest(*values: Any) -> str:
    """A stable short hash of JSON values: the id of last resort for items with no provider id."""
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def unique(*values: str) -> tuple[str, ...]:
    """The non-empty values, first occurrence kept."""
    return tuple(dict.fromkeys(v for v in values if v))


def joined_id(prefix: str, parts: Iterable[str], fallback: Any) -> str:
    """`prefix:part:part...` when no part is empty, else `prefix:h<digest of fallback>`."""
    parts = list(parts)
    if all(parts):
        return ":".join((prefix, *parts))
    return f"{prefix}:h{digest(fallback)}"


def new_event(
    channel_type: ChannelType.ValueType,
    kind: ev.InboundKind.ValueType,
    event_id: str,
    raw: Any,
    *,
    contact: str = "",
    at_ms: int | None = None,
    sequence: int | None = None,
) -> ev.InboundEvent:
    """An event with the fields every kind carries; `sequence` defaults to the provider time."""
    event = ev.InboundEvent(
        event_id=event_id,
        channel_type=channel_type,
        kind=kind,
        contact_external_id=contact,
        raw_json=raw_json(raw),
    )
    if at_ms is not None:
        event.provider_timestamp.CopyFrom(timestamp(at_ms))
    event.provider_sequence = sequence if sequence is not None else at_ms or 0
    return event


def full_name(*names: str) -> str:
    """The non-empty names joined by spaces."""
    return " ".join(name for name in names if name)


def text_part(value: str) -> ev.ContentPart:
    """A ContentPart holding text."""
    return ev.ContentPart(text=ev.TextPart(text=value))
