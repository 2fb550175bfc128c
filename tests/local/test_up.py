"""``modelfleet up``: refuses bad input before starting anything; serves the quickstart through
the real scheduler (Ray Serve) and engine simulators; applies a RoutingPolicy edit live; stops
everything on SIGTERM, Ctrl-C or the death of its parent, leaving no process behind."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import openai
import pytest

from modelfleet.api.modelpool import ModelPool
from modelfleet.local.plan import UpError, plan_replicas, read_manifests, write_fleet

from .procs import (
    MODELFLEET,
    ROOT,
    Running,
    alive,
    children_of,
    free_port,
    port_free,
    wait_gone,
)

QUICKSTART = ROOT / "examples" / "quickstart"


def _pool(variants: list[tuple[int, int]]) -> ModelPool:
    return ModelPool.model_validate(
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "ModelPool",
            "metadata": {"name": "p"},
            "spec": {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "servedModelName": "m",
                "variants": [
                    {"name": f"v{i}", "acceleratorProfile": "h100-80gb", "minReplicas": lo,
                     "maxReplicas": hi}
                    for i, (lo, hi) in enumerate(variants)
                ],
            },
        }
    )  # fmt: skip


@pytest.mark.unit
@pytest.mark.parametrize(
    ("variants", "replicas", "expected"),
    [
        ([(2, 4), (1, 2)], None, [2, 1]),
        ([(2, 4), (1, 2)], 3, [3, 2]),
        ([(2, 4), (1, 2)], 1, [2, 1]),
        ([(0, 3), (0, 2)], None, [1, 0]),
        ([(0, 3)], 5, [3]),
        ([(1, 1)], None, [1]),
    ],
    ids=["min", "asked-within-bounds", "asked-below-min", "all-zero-one-engine", "capped", "one"],
)
def test_plan_replicas(
    variants: list[tuple[int, int]], replicas: int | None, expected: list[int]
) -> None:
    got = plan_replicas([_pool(variants)], replicas)
    assert [n for *_, n in got] == expected
    assert [v for _, _, v, _ in got] == [f"v{i}" for i in range(len(variants))]


@pytest.mark.unit
def test_quickstart_plan_is_six_engines_on_two_gpu_types(tmp_path: Path) -> None:
    files, objects = read_manifests([str(QUICKSTART)])
    snapshot, plan = write_fleet(tmp_path, files, objects, None, set())
    assert len(plan) == len(snapshot.endpoints) == 6
    assert len({(e.namespace, e.pool) for e in plan}) == 3
    assert len({e.port for e in plan}) == 6
    gpus = {
        v.accelerator_profile
        for e in plan
        for v in snapshot.pools[(e.namespace, e.pool)].spec.variants
        if v.name == e.variant
    }
    assert gpus == {"h100-80gb", "l40s"}
    assert sorted(snapshot.public_models()) == ["chat", "code"]


@pytest.mark.unit
def test_unsimulated_model_is_refused_naming_the_pool(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(QUICKSTART, src)
    pools = src / "pools.yaml"
    pools.write_text(pools.read_text().replace("Qwen/Qwen2.5-7B-Instruct", "acme/Unknown-9B"))
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    files, objects = read_manifests([str(src)])
    with pytest.raises(UpError) as e:
        write_fleet(fleet, files, objects, None, set())
    assert "ModelPool coder" in e.value.problems[0]
    assert "acme/Unknown-9B" in e.value.problems[0]


def _run_up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODELFLEET, "up", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


@pytest.mark.integration
def test_port_in_use_is_one_line_and_nothing_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _run_up("--port", str(port))
    assert r.returncode == 2
    assert r.stdout == ""  # no engine was started: up prints a line per engine it starts
    assert r.stderr.splitlines() == [
        f"modelfleet up: --port {port}: 127.0.0.1:{port} is in use; pick another with --port"
    ]


@pytest.mark.integration
def test_invalid_manifest_is_one_line_naming_the_field(tmp_path: Path) -> None:
    src = tmp_path / "fleet"
    shutil.copytree(QUICKSTART, src)
    pools = src / "pools.yaml"
    pools.write_text(pools.read_text().replace("maxReplicas: 4", "maxReplicas: 1", 1))
    r = _run_up("-f", str(src), "--port", str(free_port()))
    assert r.returncode == 2
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    # The first problem, then how to see the others (the policies naming the refused pool).
    assert line == (
        f"modelfleet up: {pools}#0: ModelPool/chat-large: spec.variants[0].minReplicas: "
        "minReplicas must be <= maxReplicas (and 2 more: modelfleet validate --check-refs "
        f"{src})"
    )


def _start(src: Path, *extra: str, **popen: object) -> tuple[Running, int, list[int]]:
    port = free_port()
    up = Running(
        [*MODELFLEET, "up", "-f", str(src), "--port", str(port), "--time-scale", "0.05", *extra],
        **popen,
    )
    up.wait_for(r"modelfleet up: ready in", timeout=240)
    found = re.findall(r"engine \S+ at http://127\.0\.0\.1:(\d+)", "\n".join(up.lines))
    ports = [int(p) for p in found]
    return up, port, ports


def _stream_one(port: int, model: str) -> str:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def _assert_all_gone(up: Running, tree: list[int], scheduler_port: int, ports: list[int]) -> None:
    up.proc.wait(60)
    left = wait_gone(tree, 15)
    assert not left, f"left behind: {left}\n" + "\n".join(up.lines)
    assert all(port_free(p) for p in [scheduler_port, *ports])


@pytest.mark.integration
def test_up_serves_applies_policy_edits_and_sigterm_stops_everything(tmp_path: Path) -> None:
    src = tmp_path / "fleet"
    shutil.copytree(QUICKSTART, src)
    up, port, ports = _start(src)
    try:
        assert len(ports) == 6
        assert up.wait_for(r"OpenAI base URL (\S+)", 1).group(1) == f"http://127.0.0.1:{port}/v1"
        assert _stream_one(port, "chat")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        assert sorted(m.id for m in client.models.list()) == ["chat", "code"]
        # A live edit: the chat policy also answers "fast".
        policies = src / "policies.yaml"
        policies.write_text(policies.read_text().replace('["chat"]', '["chat", "fast"]'))
        deadline = time.monotonic() + 30
        while "fast" not in {m.id for m in client.models.list()}:
            assert time.monotonic() < deadline, "the policy edit was not applied"
            time.sleep(0.2)
        assert _stream_one(port, "fast")
        tree = children_of(up.proc.pid)
        assert len(tree) > 6  # the engines, Ray's processes and Serve's actors
        up.proc.send_signal(signal.SIGTERM)
        _assert_all_gone(up, tree, port, ports)
        assert up.proc.returncode == 0
        assert up.lines[-1] == "modelfleet up: stopped"
        # A private Ray stops whole: no Serve shutdown call, no raylet warning about it.
        assert not [line for line in up.lines if "graceful_shutdown" in line]
    finally:
        up.stop()


@pytest.mark.integration
def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    up, port, ports = _start(QUICKSTART, "--no-ray")
    try:
        tree = children_of(up.proc.pid)
        assert len(tree) == 6
        up.proc.send_signal(signal.SIGINT)
        _assert_all_gone(up, tree, port, ports)
        assert up.proc.returncode == 0
    finally:
        up.stop()


@pytest.mark.integration
def test_parent_death_stops_everything() -> None:
    port = free_port()
    parent = Running(
        ["bash", "-c", f"{' '.join(MODELFLEET)} up --no-ray --time-scale 0.05 --port {port} & wait"]
    )
    try:
        parent.wait_for(r"modelfleet up: ready in", timeout=240)
        [up_pid] = [p for p in children_of(parent.proc.pid) if p in _direct(parent.proc.pid)]
        tree = [up_pid, *children_of(up_pid)]
        assert len(tree) == 7
        parent.proc.kill()  # SIGKILL: the parent cannot pass anything on
        parent.proc.wait(10)
        left = wait_gone(tree, 30)
        assert not left, f"left behind: {left}\n" + "\n".join(parent.lines)
        assert not alive(up_pid)
        assert port_free(port)
    finally:
        parent.stop()


def _direct(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(d.name))
            except OSError:
                continue
    return out
