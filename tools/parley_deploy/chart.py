"""Render the Parley chart and look at the result.

objects = render(values=["helm/parley/values-production.yaml"], api_versions=[...])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from parley_deploy import helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
DEV_CHART = ROOT / "helm" / "parley-dev"
PRODUCTION_VALUES = CHART / "values-production.yaml"
OPERATOR_APIS = ("monitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/PrometheusRule")
# The chart's kubeVersion floor and a current release: rendered objects must validate on both.
KUBE_VERSIONS = ("1.27.0", "1.34.0")


def render(
    chart: Path = CHART,
    *,
    values: Sequence[Path | str] = (),
    set_values: Sequence[str] = (),
    api_versions: Iterable[str] = (),
    release: str = "parley",
    namespace: str = "parley",
    kube_version: str = KUBE_VERSIONS[-1],
) -> list[dict[str, Any]]:
    """`helm template` -> the list of objects (empty documents dropped)."""
    args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", kube_version]
    for path in values:
        args += ["--values", str(path)]
    for item in set_values:
        args += ["--set", item]
    for api in api_versions:
        args += ["--api-versions", api]
    out = helm.run(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def lint(chart: Path = CHART, *, values: Sequence[Path | str] = (), strict: bool = True) -> str:
    args = ["lint", str(chart)]
    if strict:
        args.append("--strict")
    for path in values:
        args += ["--values", str(path)]
    return helm.run(*args).stdout


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def components(values_file: Path = CHART / "values.yaml") -> set[str]:
    """The chart's component names (keys of `components` in its default values)."""
    return set(yaml.safe_load(values_file.read_text())["components"])


def pod_specs(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: d["spec"]["template"]["spec"] for name, d in by_kind(objects, "Deployment").items()}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> env entry (value or valueFrom)."""
    return {e["name"]: e for e in container.get("env", [])}
