"""Domain types and rules of the contacts service: plain Python, no protobuf, gRPC, NATS or SQL.

Values cross the API as strings in canonical forms (number "12.5", date "2026-01-31",
datetime RFC 3339, checkbox "true"/"false"); `parse_value` validates a string against a
field type and returns the typed value, `format_value` turns it back.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from urllib.parse import urlparse

import phonenumbers
from parley_kit.errors import InvalidArgument


class FieldType(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    DATETIME = "datetime"
    CHECKBOX = "checkbox"
    LIST = "list"
    EMAIL = "email"
    PHONE = "phone"
    URL = "url"


# Standard contact fields, usable in criteria and CSV import; custom field keys may not shadow them.
STANDARD_FIELDS: dict[str, FieldType] = {
    "first_name": FieldType.TEXT,
    "last_name": FieldType.TEXT,
    "email": FieldType.EMAIL,
    "phone": FieldType.PHONE,
    "country": FieldType.TEXT,
    "language": FieldType.TEXT,
    "avatar_url": FieldType.URL,
}
# Names that are not profile fields but still may not be used as custom keys.
RESERVED_KEYS = frozenset(
    {
        *STANDARD_FIELDS,
        "id",
        "name",
        "full_name",
        "tags",
        "tag",
        "assignee",
        "assignee_user_id",
        "assignee_team_id",
        "created_at",
        "updated_at",
        "last_interaction_at",
        "last_interaction_channel_id",
        "channel",
        "space_id",
    }
)
TEXT_LIKE = frozenset({FieldType.TEXT, FieldType.LIST, FieldType.EMAIL, FieldType.PHONE, FieldType.URL})
ORDERED = frozenset({FieldType.NUMBER, FieldType.DATE, FieldType.DATETIME})

KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
MAX_LANGUAGE = 35  # the column's width (BCP 47 tags in practice are far shorter)
COUNTRY_RE = re.compile(r"^[A-Za-z]{2}$")
MAX_AVATAR_URL = 2000  # characters (no index holds it)
MAX_NAME = 200  # characters of a first or last name
# UTF-8 bytes of a text value that an index holds, as typed and lowercased (the larger). A custom value's
# entry in ix_field_values_text carries both forms and its contact's tags (up to MAX_TAGS_PER_CONTACT,
# 16 bytes each): 2 x 500 + 100 x 16 + the rest stays under PostgreSQL's 2704-byte btree entry limit.
# Names and email are held twice in the contacts' search indexes and take the same bound.
MAX_TEXT_BYTES = 500
MAX_TAGS_PER_CONTACT = 100
# Numbers: at most this many digits before the decimal point and after it (PostgreSQL's numeric goes much
# further, but a value that prints as thousands of digits is a mistake, not a measurement).
MAX_NUMBER_DIGITS = 38
# Days a date or datetime (in UTC) may fall on: Python's range less its first and last day, because the
# driver (asyncpg) writes date.min / datetime.min and date.max / datetime.max as -infinity / infinity.
FIRST_DAY, LAST_DAY = date(1, 1, 2), date(9999, 12, 30)
DAY_RANGE = f"{FIRST_DAY} to {LAST_DAY}"


# -- values ---------------------------------------------------------------------------------------


def _fail(name: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"field '{name}': {reason}")


def _shown(raw: str) -> str:
    """`raw` as quoted in an error message: long input is cut, not echoed whole."""
    return raw if len(raw) <= 60 else raw[:57] + "..."


def check_text(what: str, raw: str) -> None:
    """InvalidArgument naming `what` unless `raw` can be stored as PostgreSQL text (no NUL, valid UTF-8)."""
    if "\x00" in raw:
        raise InvalidArgument(f"{what} contains a NUL character (\\x00), which cannot be stored; remove it")
    try:
        raw.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid Unicode text (it holds a lone surrogate)") from None


def _check_indexed(name: str, raw: str) -> None:
    size = max(len(raw.encode()), len(raw.lower().encode()))
    if size > MAX_TEXT_BYTES:
        raise _fail(
            name,
            f"is {size} bytes long in UTF-8; at most {MAX_TEXT_BYTES} are allowed "
            "(a character takes 1 byte in ASCII, 2-3 in most scripts, 4 for emoji)",
        )


def normalize_phone(raw: str, region: str | None = None) -> str:
    """E.164 form of `raw`; ValueError when it is not a possible phone number."""
    try:
        number = phonenumbers.parse(raw, (region or "").upper() or None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(
            f"'{_shown(raw)}' is not a phone number ({exc}); use the international form, e.g. +33612345678"
        ) from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError(
            f"'{_shown(raw)}' is not a possible phone number; use the international form, e.g. +33612345678"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_datetime(raw: str) -> datetime:
    """An aware datetime in UTC; ValueError when `raw` is not RFC 3339 with an offset, or falls outside
    DAY_RANGE once in UTC."""
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("it is not an ISO 8601 date and time") from None
    if value.tzinfo is None:
        raise ValueError("a datetime needs a UTC offset, e.g. 2026-01-31T09:30:00Z")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        value = None
    if value is None or not in_day_range(value):
        raise ValueError(f"it falls outside {DAY_RANGE} in UTC")
    return value


def in_day_range(value: date) -> bool:
    """Whether a date, or a UTC datetime, falls on a day the database stores as itself (DAY_RANGE)."""
    day = value.date() if isinstance(value, datetime) else value
    return FIRST_DAY <= day <= LAST_DAY


def _number(name: str, raw: str) -> Decimal:
    try:
        number = Decimal(raw)
    except InvalidOperation:
        raise _fail(name, f"'{_shown(raw)}' is not a number (e.g. 42 or -3.5)") from None
    if not number.is_finite():
        raise _fail(name, f"'{_shown(raw)}' is not a finite number")
    # Exact arithmetic on the digits: the context's 28-digit precision would round, and its exponent
    # limits would raise, before a bound could be checked.
    sign, digits, exponent = number.as_tuple()
    text = "".join(map(str, digits)).rstrip("0")
    if not text:
        return Decimal(0)
    exponent += len(digits) - len(text)  # type: ignore[operator]
    if len(text) + exponent > MAX_NUMBER_DIGITS or -exponent > MAX_NUMBER_DIGITS:  # type: ignore[operator]
        raise _fail(
            name,
            f"'{_shown(raw)}' is out of range: a number has at most {MAX_NUMBER_DIGITS} digits before the "
            f"decimal point and {MAX_NUMBER_DIGITS} after it",
        )
    return Decimal((sign, tuple(map(int, text)), exponent))


def parse_value(name: str, ftype: FieldType, raw: str, options: tuple[str, ...] = (), region: str | None = None) -> Any:
    """The typed value of `raw` for a field of type `ftype`, or InvalidArgument naming the field and reason.

    Every value returned can be stored as a custom value and reads back equal: text-like values fit their
    index entry (MAX_TEXT_BYTES), numbers MAX_NUMBER_DIGITS, dates and datetimes (in UTC) DAY_RANGE.
    """
    check_text(f"field '{name}'", raw)
    raw = raw.strip()
    if ftype in TEXT_LIKE:
        _check_indexed(name, raw)
    if ftype is FieldType.TEXT:
        return raw
    if ftype is FieldType.NUMBER:
        return _number(name, raw)
    if ftype is FieldType.DATE:
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise _fail(name, f"'{_shown(raw)}' is not a date; use YYYY-MM-DD") from None
        if not in_day_range(day):
            raise _fail(name, f"'{_shown(raw)}' falls outside {DAY_RANGE}")
        return day
    if ftype is FieldType.DATETIME:
        try:
            return parse_datetime(raw)
        except ValueError as exc:
            raise _fail(
                name, f"'{_shown(raw)}' is not a datetime ({exc}); use RFC 3339, e.g. 2026-01-31T09:30:00Z"
            ) from None
    if ftype is FieldType.CHECKBOX:
        lowered = raw.lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise _fail(name, f"'{_shown(raw)}' is not a checkbox value; use true or false")
    if ftype is FieldType.LIST:
        for option in options:
            if option.lower() == raw.lower():
                return option
        shown = list(options[:10]) + (["..."] if len(options) > 10 else [])
        raise _fail(name, f"'{_shown(raw)}' is not one of the options {shown}")
    if ftype is FieldType.EMAIL:
        if not EMAIL_RE.match(raw):
            raise _fail(name, f"'{_shown(raw)}' is not an email address (name@example.com)")
        return raw
    if ftype is FieldType.PHONE:
        try:
            return normalize_phone(raw, region)
        except ValueError as exc:
            raise _fail(name, str(exc)) from None
    if ftype is FieldType.URL:
        return _url(name, raw)
    raise _fail(name, f"unknown type '{ftype}'")


def _url(name: str, raw: str) -> str:
    try:
        parsed = urlparse(raw)
        valid = parsed.scheme in ("http", "https") and bool(parsed.netloc)
    except ValueError:  # e.g. a malformed IPv6 host
        valid = False
    if not valid:
        raise _fail(name, f"'{_shown(raw)}' is not an http(s) URL")
    return raw


def format_value(ftype: FieldType, value: Any) -> str:
    """The canonical string form of a typed value ('' for None)."""
    if value is None:
        return ""
    if ftype is FieldType.CHECKBOX:
        return "true" if value else "false"
    if ftype is FieldType.NUMBER:
        # Exact: normalize() would round to the context's 28 digits.
        text = format(Decimal(value), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    if ftype is FieldType.DATETIME:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if ftype is FieldType.DATE:
        return value.isoformat()
    return str(value)


def clean_standard(name: str, raw: str | None, country: str | None = None) -> str | None:
    """Validate and normalize one standard field; '' or None clears it."""
    if raw is None:
        return None
    check_text(f"field '{name}'", raw)
    raw = raw.strip()
    if not raw:
        return None
    if name in ("first_name", "last_name"):
        if len(raw) > MAX_NAME:
            raise _fail(name, f"is longer than {MAX_NAME} characters")
        _check_indexed(name, raw)
        return raw
    if name == "country":
        if not COUNTRY_RE.match(raw):
            raise _fail(name, f"'{_shown(raw)}' is not an ISO 3166 alpha-2 country code (e.g. FR)")
        return raw.upper()
    if name == "language":
        if len(raw) > MAX_LANGUAGE or not LANGUAGE_RE.match(raw):
            raise _fail(
                name, f"'{_shown(raw)}' is not a language tag (e.g. en or pt-BR; at most {MAX_LANGUAGE} characters)"
            )
        return raw
    if name == "avatar_url":  # not indexed: longer than a text value may be
        if len(raw) > MAX_AVATAR_URL:
            raise _fail(name, f"is {len(raw)} characters long; at most {MAX_AVATAR_URL} are allowed")
        return _url(name, raw)
    value = parse_value(name, STANDARD_FIELDS[name], raw, region=country)
    return str(value)


def new_id(at: datetime | None = None) -> uuid.UUID:
    """A time-ordered UUID (version 7: 48-bit Unix milliseconds, then random bits).

    Contacts get these ids so that rows keyed by contact id (tags, values, identities) are laid out
    in creation order: walking the newest contacts probes neighbouring index pages instead of random
    ones across the whole index.
    """
    ms = int((at or datetime.now(UTC)).timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    id: uuid.UUID
    channel_id: str
    channel_type: int
    external_id: str
    created_at: datetime


@dataclass(frozen=True)
class FieldDef:
    id: uuid.UUID
    key: str
    label: str
    description: str
    type: FieldType
    options: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Tag:
    id: uuid.UUID
    name: str
    color: str
    description: str
    created_at: datetime


@dataclass(frozen=True)
class Contact:
    id: uuid.UUID
    space_id: str
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    country: str | None
    language: str | None
    avatar_url: str | None
    assignee_user_id: str | None
    assignee_team_id: str | None
    tag_ids: tuple[uuid.UUID, ...]
    created_at: datetime
    updated_at: datetime
    last_interaction_at: datetime | None
    last_interaction_channel_id: str | None
    last_interaction_channel_type: int
    identities: tuple[Identity, ...] = ()
    # Custom field values by field id, typed.
    values: dict[uuid.UUID, Any] = field(default_factory=dict)

    def standard(self, name: str) -> str | None:
        return getattr(self, name)


@dataclass(frozen=True)
class View:
    id: uuid.UUID
    space_id: str
    name: str
    owner: str
    shared: bool
    criteria: Group
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Change:
    """One changed attribute: its name and canonical string forms before and after."""

    field: str
    old: str
    new: str


# -- criteria -------------------------------------------------------------------------------------


class TagMatch(StrEnum):
    ANY = "any"
    ALL = "all"
    NONE = "none"


class FieldOp(StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    GREATER_THAN = "greater_than"
    LESS_THAN = "less_than"
    BETWEEN = "between"
    IS_SET = "is_set"
    IS_NOT_SET = "is_not_set"


class AssigneeMatch(StrEnum):
    ME = "me"
    UNASSIGNED = "unassigned"
    USER = "user"
    TEAM = "team"


class TimeOp(StrEnum):
    WITHIN = "within"  # within the last `seconds`
    BEFORE = "before"  # before `at`, or more than `seconds` ago


class TimeTarget(StrEnum):
    LAST_INTERACTION = "last_interaction"
    CREATED = "created"


@dataclass(frozen=True)
class TagCond:
    match: TagMatch
    tag_ids: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class FieldCond:
    """A condition on a standard field (by name) or a custom field (by key, or by id when `field_id` is set).

    With `field_id`, the id names the field and `field` is the key as last seen (quoted in errors):
    saved criteria carry the id so that renaming a key neither breaks them nor hands them to a new
    field given the old key.
    """

    field: str
    op: FieldOp
    values: tuple[str, ...] = ()
    field_id: uuid.UUID | None = None


@dataclass(frozen=True)
class ChannelCond:
    """The contact has an identity on one of the channels (by id) or of one of the channel types."""

    channel_ids: tuple[str, ...] = ()
    channel_types: tuple[int, ...] = ()


@dataclass(frozen=True)
class AssigneeCond:
    match: AssigneeMatch
    id: str = ""


@dataclass(frozen=True)
class TimeCond:
    target: TimeTarget
    op: TimeOp
    seconds: int = 0
    at: datetime | None = None


Cond = TagCond | FieldCond | ChannelCond | AssigneeCond | TimeCond


@dataclass(frozen=True)
class Group:
    """AND/OR over conditions and nested groups. An empty group matches every contact."""

    any: bool  # False: AND, True: OR
    children: tuple[Group | Cond, ...] = ()


MAX_CRITERIA_DEPTH = 5
MAX_CRITERIA_CONDITIONS = 50
MAX_CRITERIA_GROUPS = 50  # groups, empty ones included (the root counts)
# Values of one condition (field values, tag ids, channel ids, channel types). Each may be a bind
# parameter: 50 conditions of 100 stay far below the driver's 32,767 parameters per statement.
MAX_CRITERIA_VALUES = 100
# The longest relative window ("within"/"before" a duration): 100 years of 365.25 days.
MAX_CRITERIA_SECONDS = 3_155_760_000


# Resolved criteria: what the repository compiles and the reference filter evaluates. Field
# conditions carry the resolved field (standard name or custom definition) and typed operands.
@dataclass(frozen=True)
class ResolvedField:
    name: str  # the key in the criteria
    type: FieldType
    field_id: uuid.UUID | None  # None for a standard field
    operands: tuple[Any, ...]
    op: FieldOp


@dataclass(frozen=True)
class ResolvedAssignee:
    unassigned: bool = False
    user_id: str | None = None
    team_id: str | None = None


@dataclass(frozen=True)
class ResolvedTime:
    target: TimeTarget
    op: TimeOp
    bound: datetime  # WITHIN: value >= bound; BEFORE: value < bound


ResolvedCond = TagCond | ResolvedField | ChannelCond | ResolvedAssignee | ResolvedTime


@dataclass(frozen=True)
class ResolvedGroup:
    any: bool
    children: tuple[ResolvedGroup | ResolvedCond, ...] = ()


ALLOWED_OPS: dict[FieldType, frozenset[FieldOp]] = {
    **{
        t: frozenset(
            {
                FieldOp.EQUALS,
                FieldOp.NOT_EQUALS,
                FieldOp.CONTAINS,
                FieldOp.STARTS_WITH,
                FieldOp.IS_SET,
                FieldOp.IS_NOT_SET,
            }
        )
        for t in (FieldType.TEXT, FieldType.EMAIL, FieldType.PHONE, FieldType.URL)
    },
    FieldType.LIST: frozenset({FieldOp.EQUALS, FieldOp.NOT_EQUALS, FieldOp.IS_SET, FieldOp.IS_NOT_SET}),
    **{
        t: frozenset(
            {
                FieldOp.EQUALS,
                FieldOp.NOT_EQUALS,
                FieldOp.GREATER_THAN,
                FieldOp.LESS_THAN,
                FieldOp.BETWEEN,
                FieldOp.IS_SET,
                FieldOp.IS_NOT_SET,
            }
        )
        for t in ORDERED
    },
    FieldType.CHECKBOX: frozenset({FieldOp.EQUALS, FieldOp.NOT_EQUALS, FieldOp.IS_SET, FieldOp.IS_NOT_SET}),
}


def resolve_criteria(
    group: Group,
    *,
    fields: dict[str, FieldDef],
    tag_ids: set[uuid.UUID],
    me: str | None,
    now: datetime,
    check_tags: bool = True,
) -> ResolvedGroup:
    """Validate criteria against the space's fields and tags; InvalidArgument names the first problem.

    `me` is the calling user's id (for the assignee "me"); `now` anchors relative time windows.
    """
    count = groups = 0

    def walk(node: Group | Cond, depth: int, path: str) -> ResolvedGroup | ResolvedCond:
        nonlocal count, groups
        if isinstance(node, Group):
            if depth > MAX_CRITERIA_DEPTH:
                raise InvalidArgument(f"criteria {path}: groups nest deeper than {MAX_CRITERIA_DEPTH} levels")
            groups += 1
            if groups > MAX_CRITERIA_GROUPS:
                raise InvalidArgument(f"criteria: more than {MAX_CRITERIA_GROUPS} groups")
            return ResolvedGroup(
                node.any, tuple(walk(c, depth + 1, f"{path}.{i}") for i, c in enumerate(node.children))
            )
        count += 1
        if count > MAX_CRITERIA_CONDITIONS:
            raise InvalidArgument(f"criteria: more than {MAX_CRITERIA_CONDITIONS} conditions")
        where = f"criteria {path}"
        _check_size(node, where)
        if isinstance(node, TagCond):
            if not node.tag_ids:
                raise InvalidArgument(f"{where}: a tag condition needs at least one tag id")
            if check_tags:
                unknown = [str(t) for t in node.tag_ids if t not in tag_ids]
                if unknown:
                    raise InvalidArgument(f"{where}: unknown tag id(s) {', '.join(unknown)}")
            return node
        if isinstance(node, FieldCond):
            return _resolve_field(node, fields, where)
        if isinstance(node, ChannelCond):
            if not node.channel_ids and not node.channel_types:
                raise InvalidArgument(f"{where}: a channel condition needs channel ids or channel types")
            return node
        if isinstance(node, AssigneeCond):
            if node.match is AssigneeMatch.UNASSIGNED:
                return ResolvedAssignee(unassigned=True)
            if node.match is AssigneeMatch.ME:
                # Without a user (a service token), "me" matches nobody rather than everybody.
                return ResolvedAssignee(user_id=me or "")
            if not node.id:
                raise InvalidArgument(f"{where}: assignee '{node.match}' needs an id")
            if node.match is AssigneeMatch.USER:
                return ResolvedAssignee(user_id=node.id)
            return ResolvedAssignee(team_id=node.id)
        if isinstance(node, TimeCond):
            if node.seconds > MAX_CRITERIA_SECONDS:
                raise InvalidArgument(
                    f"{where}: a duration of {node.seconds} seconds is longer than the maximum of "
                    f"{MAX_CRITERIA_SECONDS} (100 years)"
                )
            if node.op is TimeOp.WITHIN:
                if node.seconds <= 0:
                    raise InvalidArgument(f"{where}: 'within' needs a positive duration")
                return ResolvedTime(node.target, node.op, now - timedelta(seconds=node.seconds))
            if node.at is not None:
                return ResolvedTime(node.target, node.op, node.at)
            if node.seconds <= 0:
                raise InvalidArgument(f"{where}: 'before' needs a time or a positive duration ago")
            return ResolvedTime(node.target, node.op, now - timedelta(seconds=node.seconds))
        raise InvalidArgument(f"{where}: empty condition")

    root = walk(group, 1, "root")
    assert isinstance(root, ResolvedGroup)
    return root


def _check_size(node: Cond, where: str) -> None:
    sizes = {
        "values": len(node.values) if isinstance(node, FieldCond) else 0,
        "tag ids": len(node.tag_ids) if isinstance(node, TagCond) else 0,
        "channel ids": len(node.channel_ids) if isinstance(node, ChannelCond) else 0,
        "channel types": len(node.channel_types) if isinstance(node, ChannelCond) else 0,
    }
    for what, size in sizes.items():
        if size > MAX_CRITERIA_VALUES:
            raise InvalidArgument(f"{where}: {size} {what}; a condition takes at most {MAX_CRITERIA_VALUES}")


def _resolve_field(cond: FieldCond, fields: dict[str, FieldDef], where: str) -> ResolvedField:
    definition = _custom_field(cond, fields)
    if definition is not None:
        name, ftype, field_id, options = definition.key, definition.type, definition.id, definition.options
    elif cond.field_id is not None:
        raise InvalidArgument(
            f"{where}: custom field '{cond.field}' (id {cond.field_id}) no longer exists in this space"
            " (deleted); edit the condition"
        )
    elif cond.field in STANDARD_FIELDS:
        name, ftype, field_id, options = cond.field, STANDARD_FIELDS[cond.field], None, ()
    else:
        raise InvalidArgument(
            f"{where}: unknown field '{cond.field}' (neither a standard field nor a custom field key)"
        )
    if cond.op not in ALLOWED_OPS[ftype]:
        allowed = ", ".join(sorted(ALLOWED_OPS[ftype]))
        raise InvalidArgument(f"{where}: operator '{cond.op}' does not apply to {ftype} field '{name}' ({allowed})")
    arity = {FieldOp.IS_SET: 0, FieldOp.IS_NOT_SET: 0, FieldOp.BETWEEN: 2}.get(cond.op)
    values = cond.values
    if arity is not None and len(values) != arity:
        raise InvalidArgument(f"{where}: '{cond.op}' on '{name}' takes {arity} value(s), got {len(values)}")
    if arity is None:
        multi = cond.op in (FieldOp.EQUALS, FieldOp.NOT_EQUALS)
        if not values or (not multi and len(values) != 1):
            want = "one or more values" if multi else "exactly one value"
            raise InvalidArgument(f"{where}: '{cond.op}' on '{name}' takes {want}, got {len(values)}")
    operands: tuple[Any, ...]
    if cond.op in (FieldOp.CONTAINS, FieldOp.STARTS_WITH):
        if not values[0]:
            raise InvalidArgument(f"{where}: '{cond.op}' on '{name}' needs a non-empty value")
        if ftype is FieldType.PHONE:
            operands = (_phone_fragment(values[0], cond.op, f"{where}: '{cond.op}' on phone field '{name}'"),)
        else:
            operands = (values[0].lower(),)
    elif ftype is FieldType.TEXT:
        operands = tuple(v.strip().lower() for v in values)  # equality on text is case-insensitive
    else:
        # Whole values: read like stored ones (list options, E.164 phones, valid emails and URLs, typed
        # numbers and dates), so an operand no value can equal is refused rather than never matching.
        try:
            operands = tuple(parse_value(name, ftype, v, options) for v in values)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc.message}") from None
        if ftype in TEXT_LIKE:
            operands = tuple(str(v).lower() for v in operands)
        if cond.op is FieldOp.BETWEEN and operands[0] > operands[1]:
            raise InvalidArgument(f"{where}: 'between' on '{name}' needs the lower bound first")
    return ResolvedField(name, ftype, field_id, operands, cond.op)


_PHONE_FORMATTING = frozenset(" -.()/\u00a0")


def _phone_fragment(raw: str, op: FieldOp, what: str) -> str:
    """A phone CONTAINS/STARTS_WITH operand as it appears in stored E.164 numbers.

    Formatting (spaces, dashes, dots, parentheses, slashes) is dropped. STARTS_WITH reads from the
    country code, with or without '+' ("+33 6" and "336" both give "+336"). A '+' may only lead: on
    CONTAINS it pins the digits to the country code ("+33" matches +33..., not +1 333...); without
    it the digits may be anywhere.
    """
    text = raw.strip()
    plus = text.startswith("+")
    body = text[1:] if plus else text
    digits = phonenumbers.normalize_digits_only(body)
    if not digits or any(not (ch.isdecimal() or ch in _PHONE_FORMATTING) for ch in body):
        raise InvalidArgument(f"{what}: '{raw}' is not part of a phone number; give digits (e.g. 612 or +33 6)")
    return "+" + digits if plus or op is FieldOp.STARTS_WITH else digits


def _custom_field(cond: FieldCond, fields: dict[str, FieldDef]) -> FieldDef | None:
    """The custom field a condition names: by id when it carries one, else by key (None if none)."""
    if cond.field_id is None:
        return fields.get(cond.field)
    return next((d for d in fields.values() if d.id == cond.field_id), None)


def name_fields_by_id(group: Group, fields: dict[str, FieldDef]) -> Group:
    """The criteria with every custom-field condition carrying its field's id and current key.

    This is the form to store: it keeps naming the same fields when keys are renamed. Conditions
    naming no existing custom field (standard fields, unknown keys, deleted ids) are left as they are.
    """

    def name(node: Group | Cond) -> Group | Cond:
        if isinstance(node, Group):
            return replace(node, children=tuple(name(c) for c in node.children))
        if not isinstance(node, FieldCond) or (definition := _custom_field(node, fields)) is None:
            return node
        return replace(node, field=definition.key, field_id=definition.id)

    return replace(group, children=tuple(name(c) for c in group.children))


# JSON form of criteria, as stored with a view (and used by the CLI's --criteria).


def criteria_to_json(node: Group | Cond) -> dict[str, Any]:
    if isinstance(node, Group):
        return {"any" if node.any else "all": [criteria_to_json(c) for c in node.children]}
    if isinstance(node, TagCond):
        return {"tags": {"match": str(node.match), "ids": [str(t) for t in node.tag_ids]}}
    if isinstance(node, FieldCond):
        spec: dict[str, Any] = {"name": node.field, "op": str(node.op), "values": list(node.values)}
        return {"field": spec if node.field_id is None else {**spec, "id": str(node.field_id)}}
    if isinstance(node, ChannelCond):
        return {"channel": {"ids": list(node.channel_ids), "types": list(node.channel_types)}}
    if isinstance(node, AssigneeCond):
        return {"assignee": {"match": str(node.match), "id": node.id}}
    if isinstance(node, TimeCond):
        body: dict[str, Any] = {"op": str(node.op), "seconds": node.seconds}
        if node.at is not None:
            body["at"] = node.at.isoformat()
        return {str(node.target): body}
    raise TypeError(node)


def criteria_from_json(data: dict[str, Any]) -> Group | Cond:
    """Parse the JSON form; InvalidArgument on anything malformed."""
    try:
        return _from_json(data)
    except InvalidArgument:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise InvalidArgument(f"malformed criteria: {exc!r}") from None


def _from_json(data: dict[str, Any]) -> Group | Cond:
    if not isinstance(data, dict) or len(data) != 1:
        raise InvalidArgument("malformed criteria: each node is an object with exactly one key")
    ((kind, body),) = data.items()
    if kind in ("all", "any"):
        if not isinstance(body, list):
            raise InvalidArgument(f"malformed criteria: '{kind}' takes a list")
        return Group(any=kind == "any", children=tuple(_from_json(c) for c in body))
    if kind == "tags":
        return TagCond(TagMatch(body["match"]), tuple(uuid.UUID(str(t)) for t in body["ids"]))
    if kind == "field":
        field_id = uuid.UUID(str(body["id"])) if body.get("id") else None
        values = tuple(str(v) for v in body.get("values", []))
        return FieldCond(body["name"], FieldOp(body["op"]), values, field_id)
    if kind == "channel":
        return ChannelCond(tuple(body.get("ids", [])), tuple(int(t) for t in body.get("types", [])))
    if kind == "assignee":
        return AssigneeCond(AssigneeMatch(body["match"]), body.get("id", ""))
    if kind in ("last_interaction", "created"):
        at = parse_datetime(body["at"]) if body.get("at") else None
        return TimeCond(TimeTarget(kind), TimeOp(body["op"]), int(body.get("seconds", 0)), at)
    raise InvalidArgument(f"malformed criteria: unknown node '{kind}'")


def referenced_tags(node: Group | Cond) -> set[uuid.UUID]:
    """Every tag id the criteria name."""
    if isinstance(node, Group):
        return set().union(*(referenced_tags(c) for c in node.children)) if node.children else set()
    return set(node.tag_ids) if isinstance(node, TagCond) else set()


def as_group(node: Group | Cond) -> Group:
    return node if isinstance(node, Group) else Group(any=False, children=(node,))


def without_tags(group: ResolvedGroup, gone: set[uuid.UUID]) -> ResolvedGroup:
    """`group` with the tags in `gone` (deleted) matching no contact: dropped from any-of and none-of
    conditions (an any-of left empty matches nobody, a none-of left empty everybody); an all-of naming
    one matches nobody."""
    if not gone:
        return group

    def walk(node: ResolvedGroup | ResolvedCond) -> ResolvedGroup | ResolvedCond:
        if isinstance(node, ResolvedGroup):
            return ResolvedGroup(node.any, tuple(walk(c) for c in node.children))
        if not isinstance(node, TagCond) or not gone.intersection(node.tag_ids):
            return node
        if node.match is TagMatch.ALL:
            return TagCond(TagMatch.ANY, ())
        return TagCond(node.match, tuple(t for t in node.tag_ids if t not in gone))

    return ResolvedGroup(group.any, tuple(walk(c) for c in group.children))
