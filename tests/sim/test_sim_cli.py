"""`modelfleet simulate`: the local-fleet main job, its flags and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfleet.cli import main

pytestmark = pytest.mark.unit


def test_small_synthetic_run_compares_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    argv = ["simulate", "--conversations", "12", "--policies", "round-robin,modelfleet"]
    assert main([*argv, "--fleet", "h100-80gb=1,l40s=1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "on 2 engines (1×h100-80gb, 1×l40s)" in text
    assert "| round-robin |" in text and "| modelfleet |" in text
    assert "× the best baseline (round-robin)" in text
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"round-robin", "modelfleet"}
    for m in metrics.values():
        assert m["completed"] == m["requests"] > 0


def test_same_seed_same_result(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        out = tmp_path / f"{i}.json"
        argv = ["simulate", "--conversations", "8", "--policies", "power-of-two"]
        assert main([*argv, "--seed", "3", "--json", str(out)]) == 0
        runs.append(json.loads(out.read_text()))
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--fleet", "h100-80gb"], "expected ACCELERATOR=COUNT"),
        (["--fleet", "h100=x"], "expected ACCELERATOR=COUNT"),
        (["--policies", "fastest"], "unknown policy fastest"),
        (["--conversations", "0"], "must be > 0"),
        (["--compression", "abc"], "not a number"),
    ],
    ids=["fleet-no-count", "fleet-bad-count", "unknown-policy", "zero-conversations", "nan"],
)
def test_bad_flags_are_named(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--fleet", "tpu-v5=2"], "tpu-v5"),
        (["--trace", "sharegpt:x.json"], "expected synthetic, mooncake:PATH or azure:PATH"),
        (["--trace", "mooncake:/nonexistent/trace.jsonl"], "/nonexistent/trace.jsonl"),
    ],
    ids=["unknown-accelerator", "unknown-trace-kind", "missing-trace-file"],
)
def test_bad_inputs_exit_2_with_a_message(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--conversations", "4", *argv]) == 2
    assert needle in capsys.readouterr().err
