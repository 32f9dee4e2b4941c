"""Rendered charts shared by the deployment tests (each `helm template` runs once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from parley_deploy import chart

HERE = Path(__file__).parent
# Every secret filled with a placeholder: lets tests check that each referenced key exists.
SECRETS_VALUES = HERE / "values-all-secrets.yaml"


@pytest.fixture(scope="session")
def default_objects() -> list[dict[str, Any]]:
    return chart.render()


@pytest.fixture(scope="session")
def production_objects() -> list[dict[str, Any]]:
    return chart.render(values=[chart.PRODUCTION_VALUES])


@pytest.fixture(scope="session")
def operator_objects() -> list[dict[str, Any]]:
    """Default values on a cluster with the Prometheus Operator CRDs."""
    return chart.render(api_versions=chart.OPERATOR_APIS)


@pytest.fixture(scope="session")
def production_operator_objects() -> list[dict[str, Any]]:
    return chart.render(values=[chart.PRODUCTION_VALUES], api_versions=chart.OPERATOR_APIS)


@pytest.fixture(scope="session")
def secrets_objects() -> list[dict[str, Any]]:
    return chart.render(values=[SECRETS_VALUES])


@pytest.fixture(scope="session")
def default_values() -> dict[str, Any]:
    return yaml.safe_load((chart.CHART / "values.yaml").read_text())
