"""The operator's /metrics exposition: counters exist at 0 before their first increment, so
Prometheus sees the first one (``increase`` of a series that appears at 1 is 0)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.operator.metrics import DRAIN_OUTCOMES, ERROR_REASONS, OperatorMetrics
from modelfleet.policy.autoscale import REASONS

pytestmark = pytest.mark.unit


@pytest.fixture
def metrics() -> Iterator[OperatorMetrics]:
    m = OperatorMetrics()
    yield m
    m.close()


def scrape(m: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = m.serve(0, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    m.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_fixed_counters_are_exposed_at_zero_before_anything_happens(
    metrics: OperatorMetrics,
) -> None:
    samples = scrape(metrics)
    for kind, reasons in ERROR_REASONS.items():
        for reason in reasons:
            key = (
                "modelfleet_operator_reconcile_errors_total",
                (("kind", kind), ("reason", reason)),
            )
            assert samples[key] == 0.0
        count = ("modelfleet_operator_reconcile_duration_seconds_count", (("kind", kind),))
        assert samples[count] == 0.0
    for outcome in DRAIN_OUTCOMES:
        assert samples[("modelfleet_operator_drains_total", (("outcome", outcome),))] == 0.0


def decisions(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        ",".join(v for _, v in labels): value
        for (name, labels), value in samples.items()
        if name == "modelfleet_operator_scale_decisions_total"
    }


@pytest.mark.parametrize(
    ("reasons", "count"), [(("manual",), 2 * 2), (REASONS, 2 * 2 * len(REASONS))]
)
def test_a_pools_scale_decisions_are_declared_at_zero_and_removed_with_it(
    metrics: OperatorMetrics, reasons: tuple[str, ...], count: int
) -> None:
    metrics.declare_pool("ns", "p", ["a", "b"], reasons)
    metrics.declare_pool("ns", "p", ["a", "b"], reasons)  # idempotent
    metrics.decisions.labels("ns", "p", "a", "up", reasons[0]).inc()
    got = decisions(scrape(metrics))
    assert len(got) == count
    assert got[f"up,ns,p,{reasons[0]},a"] == 1.0
    assert got[f"down,ns,p,{reasons[0]},b"] == 0.0
    metrics.forget_pool("ns", "p")
    assert decisions(scrape(metrics)) == {}
