"""The telemetry registry (docs/telemetry.md) and the metric names the chart's PromQL uses.

    from parley_deploy import telemetry
    registry = telemetry.load_registry()                   # name -> Metric
    used = telemetry.chart_metric_names(rendered_objects)  # names in dashboards and alert rules
    telemetry.parley_exported(registry)                    # names a running Parley process must show

`metric_names(expr)` reads PromQL without a full parser: it drops strings, label matchers, ranges
and grouping clauses, then keeps the identifiers that are not functions or keywords. Histogram
series (`_bucket`, `_sum`, `_count`) map back to their histogram's name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "docs" / "telemetry.md"
DASHBOARDS = ROOT / "helm" / "parley" / "dashboards"

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# prometheus_client also exposes <counter>_created; a scrape shows it beside <counter>_total.
SCRAPE_SUFFIXES = (*HISTOGRAM_SUFFIXES, "_created")


@dataclass(frozen=True)
class Metric:
    name: str
    type: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    exporter: str  # "kit (...)", "channel-gateway (web)", "kube-state-metrics", ...
    status: str  # exported, required, external

    @property
    def from_parley(self) -> bool:
        """Exported by a Parley process (not by a cluster exporter)."""
        return self.status in ("exported", "required")


def load_registry(path: Path = REGISTRY) -> dict[str, Metric]:
    """The metrics table of docs/telemetry.md: rows whose first cell is a `name`."""
    registry: dict[str, Metric] = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not re.fullmatch(r"`[a-z_:][a-z0-9_:]*`", cells[0]):
            continue
        name = cells[0].strip("`")
        if cells[1] not in ("counter", "gauge", "histogram"):
            continue
        labels = tuple(re.findall(r"`([a-z_][a-z0-9_]*)`", cells[2]))
        if name in registry:
            raise ValueError(f"{path}: {name} is listed twice")
        registry[name] = Metric(name, cells[1], labels, cells[3], cells[4])
    return registry


def parley_exported(registry: dict[str, Metric]) -> set[str]:
    return {m.name for m in registry.values() if m.from_parley}


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    expr = re.sub(r"\{[^{}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)  # ranges and subqueries
    # grouping/matching label lists: by (a, b), without(...), on(...), ignoring(...), group_left(...)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects."""
    names: set[str] = set()
    # `label_values(metric, label)` in Grafana variable queries
    for match in re.finditer(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,", expr):
        names.add(match.group(1))
    if "label_values(" in expr:
        return names
    stripped = _strip(expr)
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", stripped):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def base_name(name: str, registry: dict[str, Metric]) -> str:
    """`x_bucket` -> `x` when `x` is a registered histogram; otherwise the name itself."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in registry and registry[base].type == "histogram":
                return base
    return name


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression of a Grafana dashboard: panel targets (rows included) and variables."""

    def panels(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str) and query:
            yield query


def rule_exprs(obj: dict[str, Any]) -> Iterator[str]:
    """Expressions of a PrometheusRule object or of a rule-file document ({groups: [...]})."""
    spec = obj.get("spec", obj)
    for group in spec.get("groups", []):
        for rule in group.get("rules", []):
            if rule.get("expr"):
                yield str(rule["expr"])


def chart_exprs(objects: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every PromQL expression in rendered chart objects: dashboard ConfigMaps,
    PrometheusRule objects and the rule-file ConfigMap."""
    import yaml

    for obj in objects:
        kind = obj.get("kind")
        name = obj.get("metadata", {}).get("name", "?")
        if kind == "PrometheusRule":
            for expr in rule_exprs(obj):
                yield f"PrometheusRule/{name}", expr
        elif kind == "ConfigMap":
            for key, text in (obj.get("data") or {}).items():
                if key.endswith(".json"):
                    for expr in dashboard_exprs(json.loads(text)):
                        yield f"ConfigMap/{name}/{key}", expr
                elif key.endswith(".rules.yaml"):
                    for expr in rule_exprs(yaml.safe_load(text)):
                        yield f"ConfigMap/{name}/{key}", expr


def chart_metric_names(objects: Iterable[dict[str, Any]], registry: dict[str, Metric] | None = None) -> set[str]:
    """Metric names (histogram series mapped to their histogram) used by the rendered chart."""
    registry = registry if registry is not None else load_registry()
    return {base_name(n, registry) for _, expr in chart_exprs(objects) for n in metric_names(expr)}


def scraped_names(exposition: str) -> set[str]:
    """Metric family names in a /metrics text exposition (for comparing with a running platform)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def exported_family(name: str, scraped: set[str]) -> bool:
    """Whether a registry name shows up in a scrape (prometheus_client names counter families
    without `_total` in `# TYPE` lines and adds `_created`, `_bucket`...)."""
    candidates = {name, name.removesuffix("_total")}
    candidates |= {name + s for s in SCRAPE_SUFFIXES}
    return bool(candidates & scraped)
