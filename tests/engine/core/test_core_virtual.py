"""Virtual time: determinism, and the decode fast path equals stepping one at a time."""

from __future__ import annotations

import random

import pytest
from support.engine_core import make_engine, toy_next_token

from modelfleet.engine.core import EngineConfig, EngineCore, EngineRequest, KVEvent
from modelfleet.engine.virtual import RequestRecord, VirtualCluster, VirtualEngine

pytestmark = pytest.mark.unit


def trace(
    n: int, seed: int, engines: int, stop: bool = False, rich: bool = False, rate: float = 20.0
) -> list[tuple[int, EngineRequest]]:
    """Random requests; ``rich`` adds many stop ids, min_tokens and ignore_eos (with EOS=RICH_EOS
    set on the engines), so every stop rule fires inside decode bursts."""
    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rate)
        shared = [rng.randrange(4) + 1] * rng.choice([0, 8, 16])
        prompt = shared + [rng.randrange(1, 900) for _ in range(rng.randrange(1, 60))]
        stops = frozenset({rng.randrange(3, 1000)}) if stop else frozenset()
        min_tokens, ignore_eos = 0, False
        if rich:
            stops = frozenset(rng.sample(range(3, 1000), rng.choice([0, 5, 40])))
            min_tokens = rng.choice([0, 0, 1, 3, 7])
            ignore_eos = rng.random() < 0.3
        max_tokens = rng.randrange(max(1, min_tokens), 80)
        out.append(
            (
                i % engines,
                EngineRequest(
                    f"r{i}",
                    prompt,
                    max_tokens=max_tokens,
                    min_tokens=min_tokens,
                    stop_token_ids=stops,
                    ignore_eos=ignore_eos,
                    arrival_time=t,
                ),
            )
        )
    return out


RICH_EOS = 500


def summary(recs: dict[str, RequestRecord]) -> list[tuple]:
    return sorted(
        (
            k,
            r.arrival_time,
            r.first_token_time,
            tuple(r.token_times),
            r.finish_time,
            r.finish_reason,
            r.num_output_tokens,
            r.num_cached_tokens,
        )
        for k, r in recs.items()
    )


def run(
    fast: bool,
    engines: int = 3,
    blocks: int = 60,
    seed: int = 7,
    stop: bool = False,
    rich: bool = False,
    rate: float = 20.0,
):
    events: list[list[KVEvent]] = [[] for _ in range(engines)]
    eos = RICH_EOS if rich else None
    cores = [
        make_engine(num_gpu_blocks=blocks, block_size=4, events=events[i], eos_token_id=eos)
        for i in range(engines)
    ]
    cluster = VirtualCluster([VirtualEngine(c, fast=fast) for c in cores])
    recs = cluster.run_trace(trace(150, seed, engines, stop, rich, rate))
    return summary(recs), events, [c.stats() for c in cores], cluster


@pytest.mark.parametrize(
    ("blocks", "stop", "rich", "engines", "rate"),
    [
        (60, False, False, 3, 20.0),
        (45, False, False, 3, 20.0),
        (400, True, False, 3, 20.0),
        (400, False, True, 3, 20.0),
        (400, False, True, 1, 0.5),
        (40, False, True, 1, 0.5),
    ],
    ids=[
        "tight-cache-preempts",
        "very-tight",
        "roomy-with-stop-tokens",
        "every-stop-rule",
        "lone-requests",
        "lone-requests-out-of-blocks",
    ],
)
def test_fast_path_identical_to_single_steps(blocks, stop, rich, engines, rate):
    kw = {"blocks": blocks, "stop": stop, "rich": rich, "engines": engines, "rate": rate}
    fast, ev_fast, st_fast, _ = run(True, **kw)
    slow, ev_slow, st_slow, _ = run(False, **kw)
    assert fast == slow
    assert ev_fast == ev_slow
    assert st_fast == st_slow
    assert all(r[2] is not None and r[4] is not None for r in fast)
    if rich:  # the stop rules really fired inside the runs compared
        assert {r[5] for r in fast} == {"stop", "length"}


def test_fast_path_is_actually_used():
    *_, cl = run(True, blocks=400)
    # bursts run many steps per advance; the step count equals the slow path's
    *_, cl_slow = run(False, blocks=400)
    assert [e.num_steps for e in cl.engines] == [e.num_steps for e in cl_slow.engines]


def test_preemptions_happen_in_the_tight_case():
    _, _, stats, _ = run(True, blocks=45)
    assert sum(s.num_preemptions for s in stats) > 0


def test_deterministic_across_runs():
    assert run(True)[0] == run(True)[0]


def test_advancing_in_small_increments_equals_one_jump():
    def go(increments: bool) -> list[tuple]:
        e = VirtualEngine(make_engine(num_gpu_blocks=200, block_size=4))
        e.submit(EngineRequest("a", list(range(1, 40)), max_tokens=50, arrival_time=0.0))
        e.submit(EngineRequest("b", list(range(5, 30)), max_tokens=30, arrival_time=0.0))
        if increments:
            t = 0.0
            while e.core.has_unfinished():
                t += 0.0003
                e.advance_to(t)
        else:
            e.run_until_idle()
        return summary(e.records)

    assert go(True) == go(False)


def test_idle_engine_jumps_and_mid_step_arrival_waits_for_step_end():
    e = VirtualEngine(make_engine(num_gpu_blocks=200, block_size=4))
    e.advance_to(5.0)
    assert e.now == 5.0
    e.submit(EngineRequest("a", list(range(1, 60)), max_tokens=3, arrival_time=5.0))
    e.advance_to(5.0 + 1e-9)  # first step starts at 5.0 and overshoots
    step_end = e.now
    assert step_end > 5.0
    rec = e.submit(EngineRequest("b", [1, 2, 3], max_tokens=1, arrival_time=5.0 + 2e-9))
    e.run_until_idle()
    assert rec.first_token_time is not None and rec.first_token_time > step_end
    assert rec.ttft == pytest.approx(rec.first_token_time - (5.0 + 2e-9))
    a = e.records["a"]
    assert a.token_times[0] == a.first_token_time == step_end
    assert a.num_output_tokens == 3 and a.finish_reason == "length"
    assert a.tpot == pytest.approx((a.token_times[-1] - a.token_times[0]) / 2)
    assert a.token_times[0] < a.token_times[1] < a.token_times[2]


def test_prefix_hit_shortens_virtual_ttft():
    e = VirtualEngine(make_engine(num_gpu_blocks=500, block_size=4, max_num_batched_tokens=2048))
    prompt = list(range(1, 400))
    e.submit(EngineRequest("a", prompt, max_tokens=2, arrival_time=0.0))
    e.run_until_idle()
    e.submit(EngineRequest("b", prompt, max_tokens=2, arrival_time=10.0))
    e.run_until_idle()
    ra, rb = e.records["a"], e.records["b"]
    assert rb.num_cached_tokens > 0 and ra.num_cached_tokens == 0
    assert rb.ttft is not None and ra.ttft is not None and rb.ttft < ra.ttft


def test_abort_in_virtual_time_records_abort():
    e = VirtualEngine(make_engine(num_gpu_blocks=200, block_size=4))
    e.submit(EngineRequest("a", [1, 2, 3], max_tokens=100, arrival_time=0.0))
    e.advance_to(0.001)
    e.abort("a")
    assert e.records["a"].finish_reason == "abort"
    assert not e.core.has_unfinished()
    assert e.core.stats().kv_cache_usage == 0.0


def test_unsorted_trace_and_bad_engine_index_rejected():
    cl = VirtualCluster([VirtualEngine(make_engine())])
    with pytest.raises(ValueError, match="sorted"):
        cl.run_trace(
            [
                (0, EngineRequest("a", [1], max_tokens=1, arrival_time=2.0)),
                (0, EngineRequest("b", [1], max_tokens=1, arrival_time=1.0)),
            ]
        )
    with pytest.raises(ValueError, match="engine index"):
        cl.submit(3, EngineRequest("c", [1], max_tokens=1, arrival_time=3.0))


def test_realistic_engine_bursts_match_on_h100():
    def go(fast: bool) -> list[tuple]:
        cfg = EngineConfig.for_model("h100-80gb", "llama-3-8b", num_gpu_blocks=300)
        e = VirtualEngine(EngineCore(cfg, next_token=toy_next_token), fast=fast)
        for i in range(12):
            e.submit(
                EngineRequest(
                    f"r{i}", [i + 1] * (100 + 37 * i), max_tokens=200, arrival_time=0.05 * i
                )
            )
        e.run_until_idle()
        return summary(e.records)

    assert go(True) == go(False)


def test_builtin_hash_gives_the_same_simulation_as_sha256():
    def go(algo: str) -> list[tuple]:
        engines = []
        for _ in range(2):
            cfg = EngineConfig(
                "h100-80gb", "tiny", block_size=4, num_gpu_blocks=60, prefix_caching_hash_algo=algo
            )
            engines.append(VirtualEngine(EngineCore(cfg, next_token=toy_next_token)))
        return summary(VirtualCluster(engines).run_trace(trace(120, 3, 2)))

    sha = go("sha256")
    assert sha == go("builtin")
    assert any(r[7] > 0 for r in sha)  # the workload does hit the prefix cache


@pytest.mark.parametrize(
    "req_kwargs",
    [
        {"max_tokens": 70},
        {"max_tokens": 70, "min_tokens": 5, "stop_token_ids": frozenset(range(3, 400))},
        {"max_tokens": 70, "stop_token_ids": frozenset(range(3, 400))},
    ],
    ids=["length", "stop-after-min-tokens", "stop"],
)
def test_lone_request_fast_path_matches(req_kwargs):
    def go(fast: bool) -> tuple[list[tuple], int]:
        core = make_engine(num_gpu_blocks=40, block_size=4, eos_token_id=None)
        e = VirtualEngine(core, fast=fast)
        e.submit(EngineRequest("a", [7, 8, 9, 10, 11], arrival_time=0.0, **req_kwargs))
        e.run_until_idle()
        return summary(e.records), core.stats().generation_tokens_total

    assert go(True) == go(False)
