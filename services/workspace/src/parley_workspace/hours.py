"""Business hours: weekly ranges in a space's time zone, overridden by dated exceptions.

Pure functions, so they are easy to test exhaustively. Times are minutes after local midnight;
a range is [opens, closes), closes at most 1440 ("24:00").
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from parley_kit.errors import InvalidArgument

Range = tuple[int, int]
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, or InvalidArgument."""
    if not name or name != name.strip() or "\x00" in name:
        raise InvalidArgument(f"time zone '{name}' is not an IANA time zone name such as 'Europe/Paris' or 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(
            f"time zone '{name}' is not an IANA time zone name such as 'Europe/Paris' or 'UTC'"
        ) from exc


def parse_time(value: str, *, closing: bool = False) -> int:
    """ "HH:MM" to minutes; "24:00" only as a closing time."""
    match = _HHMM.match(value.strip())
    if not match:
        raise InvalidArgument(f"time '{value}' must be HH:MM (00:00 to 23:59, or 24:00 to close at midnight)")
    minutes = int(match.group(1)) * 60 + int(match.group(2))
    if minutes > 1440 or (minutes == 1440 and not closing):
        raise InvalidArgument(f"time '{value}' is out of range: 24:00 is only allowed as a closing time")
    return minutes


def format_time(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError as exc:
        raise InvalidArgument(f"date '{value}' must be YYYY-MM-DD") from exc


def normalise_ranges(ranges: Iterable[tuple[str, str]], where: str) -> list[Range]:
    """Parse and sort ranges; refuse empty, reversed or overlapping ones."""
    parsed = sorted((parse_time(o), parse_time(c, closing=True)) for o, c in ranges)
    for opens, closes in parsed:
        if closes <= opens:
            raise InvalidArgument(
                f"{where}: {format_time(opens)}-{format_time(closes)} closes before it opens; "
                "split a range that crosses midnight into two days"
            )
    for (o1, c1), (o2, c2) in itertools.pairwise(parsed):
        if o2 < c1:
            raise InvalidArgument(
                f"{where}: {format_time(o1)}-{format_time(c1)} overlaps {format_time(o2)}-{format_time(c2)}"
            )
    return parsed


@dataclass(frozen=True)
class Decision:
    open: bool
    local_time: dt.datetime
    exception_name: str = ""
    configured: bool = True


def is_open(
    at: dt.datetime,
    tz: ZoneInfo,
    weekly: Mapping[int, Sequence[Range]],
    exceptions: Mapping[dt.date, tuple[str, Sequence[Range]]],
) -> Decision:
    """Whether `at` (an aware instant) falls in business hours.

    `weekly` maps ISO weekdays (1 = Monday) to ranges; an exception for the local date replaces
    that day's ranges. With no weekly ranges at all, hours are not configured: open, unless an
    exception closes that date.
    """
    if at.tzinfo is None:
        raise ValueError("`at` must be timezone-aware")
    local = at.astimezone(tz)
    minute = local.hour * 60 + local.minute
    configured = any(weekly.get(day) for day in range(1, 8))
    exception = exceptions.get(local.date())
    if exception is not None:
        name, ranges = exception
        return Decision(any(o <= minute < c for o, c in ranges), local, name, configured)
    if not configured:
        return Decision(True, local, "", False)
    ranges = weekly.get(local.isoweekday(), ())
    return Decision(any(o <= minute < c for o, c in ranges), local, "", True)
