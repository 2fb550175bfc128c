"""The operator's pure decisions: manual replicas, the scale-down victim, the leader lease,
and the status conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from support.example_objects import example_pools, example_profiles

from modelfleet.api import ModelPool
from modelfleet.operator.decisions import (
    VICTIM_COST,
    EndpointLoad,
    choose_victims,
    lease_action,
    manual_replicas,
    slo_inputs,
    stale_victims,
)
from modelfleet.operator.observe import DeploymentInfo, PodInfo, deployment_info, pod_info
from modelfleet.operator.status import (
    merge_conditions,
    policy_conditions,
    pool_conditions,
    pool_status,
)
from modelfleet.policy.autoscale import (
    AutoscalerMemory,
    Demand,
    decide,
    replica_capacity,
)
from modelfleet.policy.prior import DeclaredHardware, prior_perf_model

pytestmark = pytest.mark.unit

PROFILES = example_profiles()


def two_variant_pool(**spec: Any) -> ModelPool:
    base = example_pools()["llama-8b"]  # l4 (1..8, $0.7) and h100 (0..2, $3.9)
    return base.model_copy(update={"spec": base.spec.model_copy(update=spec)})


@pytest.mark.parametrize(
    ("replicas", "want", "note"),
    [
        (None, {"l4": 1, "h100": 0}, ""),
        (0, {"l4": 1, "h100": 0}, "spec.replicas 0 clamped to 1 (sum of minReplicas)"),
        (1, {"l4": 1, "h100": 0}, ""),
        (5, {"l4": 5, "h100": 0}, ""),
        (8, {"l4": 8, "h100": 0}, ""),
        (9, {"l4": 8, "h100": 1}, ""),
        (10, {"l4": 8, "h100": 2}, ""),
        (50, {"l4": 8, "h100": 2}, "spec.replicas 50 clamped to 10 (sum of maxReplicas)"),
    ],
    ids=["unset", "below-min", "min", "cheap-first", "cheap-full", "spill", "all", "above-max"],
)
def test_manual_replicas_fill_the_cheapest_variant_first(
    replicas: int | None, want: dict[str, int], note: str
) -> None:
    pool = two_variant_pool(replicas=replicas)
    target = manual_replicas(pool.spec, PROFILES)
    assert target.replicas == want
    assert target.note == note


def test_manual_replicas_put_a_variant_without_profile_last() -> None:
    pool = two_variant_pool(replicas=9)
    profiles = {"h100-80gb": PROFILES["h100-80gb"]}  # l4 profile missing: cost unknown
    assert manual_replicas(pool.spec, profiles).replicas == {"l4": 7, "h100": 2}


def pod(
    name: str,
    *,
    variant: str = "l4",
    ready: bool = True,
    scheduled: bool = True,
    terminating: bool = False,
    created: str = "2026-12-05T10:00:00Z",
    victim: bool = False,
) -> PodInfo:
    return PodInfo(
        name=name,
        variant=variant,
        phase="Running" if scheduled else "Pending",
        ready=ready,
        terminating=terminating,
        scheduled=scheduled,
        unschedulable="" if scheduled else "0/5 nodes are available",
        crash_loop="",
        deletion_cost=VICTIM_COST if victim else None,
        created=created,
    )


@pytest.mark.parametrize(
    ("pods", "loads", "count", "want"),
    [
        ([], {}, 1, []),
        ([pod("a")], {}, 0, []),
        ([pod("a")], {"a": EndpointLoad(inflight_requests=5)}, 1, ["a"]),
        (
            [pod("a"), pod("b"), pod("c")],
            {"a": EndpointLoad(3), "b": EndpointLoad(1), "c": EndpointLoad(2)},
            2,
            ["b", "c"],
        ),
        (
            [pod("a"), pod("b")],
            {"a": EndpointLoad(0, running=4, waiting=2), "b": EndpointLoad(5)},
            1,
            ["b"],
        ),
        ([pod("a"), pod("b", scheduled=False)], {"a": EndpointLoad(0)}, 1, ["b"]),
        ([pod("a"), pod("b", ready=False)], {"a": EndpointLoad(0), "b": EndpointLoad(9)}, 1, ["b"]),
        ([pod("a", terminating=True), pod("b")], {"b": EndpointLoad(7)}, 1, ["b"]),
        (
            [
                pod("old", created="2026-12-05T09:00:00Z"),
                pod("new", created="2026-12-05T11:00:00Z"),
            ],
            {},
            1,
            ["new"],
        ),
        ([pod("b"), pod("a")], {}, 1, ["a"]),
        ([pod("a"), pod("b")], {"a": EndpointLoad(1)}, 1, ["b"]),
    ],
    ids=[
        "empty",
        "zero",
        "one",
        "least-inflight",
        "engine-counts-beat-inflight",
        "unscheduled-first",
        "not-ready-first",
        "terminating-excluded",
        "newest-on-tie",
        "name-on-tie",
        "unknown-to-scheduler-has-no-work",
    ],
)
def test_victims_have_the_least_in_flight_work(
    pods: list[PodInfo], loads: dict[str, EndpointLoad], count: int, want: list[str]
) -> None:
    assert choose_victims(pods, loads, count) == want


@pytest.mark.parametrize(
    ("pods", "chosen", "desired", "want"),
    [
        # the Deployment is scaled to 0 but the (lagging) view still shows its victim alive:
        # it stays marked and drained (it was undrained and unmarked, a 404 if already gone)
        ([pod("a"), pod("v", variant="h100", victim=True)], [], {"l4": 1, "h100": 0}, []),
        # the scale-down was called off (desired back up): the victim serves again
        ([pod("a"), pod("v", variant="h100", victim=True)], [], {"l4": 1, "h100": 1}, ["v"]),
        # chosen again this pass, or already terminating: not stale
        ([pod("v", victim=True)], ["v"], {"l4": 1}, []),
        ([pod("v", victim=True, terminating=True), pod("a")], [], {"l4": 1}, []),
        # two live, one wanted: the marked one is still the one to go
        ([pod("a"), pod("v", victim=True)], [], {"l4": 1}, []),
        ([pod("a")], [], {"l4": 0}, []),
    ],
    ids=["scaled-down-view-lags", "called-off", "chosen-again", "terminating", "still-one-too-many",
         "unmarked"],
)  # fmt: skip
def test_stale_victims_serve_again_only_when_the_scale_down_is_called_off(
    pods: list[PodInfo], chosen: list[str], desired: dict[str, int], want: list[str]
) -> None:
    assert stale_victims(pods, chosen, desired) == want


@pytest.mark.parametrize(
    ("holder", "renewed", "now", "want"),
    [
        (None, None, 100.0, "acquire"),
        ("", 90.0, 100.0, "acquire"),
        ("me", 99.0, 100.0, "renew"),
        ("me", 10.0, 100.0, "renew"),
        ("other", 95.0, 100.0, "wait"),
        ("other", 85.0, 100.0, "wait"),
        ("other", 84.0, 100.0, "acquire"),
        ("other", None, 100.0, "acquire"),
    ],
    ids=["free", "released", "mine", "mine-late", "held", "held-at-edge", "expired", "no-time"],
)
def test_lease_action(holder: str | None, renewed: float | None, now: float, want: str) -> None:
    assert lease_action(holder, renewed, 15.0, "me", now) == want


def test_slo_inputs_take_costs_and_models_from_profiles() -> None:
    pool = two_variant_pool()
    variants, slo, windows = slo_inputs(pool.spec, {"l4": PROFILES["l4"]})
    by = {v.name: v for v in variants}
    assert by["l4"].cost_per_hour == pytest.approx(0.7) and by["l4"].available
    assert not by["h100"].available  # its profile is missing
    assert (slo.ttft_s, slo.tpot_s, slo.percentile) == (0.8, 0.06, 0.9)
    assert windows.down_s == 300 and windows.up_s == 0 and windows.zero_after_s == 600


def test_the_autoscalers_model_is_the_prior_the_scheduler_starts_from() -> None:
    """The autoscaler sizes with the scheduler's prior of the same declared hardware: the
    profile's speeds and memory, the variant's parallelism, the pool's engine settings."""
    pool = two_variant_pool()
    variants, _, _ = slo_inputs(pool.spec, PROFILES)
    l4 = PROFILES["l4"].spec
    want = prior_perf_model(
        DeclaredHardware(
            prefill_speed=l4.prefill_speed,
            decode_speed=l4.decode_speed,
            memory_gib=l4.memory_gib,
            model_params=8e9,  # meta-llama/Llama-3.1-8B-Instruct
            gpu_memory_utilization=pool.spec.engine.gpu_memory_utilization,
            max_num_seqs=pool.spec.engine.max_num_seqs,
            max_num_batched_tokens=pool.spec.engine.max_num_batched_tokens,
        )
    )
    assert next(v for v in variants if v.name == "l4").perf == want


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", 8e9),
        ("meta-llama/Llama-3.1-70B-Instruct", 70e9),
        ("Qwen/Qwen2.5-0.5B-Instruct", 0.5e9),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", 56e9),
        ("my-org/finetuned", DeclaredHardware().model_params),  # states no size: the default
    ],
    ids=["8b", "70b", "0.5b", "8x7b", "no-size"],
)
def test_the_autoscalers_prior_takes_the_pools_model_size(model: str, params: float) -> None:
    """The prior is sized for the pool's model, not always for an 8B one: a 70B model's
    replica decodes ~9x slower on the same GPU, so it holds far less load at the SLO."""
    spec = two_variant_pool(model=model).spec
    variants, _, _ = slo_inputs(spec, PROFILES)
    h100 = next(v for v in variants if v.name == "h100")
    p = PROFILES["h100-80gb"].spec
    want = prior_perf_model(
        DeclaredHardware(
            prefill_speed=p.prefill_speed,
            decode_speed=p.decode_speed,
            memory_gib=p.memory_gib,
            model_params=params,
            gpu_memory_utilization=spec.engine.gpu_memory_utilization,
            max_num_seqs=spec.engine.max_num_seqs,
            max_num_batched_tokens=spec.engine.max_num_batched_tokens,
        )
    )
    assert h100.perf == want


def test_a_larger_model_needs_more_replicas_for_the_same_demand() -> None:
    demand = Demand(arrival_rate=2.0, mean_prompt_tokens=1000, mean_output_tokens=200)
    capacity = {}
    for model in ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-32B-Instruct"):
        base = two_variant_pool(model=model).spec
        spec = base.model_copy(update={"slo": base.slo.model_copy(update={"tpot_ms": 200})})
        variants, slo, _ = slo_inputs(spec, PROFILES)
        h100 = next(v for v in variants if v.name == "h100")
        capacity[model] = replica_capacity(h100.perf, demand, slo)  # type: ignore[arg-type]
    small, large = capacity.values()
    assert 0 < large < small / 2


def test_an_l4_that_holds_the_tpot_slo_is_part_of_the_cheapest_mix() -> None:
    """Llama-3.1-8B at TPOT 100 ms: the declared L4 (0.09 of an H100's bandwidth) decodes a
    token in ~70 ms, so a replica holds the SLO at a low rate (~0.3 req/s), and 1.5 req/s
    costs less on five L4s ($3.5/h) than on the minimum L4 plus an H100 ($4.6/h). At TPOT
    60 ms no L4 can (a physical bound: the weights alone take 16 GB / 241 GB/s = 67 ms per
    step), so the H100 serves."""
    demand = Demand(arrival_rate=1.5, mean_prompt_tokens=1300, mean_output_tokens=150)
    for tpot_ms, l4_serves in ((100, True), (60, False)):
        base = two_variant_pool().spec
        spec = base.model_copy(update={"slo": base.slo.model_copy(update={"tpot_ms": tpot_ms})})
        variants, slo, windows = slo_inputs(spec, PROFILES)
        l4 = next(v for v in variants if v.name == "l4")
        assert (replica_capacity(l4.perf, demand, slo) > 0) == l4_serves  # type: ignore[arg-type]
        decision = decide(
            variants, slo, windows, demand, {"l4": 1, "h100": 0}, AutoscalerMemory(), 0.0
        )
        if l4_serves:
            assert decision.replicas == {"l4": 5, "h100": 0}
        else:
            assert decision.replicas == {"l4": 1, "h100": 1}


# ------------------------------------------------------------------------------ observe


def test_pod_info_reads_the_schedulers_message_and_crash_loops() -> None:
    raw = {
        "metadata": {
            "name": "p",
            "labels": {"modelfleet.io/variant": "h100"},
            "annotations": {"controller.kubernetes.io/pod-deletion-cost": "-5"},
            "creationTimestamp": "2026-12-05T10:00:00Z",
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": (
                        "0/5 nodes are available: 5 node(s) didn't match Pod's node "
                        "affinity/selector."
                    ),
                }
            ],
            "containerStatuses": [
                {
                    "name": "vllm",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                }
            ],
        },
    }
    info = pod_info(raw)
    assert info.variant == "h100" and not info.scheduled and not info.ready
    assert "didn't match Pod's node affinity/selector" in info.unschedulable
    assert info.crash_loop == "vllm: back-off"
    assert info.deletion_cost == -5


def test_deployment_info_knows_when_the_controller_lags() -> None:
    raw = {
        "metadata": {"name": "d", "generation": 3, "labels": {"modelfleet.io/variant": "l4"}},
        "spec": {"replicas": 4},
        "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 1},
    }
    d = deployment_info(raw)
    assert (d.variant, d.replicas, d.ready, d.updated, d.current) == ("l4", 4, 2, 1, False)


# ------------------------------------------------------------------------------ status


def dep(variant: str, replicas: int, ready: int, updated: int | None = None) -> DeploymentInfo:
    return DeploymentInfo(
        name=f"p-{variant}",
        variant=variant,
        replicas=replicas,
        ready=ready,
        updated=replicas if updated is None else updated,
        available=ready,
        current=True,
    )


def conds(**kw: Any) -> dict[str, dict[str, Any]]:
    out = pool_conditions(generation=2, **kw)
    return {c["type"]: c for c in out}


def test_all_ready_pool() -> None:
    c = conds(
        desired={"l4": 2},
        deployments={"l4": dep("l4", 2, 2)},
        pods=[pod("a"), pod("b")],
        missing_profiles={},
    )
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "ReplicasReady")
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("False", "Stable")
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("False", "AsExpected")
    assert c["Accepted"]["reason"] == "Valid"
    assert all(x["observedGeneration"] == 2 for x in c.values())


def test_unschedulable_variant_carries_the_schedulers_message() -> None:
    c = conds(
        desired={"l4": 1, "h100": 1},
        deployments={"l4": dep("l4", 1, 1), "h100": dep("h100", 1, 0)},
        pods=[pod("a"), pod("b", variant="h100", scheduled=False, ready=False)],
        missing_profiles={},
    )
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Unschedulable")
    assert c["Degraded"]["reason"] == "Unschedulable"
    assert c["Degraded"]["message"] == "variant h100: 0/5 nodes are available"


def test_missing_profile_outranks_other_problems() -> None:
    c = conds(
        desired={"l4": 1, "h100": 0},
        deployments={"l4": dep("l4", 1, 0)},
        pods=[pod("a", scheduled=False, ready=False)],
        missing_profiles={"h100": "h100-80gb"},
    )
    assert c["Degraded"]["reason"] == "MissingAcceleratorProfile"
    assert "variant h100: no AcceleratorProfile 'h100-80gb'" in c["Degraded"]["message"]
    assert "variant l4: 0/5 nodes are available" in c["Degraded"]["message"]


@pytest.mark.parametrize(
    ("desired", "deps", "pods", "reason"),
    [
        ({"l4": 3}, {"l4": dep("l4", 3, 1)}, [pod("a")], "ScalingUp"),
        ({"l4": 1}, {"l4": dep("l4", 1, 1)}, [pod("a"), pod("b")], "ScalingDown"),
        ({"l4": 2}, {"l4": dep("l4", 2, 2, updated=1)}, [pod("a"), pod("b")], "RollingOut"),
        ({}, {"gone": dep("gone", 1, 1)}, [pod("a", variant="gone")], "ScalingDown"),
    ],
    ids=["up", "down", "rollout", "variant-removed"],
)
def test_progressing_reasons(
    desired: dict[str, int], deps: dict[str, DeploymentInfo], pods: list[PodInfo], reason: str
) -> None:
    c = conds(desired=desired, deployments=deps, pods=pods, missing_profiles={})
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("True", reason)


def test_scaled_to_zero_is_ready() -> None:
    c = conds(desired={"l4": 0}, deployments={"l4": dep("l4", 0, 0)}, pods=[], missing_profiles={})
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "ScaledToZero")


def test_merge_keeps_transition_time_while_status_holds() -> None:
    t0, t1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    first = merge_conditions([], [{"type": "Ready", "status": "False"}], t0)
    same = merge_conditions(first, [{"type": "Ready", "status": "False", "reason": "X"}], t1)
    flipped = merge_conditions(same, [{"type": "Ready", "status": "True"}], t1)
    assert first[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "2026-01-02T00:00:00Z"
    kept = merge_conditions([{"type": "Other", "status": "True"}], [], t1)
    assert kept == [{"type": "Other", "status": "True"}]


def test_pool_status_columns_and_cost() -> None:
    status = pool_status(
        generation=4,
        pool_name="p",
        variants=[("l4", "l4"), ("h100", "h100-80gb")],
        desired={"l4": 2, "h100": 1},
        deployments={"l4": dep("l4", 2, 2), "h100": dep("h100", 1, 0)},
        pods=[
            pod("a"),
            pod("b"),
            pod("c", variant="h100", ready=False),
            pod("d", terminating=True),
        ],
        cost_per_replica={"l4": 0.7, "h100": 3.9},
        conditions=[],
        autoscaler=None,
    )
    assert status["ready"] == "2/3"
    assert status["replicas"] == 3 and status["readyReplicas"] == 2
    assert status["selector"] == "modelfleet.io/pool=p"
    assert status["estimatedCostPerHour"] == pytest.approx(2 * 0.7 + 3.9)
    assert status["variants"][1] == {
        "name": "h100",
        "acceleratorProfile": "h100-80gb",
        "replicas": 1,
        "readyReplicas": 0,
        "desiredReplicas": 1,
    }


def test_policy_conditions_name_every_missing_pool() -> None:
    ok = {
        c["type"]: c
        for c in policy_conditions(generation=1, invalid="", invalid_reason="", missing_pools=[])
    }
    assert ok["Accepted"]["status"] == ok["ResolvedRefs"]["status"] == "True"
    bad = {
        c["type"]: c
        for c in policy_conditions(
            generation=1,
            invalid="spec.placement.scorers[0].parameters.x: unknown parameter",
            invalid_reason="InvalidParameters",
            missing_pools=["coder", "big"],
        )
    }
    assert (bad["Accepted"]["status"], bad["Accepted"]["reason"]) == ("False", "InvalidParameters")
    assert bad["ResolvedRefs"]["reason"] == "PoolNotFound"
    assert bad["ResolvedRefs"]["message"] == "no ModelPool named big, coder"
