"""``modelfleet up`` autoscales pools in scaling mode SLO with the operator's decision function.

One real ``modelfleet up`` (scheduler under uvicorn: the autoscaler talks to the scheduler's
gRPC control API, which is the same in a Serve replica; Ray's start is covered by
``test_up.py``) over one pool of L40S engines, ``minReplicas: 1``, ``maxReplicas: 2``, with a
tight SLO (TTFT 300 ms, TPOT 30 ms: one replica holds about 0.5 req/s by its prior), so:

1. a step of short requests at about 3 req/s asks for more than the maximum: exactly one
   engine is added (2 = maxReplicas, never more) and the scheduler places on it;
2. long streams then run on both engines; when the short requests stop and their arrivals
   leave the 4 s stats window, the autoscaler goes back to 1 (= minReplicas, never fewer):
   it drains an engine that holds streams (they migrate) and stops it. Every stream ends
   with all its tokens and every short request is answered: nothing is lost;
3. SIGTERM leaves no process behind, the added engine included.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from .procs import MODELFLEET, Running, children_of, free_port, port_free, wait_gone

pytestmark = pytest.mark.integration

FLEET = """\
apiVersion: modelfleet.io/v1alpha1
kind: AcceleratorProfile
metadata: {name: l40s}
spec:
  gpuProduct: NVIDIA-L40S
  memoryGiB: 48
  prefillSpeed: 0.37
  decodeSpeed: 0.26
  costPerHour: 1.2
  simulatorProfile: l40s
---
apiVersion: modelfleet.io/v1alpha1
kind: ModelPool
metadata: {name: p, namespace: default}
spec:
  model: meta-llama/Llama-3.1-8B-Instruct
  servedModelName: llama-3.1-8b
  variants:
    - {name: l40s, acceleratorProfile: l40s, minReplicas: 1, maxReplicas: 2}
  slo: {ttftMs: 300, tpotMs: 30}
  scaling:
    mode: SLO
    scaleUpStabilizationSeconds: 0
    scaleDownStabilizationSeconds: 0
    drainTimeoutSeconds: 60
---
apiVersion: modelfleet.io/v1alpha1
kind: RoutingPolicy
metadata: {name: p, namespace: default}
spec:
  modelNames: [m]
  defaultTargets: [{pool: p}]
  placement: {profile: least-request}
"""

LONG_TOKENS = 500
SCALE = re.compile(r"modelfleet up: scale p/l40s (\d+) -> (\d+) engines")


def _short(client: openai.OpenAI, i: int) -> str:
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4
    )
    return r.choices[0].finish_reason or ""


def _long(client: openai.OpenAI, i: int) -> tuple[int, str | None, int]:
    """(content chunks, finish reason, completion tokens of the usage chunk)."""
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": f"Tell a long story number {i}."}],
        max_tokens=LONG_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks, finish, tokens = 0, None, -1
    for c in stream:
        if c.choices:
            chunks += bool(c.choices[0].delta.content)
            finish = c.choices[0].finish_reason or finish
        if c.usage is not None:
            tokens = c.usage.completion_tokens
    return chunks, finish, tokens


def _engine_ports(up: Running) -> list[int]:
    """Ports of the engines ``up`` started so far, in order."""
    found = re.findall(r"engine p/l40s at http://127\.0\.0\.1:(\d+)", "\n".join(up.lines))
    return [int(p) for p in found]


def _engines(port: int) -> dict[str, float]:
    """Endpoint → modelfleet_endpoint_up from the scheduler's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.findall(r'modelfleet_endpoint_up\{[^}]*endpoint="([^"]+)"[^}]*\} (\S+)', text)
    return {ep: float(v) for ep, v in found}


def test_demand_step_adds_an_engine_and_scale_down_drains_without_loss(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    port = free_port()
    up = Running(
        [*MODELFLEET, "up", "-f", str(tmp_path), "--port", str(port), "--no-ray",
         "--scale-period", "0.5", "--stats-window", "4"]
    )  # fmt: skip
    try:
        up.wait_for(r"modelfleet up: ready in", timeout=240)
        first = _engine_ports(up)
        assert len(first) == 1  # minReplicas
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")

        # 1. A demand step: short requests at ~3 req/s until the second engine serves.
        stop_flood = threading.Event()
        short_results: list[str] = []
        errors: list[BaseException] = []

        def flood() -> None:
            i = 0
            while not stop_flood.is_set():
                i += 1
                try:
                    short_results.append(_short(client, i))
                except BaseException as e:
                    errors.append(e)
                stop_flood.wait(0.1)

        flooders = [threading.Thread(target=flood) for _ in range(2)]
        for t in flooders:
            t.start()
        try:
            grown = up.wait_for(SCALE.pattern, timeout=120)
            assert (grown.group(1), grown.group(2)) == ("1", "2")
            deadline = time.monotonic() + 60
            while len(_engine_ports(up)) < 2:
                assert time.monotonic() < deadline, "\n".join(up.lines)
                time.sleep(0.2)
            [added] = _engine_ports(up)[1:]
            deadline = time.monotonic() + 30
            while _engines(port).get(f"127.0.0.1:{added}") != 1.0:
                assert time.monotonic() < deadline, "the added engine never joined the fleet"
                time.sleep(0.2)

            # 2. Long streams on both engines, then the step ends.
            results: list[tuple[int, str | None, int]] = []

            def one(i: int) -> None:
                try:
                    results.append(_long(client, i))
                except BaseException as e:
                    errors.append(e)

            streams = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in streams:
                t.start()
            time.sleep(1.0)
        finally:
            stop_flood.set()
            for t in flooders:
                t.join(60)
        shrunk = up.wait_for(r"modelfleet up: scale p/l40s 2 -> (\d+) engines", timeout=120)
        assert shrunk.group(1) == "1"
        drained = up.wait_for(r"drained (\S+) \(p/l40s\): (\d+) migrated", timeout=120)
        for t in streams:
            t.join(180)
        assert not errors, errors
        assert all(f in ("stop", "length") for f in short_results) and len(short_results) > 10
        assert len(results) == 8
        assert all(r == (LONG_TOKENS, "length", LONG_TOKENS) for r in results), results
        # The drained engine held streams, and they moved: the removal was under load.
        assert int(drained.group(2)) >= 1, "\n".join(up.lines)
        gone = int(drained.group(1).rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while not port_free(gone):
            assert time.monotonic() < deadline, f"the drained engine on {gone} still runs"
            time.sleep(0.2)
        assert set(_engines(port)) == {f"127.0.0.1:{p}" for p in (first[0], added)} - {
            f"127.0.0.1:{gone}"
        }
        # minReplicas holds while idle; maxReplicas was never passed.
        time.sleep(3)
        moves = [(int(a), int(b)) for a, b in SCALE.findall("\n".join(up.lines))]
        assert moves == [(1, 2), (2, 1)], moves

        # 3. Stop: nothing left, the engine the autoscaler added included.
        tree = children_of(up.proc.pid)
        up.proc.send_signal(signal.SIGTERM)
        up.proc.wait(60)
        assert not wait_gone(tree, 15)
        assert up.proc.returncode == 0
        assert all(port_free(p) for p in (port, first[0], added))
    finally:
        up.stop()


@pytest.mark.parametrize("autoscale", [True, False], ids=["autoscale", "no-autoscale"])
def test_idle_pool_above_min_goes_to_min_unless_no_autoscale(
    tmp_path: Path, autoscale: bool
) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    port = free_port()
    up = Running(
        [*MODELFLEET, "up", "-f", str(tmp_path), "--port", str(port), "--no-ray",
         "--replicas", "2", "--scale-period", "0.5", "--stats-window", "4",
         *([] if autoscale else ["--no-autoscale"])]
    )  # fmt: skip
    try:
        up.wait_for(r"modelfleet up: ready in", timeout=240)
        if autoscale:
            up.wait_for(r"modelfleet up: scale p/l40s 2 -> 1 engines \(slo", timeout=60)
            up.wait_for(r"drained \S+ \(p/l40s\): 0 migrated", timeout=60)
            deadline = time.monotonic() + 30
            while len(_engines(port)) != 1:
                assert time.monotonic() < deadline, _engines(port)
                time.sleep(0.2)
        else:
            time.sleep(4)  # eight passes' worth
            assert not SCALE.search("\n".join(up.lines))
            assert list(_engines(port).values()) == [1.0, 1.0]
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(60)
        assert up.proc.returncode == 0
    finally:
        up.stop()
