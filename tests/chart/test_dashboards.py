"""The Grafana dashboards (charts/modelfleet/dashboards/*.json): every query parses as PromQL
and names only metrics that the project or vLLM really exports.

The exported set is gathered from the code, not written down: each component's own
Prometheus registry is built (the engine simulator's ``EngineMetrics`` — vLLM's names — the
scheduler's ``Telemetry`` and the operator's ``OperatorMetrics``) and every family is turned
into the sample names Prometheus stores (``_total`` for counters, ``_bucket``/``_sum``/
``_count`` for histograms, ...). A component whose metrics module is not in this checkout yet
(the scheduler and the operator land on their own branches) cannot vouch for its names: those
names are reported by a skip, never passed silently; every other name must exist.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.chart import CHART

promql_parser = pytest.importorskip("promql_parser", reason="promql-parser is in .[dev]")

pytestmark = pytest.mark.unit

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
#: Grafana's own variables, replaced by what Grafana would put there before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def sample_names(family_name: str, family_type: str) -> set[str]:
    """The series names Prometheus stores for one prometheus_client family."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "stateset": ("",),
    }.get(family_type, ("",))
    return {family_name + s for s in suffixes}


def _registry_families(registry: Any) -> set[str]:
    return {n for f in registry.collect() for n in sample_names(f.name, f.type)}


def engine_metrics() -> set[str]:
    from modelfleet.engine.core import EngineStats
    from modelfleet.engine.metrics import EngineMetrics

    stats = EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0, num_gpu_blocks=1, block_size=16)
    m = EngineMetrics(
        model_name="m", stats=lambda: stats, cache_config={"block_size": "16"}, max_model_len=8
    )
    return _registry_families(m.registry)


def scheduler_metrics() -> set[str]:
    telemetry = importlib.import_module("modelfleet.scheduler.telemetry")
    t = telemetry.Telemetry(clock=lambda: 0.0)
    t.add_live(lambda: [])
    return _registry_families(t.registry)


def operator_metrics() -> set[str]:
    metrics = importlib.import_module("modelfleet.operator.metrics")
    return _registry_families(metrics.OperatorMetrics().registry)


#: name prefix -> (module that must exist, how to build its registry). Longest prefix first.
COMPONENTS = [
    ("modelfleet_operator_", "modelfleet.operator.metrics", operator_metrics),
    ("modelfleet_", "modelfleet.scheduler.telemetry", scheduler_metrics),
    ("vllm:", "modelfleet.engine.metrics", engine_metrics),
]


def component_of(name: str) -> tuple[str, str, Any] | None:
    return next((c for c in COMPONENTS if name.startswith(c[0])), None)


def exported() -> tuple[set[str], set[str]]:
    """(every exported series name, the prefixes whose component is not in this checkout)."""
    names: set[str] = set()
    absent: set[str] = set()
    for prefix, module, build in COMPONENTS:
        try:
            importlib.import_module(module)
        except ImportError:
            absent.add(prefix)
            continue
        names |= build()
    return names, absent


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query, rows' nested panels included."""
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                yield p["title"], t["expr"]


def grafana_expanded(expr: str, dashboard: dict[str, Any]) -> str:
    """The expression as Grafana sends it: its variables replaced by their current values."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    for v in dashboard["templating"]["list"]:
        current = v.get("current", {}).get("value")
        value = ".*" if current in (None, "$__all") else str(current)
        expr = re.sub(r"\$\{?" + re.escape(v["name"]) + r"\}?\b", value, expr)
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr


def metric_names(node: Any) -> Iterator[str]:
    """Every metric name a parsed PromQL expression selects."""
    if isinstance(node, promql_parser.VectorSelector | promql_parser.MatrixSelector):
        vs = node if isinstance(node, promql_parser.VectorSelector) else node.vector_selector
        name = vs.name or next(
            (m.value for m in vs.matchers.matchers if m.name == "__name__"), None
        )
        assert name, f"selector without a metric name: {vs}"
        yield name
        return
    for attr in ("expr", "lhs", "rhs", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, str | int | float):
            yield from metric_names(child)
    for arg in getattr(node, "args", None) or []:
        yield from metric_names(arg)


def test_there_are_dashboards_for_autoscaling_routing_and_engines() -> None:
    assert {d.stem for d in DASHBOARDS} == {"autoscaling", "routing", "engines"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_parses_and_names_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    names, absent = exported()
    assert names, "no exported metrics gathered"
    unvouched: set[str] = set()
    seen = 0
    for title, expr in targets(dashboard):
        parsed = promql_parser.parse(grafana_expanded(expr, dashboard))
        for name in metric_names(parsed):
            seen += 1
            comp = component_of(name)
            assert comp is not None, f"{path.name}: {title}: {name} is no project or vLLM metric"
            if comp[0] in absent:
                unvouched.add(name)
                continue
            assert name in names, f"{path.name}: panel {title!r}: {name} is not exported"
    assert seen, f"{path.name}: no metric selected"
    if unvouched:
        pytest.skip(
            f"{len(unvouched)} names of components not in this checkout yet: "
            + ", ".join(sorted(unvouched))
        )


def test_the_checker_catches_a_wrong_name() -> None:
    """A misspelt vLLM family (the deprecated gpu_cache_usage_perc) is not in the set."""
    names, _ = exported()
    parsed = promql_parser.parse('avg(vllm:gpu_cache_usage_perc{pool=~".*"})')
    (name,) = metric_names(parsed)
    assert name == "vllm:gpu_cache_usage_perc" and name not in names
    assert "vllm:kv_cache_usage_perc" in names and "vllm:prefix_cache_hits_total" in names


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed_for_grafana(path: Path) -> None:
    d = json.loads(path.read_text())
    assert d["uid"].startswith("modelfleet-") and d["title"].startswith("modelfleet / ")
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["description"] and p["targets"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
