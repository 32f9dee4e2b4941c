"""Property tests of value parsing: canonical forms round-trip, and junk never slips through."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from parley_contacts.domain import FieldType, format_value, parse_value
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
