"""The simulator's routing host learns latencies from what it observes, as a live one would:
a prior declared wrong per GPU type is corrected within the run."""

from __future__ import annotations

import statistics

import pytest

from modelfleet.policy.learn import LearnedPerfModel
from modelfleet.sim.cluster import ClusterSimulator, SimConfig
from modelfleet.sim.policies import policy_factory

from .tiny import tiny_fleet, tiny_trace

pytestmark = pytest.mark.unit

WRONG = {"l40s": -0.3, "a100-80gb": 0.15}  # L40S 30 % slower than declared, A100 15 % faster


def _ratios(preds: list[tuple[float, str, float, float, float]], accel: str) -> tuple[float, float]:
    """Median observed/predicted TTFT on ``accel``: (learned model, prior)."""
    own = [p for p in preds if p[1] == accel]
    return (
        statistics.median(p[4] / p[2] for p in own),
        statistics.median(p[4] / p[3] for p in own),
    )


def test_a_wrong_prior_is_learned_away_within_the_run() -> None:
    trace = tiny_trace(n_conv=150).compressed(2.0)
    config = SimConfig(ttft_slo_s=1.0, prior_error=WRONG, track_predictions=True)
    sim = ClusterSimulator(trace, tiny_fleet(), policy_factory("modelfleet"), config)
    result = sim.run()
    result.check_conservation()
    preds = result.extra["ttft_predictions"]
    late = preds[len(preds) // 2 :]
    learned, prior = _ratios(late, "l40s")
    assert prior > 1.5  # the declared L40S is far too fast for what it delivers
    assert 0.8 < learned < 1.25  # the routing host's model has caught up
    # and the declaration it learns from is the wrong one (the prior is not the oracle)
    views = {v.accelerator: v for v in sim.router.views()}
    l40s = views["l40s"].perf
    assert isinstance(l40s, LearnedPerfModel) and l40s.ttft_observations > 20
    assert l40s.central is not None
    slower = l40s.central.predict_tpot(running=8) / l40s.prior.predict_tpot(running=8)
    assert slower > 1.15
    # the learning trajectory is recorded for the benchmark's recovery report
    trajectory = [x for x in result.extra["learning"] if x["accelerator"] == "l40s"]
    assert trajectory[0]["ttft_observations"] < trajectory[-1]["ttft_observations"]


def test_without_learning_the_prior_stays_wrong() -> None:
    trace = tiny_trace(n_conv=150).compressed(2.0)
    config = SimConfig(
        ttft_slo_s=1.0, prior_error=WRONG, track_predictions=True, perf_model="prior"
    )
    result = ClusterSimulator(trace, tiny_fleet(), policy_factory("modelfleet"), config).run()
    preds = result.extra["ttft_predictions"]
    learned, prior = _ratios(preds[len(preds) // 2 :], "l40s")
    assert learned == prior > 1.5
    assert result.extra["learning"] == []
