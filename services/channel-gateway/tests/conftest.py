"""Shared test helpers: the provider fixtures under tests/fixtures, written from each provider's documentation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def body() -> Callable[[str, str], bytes]:
    """The raw bytes of fixture `<provider>/<name>.json`."""

    def load(provider: str, name: str) -> bytes:
        return (FIXTURES / provider / f"{name}.json").read_bytes()

    return load


@pytest.fixture
def doc() -> Callable[[str, str], dict]:
    """Fixture `<provider>/<name>.json` decoded, for tests that mutate it."""

    def load(provider: str, name: str) -> dict:
        return json.loads((FIXTURES / provider / f"{name}.json").read_bytes())

    return load
