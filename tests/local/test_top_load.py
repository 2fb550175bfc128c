"""``modelfleet load`` and ``modelfleet top`` against a running ``modelfleet up``, as a person
would use them: load replays the synthetic trace and writes its table and PNG; top runs in a
real terminal (tmux) and its screen is read while the fleet is under load."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.local.top import histogram_quantile, parse_scheduler

from .procs import MODELFLEET, ROOT, Running, free_port


@pytest.mark.unit
@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ({}, 0.5, None),
        ({0.1: 0.0, 1.0: 0.0, math.inf: 0.0}, 0.5, None),
        ({0.1: 5.0, 1.0: 10.0, math.inf: 10.0}, 0.5, 0.1),
        ({0.1: 5.0, 1.0: 10.0, math.inf: 10.0}, 0.99, 1.0),
        ({0.1: 0.0, 1.0: 0.0, math.inf: 4.0}, 0.5, 1.0),
    ],
    ids=["empty", "all-zero", "p50-first-bucket", "p99-second", "overflow-largest-bound"],
)
def test_histogram_quantile(buckets: dict[float, float], q: float, expected: float | None) -> None:
    assert histogram_quantile(buckets, q) == expected


@pytest.mark.unit
def test_parse_scheduler_sums_slo_classes_and_reads_instances() -> None:
    text = "\n".join(
        [
            'modelfleet_endpoint_up{pool="a",variant="h100",endpoint="127.0.0.1:1"} 1.0',
            'modelfleet_endpoint_up{pool="a",variant="h100",endpoint="127.0.0.1:2"} 0.0',
            'modelfleet_inflight_requests{pool="a",endpoint="127.0.0.1:1"} 3.0',
            'modelfleet_requests_total{model="m",pool="a",variant="h100",slo_class="x",'
            'outcome="ok"} 4.0',
            'modelfleet_requests_total{model="m",pool="a",variant="h100",slo_class="y",'
            'outcome="error"} 1.0',
            'modelfleet_ttft_seconds_bucket{pool="a",variant="h100",slo_class="x",le="0.5"} 2.0',
            'modelfleet_ttft_seconds_bucket{pool="a",variant="h100",slo_class="y",le="0.5"} 1.0',
            'modelfleet_ttft_seconds_bucket{pool="a",variant="h100",slo_class="x",le="+Inf"} 3.0',
        ]
    )
    s = parse_scheduler(text + "\n", at=1.0)
    assert s.up == {"127.0.0.1:1": ("a", "h100", True), "127.0.0.1:2": ("a", "h100", False)}
    assert s.inflight == {"127.0.0.1:1": 3.0}
    assert s.requests == {("a", "h100"): 5.0}
    assert s.errors == {("a", "h100"): 1.0}
    assert s.ttft == {("a", "h100"): {0.5: 3.0, math.inf: 3.0}}
    assert s.migrations is None


@pytest.fixture(scope="module")
def fleet() -> Iterator[int]:
    """``modelfleet up`` on the quickstart (uvicorn ingress: the same app, no Ray start-up;
    no autoscaling: the view is checked against the six engines it starts)."""
    port = free_port()
    argv = ["--no-ray", "--no-autoscale", "--time-scale", "0.2", "--port", str(port)]
    up = Running([*MODELFLEET, "up", *argv])
    try:
        up.wait_for(r"modelfleet up: ready in", timeout=240)
        yield port
    finally:
        up.proc.send_signal(signal.SIGTERM)
        try:
            up.proc.wait(60)
        finally:
            up.stop()


@pytest.mark.integration
def test_load_prints_a_table_and_writes_the_cdf_png(fleet: int, tmp_path: Path) -> None:
    out = tmp_path / "load"
    r = subprocess.run(
        [*MODELFLEET, "load", "--url", f"http://127.0.0.1:{fleet}/v1", "--duration", "8",
         "--speed", "2", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    for header in ("model", "TTFT p50", "TTFT p99", "TPOT p50", "E2E p99"):
        assert header in r.stdout
    rows = {row["model"]: row for row in json.loads((out / "summary.json").read_text())["rows"]}
    assert set(rows) == {"chat", "code", "all"}
    assert rows["all"]["requests"] > 5
    assert rows["all"]["errors"] == 0
    assert 0 < rows["all"]["ttft_p50_s"] <= rows["all"]["ttft_p99_s"] <= rows["all"]["e2e_p99_s"]
    png = (out / "latency-cdf.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


@pytest.mark.integration
def test_load_names_an_unknown_model(fleet: int, tmp_path: Path) -> None:
    r = subprocess.run(
        [*MODELFLEET, "load", "--url", f"http://127.0.0.1:{fleet}/v1", "--model", "chat,nope",
         "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "serves chat, code; not nope" in r.stderr


def _screen(server: str) -> str:
    return subprocess.run(
        ["tmux", "-L", server, "capture-pane", "-p", "-t", "top"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


@pytest.mark.integration
def test_top_shows_the_fleet_under_load_in_a_terminal(fleet: int, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    load = Running(
        [*MODELFLEET, "load", "--url", f"http://127.0.0.1:{fleet}/v1", "--duration", "60",
         "--speed", "2", "--out", str(tmp_path)],
    )  # fmt: skip
    server = f"mf-top-{uuid.uuid4().hex[:8]}"
    # The pane's own size, not a COLUMNS inherited from the test run.
    top = " ".join(
        ["env -u COLUMNS -u LINES", *MODELFLEET, "top", "--url", f"http://127.0.0.1:{fleet}"]
    )
    subprocess.run(
        ["tmux", "-L", server, "new-session", "-d", "-s", "top", "-x", "170", "-y", "40",
         "-c", str(ROOT), top],
        check=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        screen = ""
        while time.monotonic() < deadline:
            time.sleep(1)
            screen = _screen(server)
            rows = [ln for ln in screen.splitlines() if ln.startswith("│ chat-large")]
            # Under load: some variant has a request rate and TTFT percentiles.
            if any("0.00" not in ln.split("│")[9] and "-/-" not in ln for ln in rows):
                break
        else:
            raise AssertionError("top never showed the fleet under load:\n" + screen)
        assert "instances ready 6/6" in screen
        assert "cost $15.30/h" in screen  # 3 H100 replicas x 3.90 + 3 L40S x 1.20
        for pool in ("chat-large", "chat-small", "coder"):
            assert f"│ {pool}" in screen
        assert screen.count("│ 127.0.0.1:") == 6
        assert "(2000)" in screen and "(60)" in screen  # SLOs from the manifests
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], check=False)
        load.proc.send_signal(signal.SIGINT)
        try:
            load.proc.wait(30)
        finally:
            load.stop()
