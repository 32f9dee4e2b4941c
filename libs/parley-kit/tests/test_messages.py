"""NUL characters anywhere in a request are found and named before anything reaches a database."""

from __future__ import annotations

import pytest
from google.protobuf.struct_pb2 import ListValue, Struct, Value
from hypothesis import given
from hypothesis import strategies as st
from parley_kit.errors import InvalidArgument
from parley_kit.messages import find_nul, reject_nul


def _struct(**fields: Value) -> Struct:
    out = Struct()
    for key, value in fields.items():
        out.fields[key].CopyFrom(value)
    return out


def test_nul_is_named_by_its_path_in_maps_lists_and_nested_messages() -> None:
    clean = Value(list_value=ListValue(values=[Value(string_value="a"), Value(string_value="b")]))
    nested = Value(struct_value=_struct(inner=Value(list_value=ListValue(values=[Value(string_value="x\x00")]))))
    assert find_nul(_struct(ok=clean)) is None
    path = "fields['deep'].struct_value.fields['inner'].list_value.values[0].string_value"
    assert find_nul(_struct(ok=clean, deep=nested)) == path
    assert find_nul(Value(string_value="\x00")) == "string_value"
    keyed = Struct()
    keyed.fields["bad\x00key"].string_value = "fine"
    assert find_nul(keyed) == "fields (a key)"
    with pytest.raises(InvalidArgument, match=r"fields\['deep'\].* contains a NUL character"):
        reject_nul(_struct(deep=nested))


def test_skipped_top_level_fields_are_left_to_their_own_validation() -> None:
    message = Value(struct_value=_struct(hint=Value(string_value="\x00")))
    assert find_nul(message, skip=("struct_value",)) is None
    reject_nul(message, skip=("struct_value",))


@given(st.lists(st.text(), max_size=5))
def test_a_list_is_flagged_exactly_when_one_of_its_strings_holds_nul(texts: list[str]) -> None:
    message = ListValue(values=[Value(string_value=t) for t in texts])
    bad = [i for i, t in enumerate(texts) if "\x00" in t]
    assert find_nul(message) == (f"values[{bad[0]}].string_value" if bad else None)
