"""The migration planner's triggers on the live scheduler, against engine simulators.

One ``modelfleet scheduler --no-ray --control-port`` process over two pools of the same
shape, each one fast (H100) and one slow (L40S) real-time engine simulator, with a TPOT target
of 20 ms the slow engine misses (about 31 ms per token) and the fast one meets (about 8 ms):

* ``mig-on``: its RoutingPolicy enables migration (load-imbalance and SLO rescue) with
  ``maxConcurrent: 1``;
* ``mig-off``: its RoutingPolicy has no ``migration`` (the default: migration off).

In each pool the fast endpoint is drained over the control API while long greedy streams
start (so they all run on the slow one), then undrained: the planner, fed with what the
scheduler observes, should move streams from the slow engine to the fast one in ``mig-on`` and
never in ``mig-off``. Every stream must equal an unmigrated run on a reference engine.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from modelfleet.control import bearer
from modelfleet.control import control_pb2 as pb
from modelfleet.control import control_pb2_grpc as pb_grpc

from .conftest import free_port, start_scheduler, stop_scheduler, wait_listening
from .fleet_helpers import EngineProc, endpoints_yaml, fleet_yaml, pool_yaml, start_engine, stop_all
from .test_migration import Streamed, stream

pytestmark = pytest.mark.integration

TOKEN = "trigger-test-token"
CAP = 1


def _policy(name: str, migration: str) -> str:
    return f"""
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  modelNames: [{name}]
  defaultTargets: [{{pool: {name}}}]
  placement: {{profile: least-request}}
{migration}
"""


MIGRATION_ON = f"""  migration:
    enabled: true
    triggers: [load-imbalance, slo-rescue]
    maxConcurrent: {CAP}
    minGainMs: 200
"""


@dataclass
class TriggerFleet:
    url: str
    control: str
    #: pool -> (fast endpoint id, slow endpoint id)
    endpoints: dict[str, tuple[str, str]]
    reference: EngineProc
    proc: subprocess.Popen[str]

    def stub(self) -> pb_grpc.ControlStub:
        return pb_grpc.ControlStub(grpc.insecure_channel(self.control))

    def drain(self, endpoint: str) -> None:
        progress = list(
            self.stub().Drain(
                pb.DrainRequest(endpoint=endpoint, deadline_s=10, reason="manual"),
                metadata=bearer(TOKEN),
                timeout=40,
            )
        )
        assert progress[-1].state == pb.EMPTY, progress[-1]

    def undrain(self, endpoint: str) -> None:
        self.stub().Undrain(
            pb.UndrainRequest(endpoint=endpoint), metadata=bearer(TOKEN), timeout=10
        )

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
        return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TriggerFleet]:
    engines: dict[str, tuple[EngineProc, EngineProc]] = {}
    ref: EngineProc | None = None
    try:
        for name in ("mig-on", "mig-off"):
            engines[name] = (
                start_engine(f"{name}-8b", time_scale=1.0),
                start_engine(f"{name}-8b", accelerator="l40s", time_scale=1.0),
            )
        ref = start_engine("ref-8b", time_scale=0.02)
        config = tmp_path_factory.mktemp("triggers")
        docs: list[str] = []
        rows: list[tuple[str, str, EngineProc]] = []
        for name, (fast, slow) in engines.items():
            pool = pool_yaml(name, f"{name}-8b", {"h100": "h100-80gb", "l40s": "l40s"})
            docs.append(pool + "  slo: {ttftMs: 2000, tpotMs: 20}\n")
            docs.append(_policy(name, MIGRATION_ON if name == "mig-on" else ""))
            rows += [(name, "h100", fast), (name, "l40s", slow)]
        (config / "fleet.yaml").write_text(fleet_yaml(*docs, endpoints_yaml(rows)))
        port, cport = free_port(), free_port()
        os.environ["MODELFLEET_CONTROL_TOKEN"] = TOKEN
        try:
            proc = start_scheduler(config, port, "--no-ray", "--control-port", str(cport))
        finally:
            del os.environ["MODELFLEET_CONTROL_TOKEN"]
        try:
            url = wait_listening(proc)
            ids = {
                name: (fast.url.removeprefix("http://"), slow.url.removeprefix("http://"))
                for name, (fast, slow) in engines.items()
            }
            yield TriggerFleet(url, f"127.0.0.1:{cport}", ids, ref, proc)
        finally:
            rc, left = stop_scheduler(proc)
            assert rc == 0, f"scheduler exited with {rc}"
            assert not left, "processes outlived the scheduler:\n" + "\n".join(left)
    finally:
        stop_all([e for pair in engines.values() for e in pair] + ([ref] if ref else []))


def _body(model: str, kind: str, i: int, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
        "stream_options": {"include_usage": True},
    }
    words = " ".join(f"t{(i * 11 + k) % 89}" for k in range(30 + i % 20))
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": f"Trigger {i}: {words}"}]
    else:
        body["prompt"] = f"Trigger {i}: {words}"
    return body


def _sum(m: dict[str, float], name: str, *labels: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(name + "{") and all(x in k for x in labels))


async def _warm(fleet: TriggerFleet, client: httpx.AsyncClient, pool: str) -> None:
    """A few short streams on each endpoint of the pool (the other drained), so the
    scheduler has observed both engines' latencies: a learned model without evidence is too
    uncertain to justify a move (``modelfleet.policy.migration``)."""
    for other in fleet.endpoints[pool]:
        await asyncio.to_thread(fleet.drain, other)
        await asyncio.gather(
            *(stream(client, fleet.url, "completion", _body(pool, "completion", 900 + i, 40))
              for i in range(4))
        )  # fmt: skip
        await asyncio.to_thread(fleet.undrain, other)


async def _imbalanced(
    fleet: TriggerFleet, client: httpx.AsyncClient, pool: str, n: int
) -> tuple[list[Streamed], list[Streamed]]:
    """``n`` long streams started on the pool's slow endpoint (its fast one drained), then the
    fast one undrained; the streams, and their unmigrated runs on the reference engine."""
    fast, _slow = fleet.endpoints[pool]
    await _warm(fleet, client, pool)
    await asyncio.to_thread(fleet.drain, fast)
    kinds = ["chat" if i % 2 else "completion" for i in range(n)]
    bodies = [_body(pool, k, i, 300) for i, k in enumerate(kinds)]
    tasks = [
        asyncio.create_task(stream(client, fleet.url, k, b))
        for k, b in zip(kinds, bodies, strict=True)
    ]
    await asyncio.sleep(1.0)  # every stream is placed (on the slow endpoint) and streaming
    await asyncio.to_thread(fleet.undrain, fast)
    got = await asyncio.gather(*tasks)
    refs = [
        await stream(client, fleet.reference.url, k, {**b, "model": "ref-8b"})
        for k, b in zip(kinds, bodies, strict=True)
    ]
    return list(got), refs


def test_planned_moves_happen_live_identical_and_capped(fleet: TriggerFleet) -> None:
    """With migration on, the planner moves streams off the slow endpoint once the fast one
    is free, one at a time (the cap), and every stream equals its unmigrated run; with
    migration off (the other pool, same load, same time) nothing is planned or moved."""

    async def run() -> dict[str, tuple[list[Streamed], list[Streamed]]]:
        async with httpx.AsyncClient() as client:
            on, off = await asyncio.gather(
                _imbalanced(fleet, client, "mig-on", 6), _imbalanced(fleet, client, "mig-off", 6)
            )
            return {"mig-on": on, "mig-off": off}

    before = fleet.metrics()
    results = asyncio.run(run())
    after = fleet.metrics()

    def delta(name: str, *labels: str) -> float:
        return _sum(after, name, *labels) - _sum(before, name, *labels)

    for pool, (got, refs) in results.items():
        for g, r in zip(got, refs, strict=True):
            assert not g.errors, (pool, g.errors)
            assert g.ids == r.ids, f"{pool}: token ids differ from the unmigrated run"
            assert g.text == r.text and g.finish == r.finish == "length"
            assert g.usage is not None and g.usage["completion_tokens"] == 300
    # migration on: planned moves started and switched, by the planner's triggers
    started = delta("modelfleet_migration_plans_total", "pool=mig-on", "result=started")
    switched = sum(
        delta("modelfleet_migrations_total", "pool=mig-on", f"trigger={t}", "outcome=switched")
        for t in ("load-balance", "slo-rescue")
    )
    print(f"planned moves started {started:.0f}, switched {switched:.0f}")
    assert started >= 1 and switched >= 1, (started, switched)
    # ... never more than maxConcurrent at once
    starts = delta("modelfleet_migration_concurrency_count", "pool=mig-on")
    within = delta("modelfleet_migration_concurrency_bucket", "pool=mig-on", f"le={float(CAP)}")
    assert starts == started and within == starts
    # migration off: nothing planned, nothing moved (the drain moved nothing: no stream was
    # on the drained endpoint)
    assert delta("modelfleet_migration_plans_total", "pool=mig-off") == 0
    assert delta("modelfleet_migrations_total", "pool=mig-off") == 0
