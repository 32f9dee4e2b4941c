"""Property tests of value parsing: canonical forms round-trip, junk never slips through, and what is
accepted is stored by PostgreSQL as itself."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parley_contacts.domain import (
    MAX_TAGS_PER_CONTACT,
    MAX_TEXT_BYTES,
    TEXT_LIKE,
    FieldType,
    format_value,
    parse_value,
)
from parley_contacts.repository import Repository
from parley_contacts.service import Actor, ContactsService
from parley_kit.db import create_engine, run_migrations, session_factory
from parley_kit.errors import InvalidArgument

finite = st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**12), max_value=10**12)
aware = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=3))])
)


@given(finite)
def test_numbers_round_trip_through_their_canonical_form(value: Decimal) -> None:
    parsed = parse_value("n", FieldType.NUMBER, str(value))
    assert parse_value("n", FieldType.NUMBER, format_value(FieldType.NUMBER, parsed)) == parsed == value


@given(aware)
def test_datetimes_round_trip_and_are_stored_in_utc(value) -> None:
    parsed = parse_value("d", FieldType.DATETIME, value.isoformat())
    assert parsed == value and parsed.utcoffset() == timedelta(0)
    assert format_value(FieldType.DATETIME, parsed).endswith("Z")
    assert parse_value("d", FieldType.DATETIME, format_value(FieldType.DATETIME, parsed)) == parsed


@given(st.dates())
def test_dates_round_trip(value) -> None:
    assert parse_value("d", FieldType.DATE, format_value(FieldType.DATE, value)) == value


@given(st.text(alphabet="abcxyz!?#%, ", min_size=1, max_size=12))
def test_non_numeric_text_is_never_a_number(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="field 'n'"):
        parse_value("n", FieldType.NUMBER, raw)


@given(st.sampled_from(["+33612345678", "+14155552671", "+447911123456", "+5511987654321"]))
def test_phone_normalization_is_idempotent(raw: str) -> None:
    once = parse_value("p", FieldType.PHONE, raw)
    assert parse_value("p", FieldType.PHONE, once) == once == raw


# -- edge input: any text is refused, or parses to a value the database stores and gives back ------------

OPTIONS = ("Gold", "Silver", "Ünïcode 🙂")
OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=14)), timezone(timedelta(hours=23, minutes=59))]
)
EDGES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+00:30",
    "0001-01-02T00:00:00Z",
    "9999-12-30T23:59:59.999999Z",
    "9999-12-31T23:59:59-00:30",
    "0001-01-01",
    "0001-01-02",
    "9999-12-30",
    "9999-12-31",
    "1e131072",
    "-0E-1000000",
    "1e-38",
    "1e38",
    "9" * 38 + "." + "9" * 38,
    "gold",
    "SILVER",
    "ünïcode 🙂",
    "true",
    "No",
    "+33612345678",
    "a@b.co",
    "https://example.com/p?q=1",
    "http://[::1",
]
JUNK = st.one_of(
    st.text(max_size=40),  # anything, NUL and control characters included
    st.text(max_size=20).map(lambda t: t + "\x00"),
    st.text(alphabet=st.characters(min_codepoint=0x80), min_size=120, max_size=260),  # long multi-byte text
    st.builds(lambda m, e: f"{m}e{e}", st.integers(-(10**45), 10**45), st.integers(-200_000, 200_000)),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.datetimes(timezones=OFFSETS).map(lambda d: d.isoformat()),  # years 1-9999 with any offset
    st.dates().map(str),
    st.sampled_from(EDGES),
)
# Values most of which parse, so that a few dozen examples store a few dozen values.
LIKELY = {
    FieldType.TEXT: st.one_of(
        st.text(max_size=120), st.text(alphabet=st.characters(min_codepoint=0x10000), min_size=110, max_size=125)
    ),
    FieldType.NUMBER: st.builds(lambda m, e: f"{m}e{e}", st.integers(-(10**37), 10**37), st.integers(-38, 0)),
    FieldType.DATE: st.dates(min_value=date(1, 1, 2), max_value=date(9999, 12, 30)).map(str),
    FieldType.DATETIME: st.datetimes(
        min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 29), timezones=OFFSETS
    ).map(lambda d: d.isoformat()),
    FieldType.CHECKBOX: st.sampled_from(["true", "False", "yes", "0"]),
    FieldType.LIST: st.sampled_from(OPTIONS).map(str.upper),
    FieldType.EMAIL: st.emails(),
    FieldType.PHONE: st.sampled_from(["+33612345678", "+14155552671", "447911123456"]),
    FieldType.URL: st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60).map(
        lambda p: "https://example.com/" + p
    ),
}


def _storable(ftype: FieldType, value: Any) -> bool:
    """Whether PostgreSQL (through asyncpg) stores `value` as itself in the column and index of its type."""
    if ftype in TEXT_LIKE:
        size = max(len(value.encode()), len(value.lower().encode()))
        return isinstance(value, str) and "\x00" not in value and size <= MAX_TEXT_BYTES
    if ftype is FieldType.NUMBER:
        _, digits, exponent = value.as_tuple()
        return value.is_finite() and len(digits) + exponent <= 131_072 and -exponent <= 16_383
    if ftype is FieldType.DATE:
        return type(value) is date and date.min < value < date.max  # the driver's infinities
    if ftype is FieldType.DATETIME:
        return value.utcoffset() == timedelta(0) and datetime.min < value.replace(tzinfo=None) < datetime.max
    return isinstance(value, bool)


@settings(max_examples=400)
@given(st.sampled_from(list(FieldType)), JUNK)
def test_any_text_is_refused_or_parses_to_a_storable_value_that_round_trips(ftype: FieldType, raw: str) -> None:
    try:
        value = parse_value("f", ftype, raw, OPTIONS)
    except InvalidArgument as exc:
        assert exc.message.startswith("field 'f'") and len(exc.message) < 400
        return
    assert _storable(ftype, value), value
    assert parse_value("f", ftype, format_value(ftype, value), OPTIONS) == value


def test_accepted_values_are_stored_by_postgresql_and_read_back_equal(database_url: str) -> None:
    """Generated values that parse are written through the service as custom values of a contact with the
    most tags allowed (the largest index entries), and read back equal."""

    async def nowhere(session: Any, event: Any) -> None:
        return None

    with asyncio.Runner() as runner:
        runner.run(run_migrations("parley_contacts", database_url))
        engine = create_engine(database_url, pool_size=2)
        service = ContactsService(Repository(session_factory(engine), nowhere))
        actor, space = Actor(subject="user:u1", user_id="u1"), "sp_values"

        async def setup() -> tuple[str, dict[FieldType, uuid.UUID]]:
            fields = {
                t: (await service.create_field(space, f"f_{t}", str(t), t, options=OPTIONS if t == "list" else ())).id
                for t in FieldType
            }
            tags = [str((await service.create_tag(space, f"t{i}")).id) for i in range(MAX_TAGS_PER_CONTACT)]
            contact = await service.create_contact(space, actor, {"first_name": "Ana"}, tag_ids=tags)
            return str(contact.id), fields

        contact_id, fields = runner.run(setup())
        stored: list[FieldType] = []

        @settings(max_examples=60, deadline=None)
        @given(st.data())
        def store(data: st.DataObject) -> None:
            ftype = data.draw(st.sampled_from(list(FieldType)))
            raw = data.draw(JUNK if data.draw(st.integers(0, 3)) == 0 else LIKELY[ftype])  # mostly likely ones
            try:
                expected = parse_value("f", ftype, raw, OPTIONS) if raw.strip() else None  # '' clears
            except InvalidArgument:
                return
            runner.run(service.update_contact(space, actor, contact_id, {}, {f"f_{ftype}": raw}))
            got, _ = runner.run(service.get_contact(space, contact_id))
            assert got.values.get(fields[ftype]) == expected and len(got.tag_ids) == MAX_TAGS_PER_CONTACT
            stored.append(ftype)

        try:
            store()
        finally:
            runner.run(engine.dispose())
        assert len(stored) >= 20
