"""The scheduler's integration tier: one ``modelfleet scheduler`` (real Ray Serve) per session.

Ray starts slowly (a local cluster plus Serve take 10-25 s on 2 cores), so the session shares
one scheduler process, started by its own command line over a fleet of six engine simulators:

========  ============  ======================  ==========================================
pool      engines       served model            public names (RoutingPolicy)
========  ============  ======================  ==========================================
big       2 × H100      big-8b (ts 0.02)        chat (3:1 with small)
small     1 × L40S      small-3b (ts 0.02)      chat, switch (edited live by a test)
coder     1 × L40S      coder-7b (ts 0.02)      code (cascade: coder, then big), switch
fragile   2 × L40S      fragile-8b (ts 1.0)     fragile (least-request; a test kills one)
steady    2 × H100      steady-8b (ts 1.0)      steady
========  ============  ======================  ==========================================

``ts`` is the engine's ``--time-scale``: the fast engines keep functional tests short; the
real-time ones produce tokens at a GPU's pace (Serve's HTTP proxy relays a few thousand
chunks a second on this machine, far fewer than engines at ``ts 0.02`` produce).

The fixture stops the scheduler with SIGINT at the end and fails if it exits non-zero or
leaves a process of its Ray session behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.scheduler_process import (
    free_port,
    stop_scheduler,
    wait_listening,
)

from .fleet_helpers import EngineProc, endpoints_yaml, fleet_yaml, pool_yaml, start_engine, stop_all

POLICIES = """
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: chat, namespace: default}
spec:
  modelNames: [chat]
  defaultTargets: [{pool: big, weight: 3}, {pool: small, weight: 1}]
---
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: code, namespace: default}
spec:
  modelNames: [code]
  defaultTargets: [{pool: coder}, {pool: big}]
  selection: {strategy: cascade}
---
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: fragile, namespace: default}
spec:
  modelNames: [fragile]
  defaultTargets: [{pool: fragile}]
  placement: {profile: least-request}
---
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: steady, namespace: default}
spec:
  modelNames: [steady]
  defaultTargets: [{pool: steady}]
"""

SWITCH = """apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {{name: switch, namespace: default}}
spec:
  modelNames: [switch]
  defaultTargets: [{{pool: {pool}}}]
"""


LIVE_CONTROL_TOKEN = "live-control-token"


@dataclass
class LiveScheduler:
    url: str
    proc: subprocess.Popen[str]
    config: Path
    engines: dict[str, list[EngineProc]]
    control: str = ""  # host:port of its gRPC control API (token LIVE_CONTROL_TOKEN)

    def switch_to(self, pool: str) -> None:
        """Rewrite the ``switch`` policy (atomically, as an editor's save does)."""
        tmp = self.config / ".switch.yaml.tmp"
        tmp.write_text(SWITCH.format(pool=pool))
        os.replace(tmp, self.config / "switch.yaml")

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
        return out


def start_scheduler(config: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    """Start ``modelfleet scheduler --config config``; its log goes to ``config.parent/*.log``."""
    with (config.parent / f"scheduler-{port}.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "modelfleet.cli", "scheduler", "--config", str(config),
             "--port", str(port), *extra],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveScheduler]:
    engines: dict[str, list[EngineProc]] = {}
    try:
        engines["big"] = [start_engine("big-8b", time_scale=0.02) for _ in range(2)]
        engines["small"] = [
            start_engine("small-3b", model="llama-3.2-3b", accelerator="l40s", time_scale=0.02)
        ]
        engines["coder"] = [
            start_engine("coder-7b", model="qwen2.5-7b", accelerator="l40s", time_scale=0.02)
        ]
        engines["fragile"] = [
            start_engine("fragile-8b", accelerator="l40s", time_scale=1.0) for _ in range(2)
        ]
        engines["steady"] = [start_engine("steady-8b", time_scale=1.0) for _ in range(2)]
        config = tmp_path_factory.mktemp("fleet")
        variant = {
            "big": "h100", "small": "l40s", "coder": "l40s", "fragile": "l40s", "steady": "h100"
        }  # fmt: skip
        profile = {"h100": "h100-80gb", "l40s": "l40s"}
        pools = [
            pool_yaml(p, es[0].served, {variant[p]: profile[variant[p]]})
            for p, es in engines.items()
        ]
        rows = [(p, variant[p], e) for p, es in engines.items() for e in es]
        (config / "fleet.yaml").write_text(fleet_yaml(*pools, POLICIES, endpoints_yaml(rows)))
        (config / "switch.yaml").write_text(SWITCH.format(pool="small"))
        port, cport = free_port(), free_port()
        token_file = tmp_path_factory.mktemp("control") / "token"
        token_file.write_text(LIVE_CONTROL_TOKEN + "\n")
        proc = start_scheduler(
            config, port, "--max-body-bytes", "1048576", "--control-port", str(cport),
            "--control-token-file", str(token_file),
        )  # fmt: skip
        try:
            url = wait_listening(proc)
            yield LiveScheduler(url, proc, config, engines, f"127.0.0.1:{cport}")
        finally:
            rc, left = stop_scheduler(proc)
            assert rc == 0, f"scheduler exited with {rc}"
            assert not left, "processes outlived the scheduler:\n" + "\n".join(left)
    finally:
        stop_all(e for es in engines.values() for e in es)
