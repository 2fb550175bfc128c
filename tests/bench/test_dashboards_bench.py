"""bench/dashboards.py's parts that need no cluster: the fleet it applies, the engine targets it
gives Prometheus, the queries it sends, the external autoscaler's rule.

bench/ is not a package; its modules are imported from their folder, as the bench scripts do.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import dashboards as D  # noqa: E402
from modelfleet.api.accelerator import AcceleratorProfile  # noqa: E402
from modelfleet.api.modelpool import ModelPool  # noqa: E402
from modelfleet.api.validate import validate_object  # noqa: E402
from modelfleet.operator.builders import build_deployment  # noqa: E402

pytestmark = pytest.mark.unit


def _fleet() -> dict[tuple[str, str], Any]:
    out = {}
    for doc in D.fleet_manifests(D.FLEET):
        doc["metadata"]["uid"] = f"uid-{doc['metadata']['name']}"  # as the API server sets it
        obj, problems = validate_object(doc, "bench fleet")
        assert not problems, problems
        out[(doc["kind"], doc["metadata"]["name"])] = obj
    return out


def test_the_bench_fleet_is_example_06_valid_with_a_scalable_pool_and_a_budget() -> None:
    fleet = _fleet()
    pool = fleet[("ModelPool", D.SCALED_POOL)]
    assert isinstance(pool, ModelPool)
    assert pool.spec.scaling.mode == "Manual" and pool.spec.replicas == 1
    assert [(v.min_replicas, v.max_replicas) for v in pool.spec.variants] == [(1, D.MAX_REPLICAS)]
    code = fleet[("RoutingPolicy", "code")]
    assert code.spec.rate_limits.default.requests_per_minute == 20
    for key, obj in fleet.items():
        if key[0] == "AcceleratorProfile":
            assert obj.spec.tolerations, f"{key[1]} would not land on the tainted GPU nodes"


def _pod(deployment: dict[str, Any], name: str, ip: str | None) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    return {
        "metadata": {**template["metadata"], "name": name, "namespace": "default"},
        "spec": template["spec"],
        "status": {"podIP": ip} if ip else {},
    }


def test_engine_targets_select_the_operators_pods_as_the_podmonitor_does() -> None:
    fleet = _fleet()
    pool = fleet[("ModelPool", D.SCALED_POOL)]
    variant = pool.spec.variants[0]
    profile = fleet[("AcceleratorProfile", variant.accelerator_profile)]
    assert isinstance(profile, AcceleratorProfile)
    dep = build_deployment(pool, variant, profile, replicas=2, kv_events=False)
    other = {"metadata": {"name": "sidecar", "namespace": "default", "labels": {}},
             "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 80}]}]},
             "status": {"podIP": "127.42.0.9"}}  # fmt: skip
    pods = [_pod(dep, "a", "127.42.0.1"), _pod(dep, "b", None), other]
    assert D.engine_targets(pods) == [
        {
            "targets": ["127.42.0.1:8000"],
            "labels": {"pool": D.SCALED_POOL, "variant": variant.name, "namespace": "default",
                       "pod": "a"},
        }
    ]  # fmt: skip


def test_discovery_writes_the_targets_file(tmp_path: Path) -> None:
    fleet = _fleet()
    pool = fleet[("ModelPool", "coder")]
    variant = pool.spec.variants[0]
    dep = build_deployment(
        pool, variant, fleet[("AcceleratorProfile", variant.accelerator_profile)],
        replicas=1, kv_events=False,
    )  # fmt: skip
    stop = threading.Event()
    target = tmp_path / "engines.json"
    calls = []

    def list_pods() -> list[dict[str, Any]]:
        calls.append(1)
        stop.set()  # one pass
        return [_pod(dep, "coder-0", "127.42.0.3")]

    D.discover_engines(list_pods, target, stop)
    assert calls and json.loads(target.read_text())[0]["labels"]["pod"] == "coder-0"


@pytest.mark.parametrize("path", sorted(D.DASHBOARDS.glob("*.json")), ids=lambda p: p.stem)
def test_every_query_the_bench_sends_has_its_variables_filled(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            expr = D.grafana_expr(t["expr"], dashboard)
            assert "$" not in expr, f"{panel['title']}: {expr}"


def test_external_autoscaler_goes_up_at_once_and_down_one_step_after_two_readings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = iter([2.5, 7.9, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr(D, "EVAL_S", 0)
    stop = threading.Event()

    def instant(prom: str, expr: str) -> float:
        try:
            return next(readings)
        except StopIteration:
            stop.set()
            return 0.0

    monkeypatch.setattr(D, "instant", instant)
    scaled: list[int] = []
    log: list[tuple[float, float, int, int]] = []
    D.external_autoscaler("http://unused", scaled.append, stop, log, 0.0)
    # 2.5 -> 2 replicas; 7.9 -> 4 at once; 3.0 twice (wants 2) -> 3; 0.0 twice -> 2, twice -> 1
    assert scaled == [2, 4, 3, 2, 1]
    assert [(a, b) for _, _, a, b in log] == [(1, 2), (2, 4), (4, 3), (3, 2), (2, 1)]
