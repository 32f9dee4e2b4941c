"""Property tests: whatever the body, a parser returns well-formed events or raises InvalidEnvelope, nothing else."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parley_channel_gateway.inbound import (
    InvalidEnvelope,
    ParsedItem,
    parse_custom,
    parse_instagram,
    parse_line,
    parse_messenger,
    parse_meta,
    parse_telegram,
    parse_whatsapp,
)

FIXTURES = Path(__file__).parent / "fixtures"
PARSERS: dict[str, Callable[[bytes | str], list[ParsedItem]]] = {
    "messenger": parse_messenger,
    "instagram": parse_instagram,
    "meta": parse_meta,
    "whatsapp": parse_whatsapp,
    "telegram": partial(parse_telegram, channel_id="ch_prop"),
    "custom": partial(parse_custom, channel_id="ch_prop"),
    "line": partial(parse_line, channel_id="ch_prop"),
}


def paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from paths(child, (*prefix, key))


DOCUMENTS = {
    provider: [json.loads(path.read_bytes()) for path in sorted((FIXTURES / provider).glob("*.json"))]
    for provider in PARSERS
}
DOCUMENTS["meta"] = DOCUMENTS["messenger"] + DOCUMENTS["instagram"]
# Every key the fixtures use, so random objects reach deep code rather than stopping at the first lookup.
KEYS = sorted(
    {key for docs in DOCUMENTS.values() for doc in docs for path in paths(doc) for key in path if isinstance(key, str)}
)

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
strings = st.text(max_size=12) | st.sampled_from(["", "page", "instagram", "whatsapp_business_account", "\ud800x"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=30,
)


def assert_well_formed(parse: Callable[[bytes | str], list[ParsedItem]], raw: bytes | str) -> None:
    try:
        items = parse(raw)
    except InvalidEnvelope as refused:
        assert refused.message and refused.as_json()["error"] == "invalid_envelope"
        return
    for item in items:
        assert item.event.event_id
        item.event.SerializeToString()
        json.loads(item.event.raw_json)
        assert all(isinstance(key, str) and key for key in item.channel_keys)


@pytest.mark.parametrize("provider", PARSERS)
@SETTINGS
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes(provider: str, raw: bytes) -> None:
    assert_well_formed(PARSERS[provider], raw)


@pytest.mark.parametrize("provider", PARSERS)
@SETTINGS
@given(value=json_values)
def test_arbitrary_json(provider: str, value: Any) -> None:
    assert_well_formed(PARSERS[provider], json.dumps(value))


@pytest.mark.parametrize("provider", PARSERS)
@SETTINGS
@given(obj=st.sampled_from(["page", "instagram", "whatsapp_business_account"]), entry=json_values, update=json_values)
def test_arbitrary_json_inside_an_envelope(provider: str, obj: str, entry: Any, update: Any) -> None:
    assert_well_formed(PARSERS[provider], json.dumps({"object": obj, "entry": [entry], "update_id": 7, "x": update}))


def mutate(document: Any, path: tuple, operation: str, value: Any) -> Any:
    """Replace, delete, wrap in a list or duplicate the node at `path`."""
    if not path:
        return value
    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if operation == "delete":
        del parent[key]
    elif operation == "wrap":
        parent[key] = [parent[key]]
    elif operation == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    else:
        parent[key] = value
    return document


@pytest.mark.parametrize("provider", PARSERS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_fixtures(provider: str, data: st.DataObject) -> None:
    document = data.draw(st.sampled_from(DOCUMENTS[provider]))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(paths(document))))
        operation = data.draw(st.sampled_from(["replace", "delete", "wrap", "duplicate"]))
        document = mutate(document, path, operation, data.draw(json_values))
    assert_well_formed(PARSERS[provider], json.dumps(document))
