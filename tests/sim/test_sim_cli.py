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
    assert "on 2 engines (llama-3-8b: 1×h100-80gb, 1×l40s)" in text
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
        (["--conversations", "0"], "argument --conversations: must be a positive integer, got '0'"),
        (["--compression", "abc"], "argument --compression: must be a positive number, got 'abc'"),
        (["--fleet", "llama-3-70b/4:h100-80gb=1"], "expected MODEL/tpN"),
        (["--fleet", "gpt-9:h100-80gb=1"], "unknown model 'gpt-9'"),
        (["--prior-error", "l40s=-1.5"], "ERROR > -1"),
        (["--perf-model", "psychic"], "invalid choice"),
    ],
    ids=[
        "fleet-no-count",
        "fleet-bad-count",
        "unknown-policy",
        "zero-conversations",
        "nan",
        "pool-bad-tp",
        "pool-unknown-model",
        "prior-error-below-minus-one",
        "unknown-perf-model",
    ],
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


def test_refused_requests_are_failed_and_the_cli_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A max_model_len shorter than some requests: they fail, are counted, and the CLI says so."""
    out = tmp_path / "m.json"
    argv = ["simulate", "--conversations", "12", "--policies", "round-robin", "--json", str(out)]
    assert main([*argv, "--max-model-len", "1500"]) == 0
    err = capsys.readouterr().err
    metrics = json.loads(out.read_text())["round-robin"]
    failed = metrics["failed"]
    assert failed > 0
    assert metrics["completed"] + failed == metrics["requests"]
    assert f"round-robin: {failed} of {metrics['requests']} requests failed" in err
    assert metrics["ttft_s"]["unserved"] == failed
    assert metrics["attainment"] <= 1 - failed / metrics["requests"]


def test_no_warning_when_max_model_len_is_sized_from_the_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    argv = ["simulate", "--conversations", "12", "--policies", "round-robin", "--json", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "max_model_len" in captured.out
    m = json.loads(out.read_text())["round-robin"]
    assert m["failed"] == 0 and m["completed"] == m["requests"]


def test_a_trace_no_engine_can_hold_is_refused_naming_the_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "long.jsonl"
    trace.write_text(
        json.dumps({"timestamp": 0, "input_length": 100, "output_length": 10, "hash_ids": [1]})
        + "\n"
        + json.dumps(
            {
                "timestamp": 5,
                "input_length": 512 * 500,
                "output_length": 10,
                "hash_ids": list(range(2, 502)),
            }
        )
        + "\n"
    )
    argv = ["simulate", "--trace", f"mooncake:{trace}", "--fleet", "l40s=1"]
    assert main([*argv, "--policies", "round-robin"]) == 2
    err = capsys.readouterr().err
    assert "req-1 needs 256010 tokens" in err and "l40s" in err and "--max-model-len" in err


def test_two_pools_in_one_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.json"
    fleet = "llama-3-8b:h100-80gb=1,l40s=1;llama-3-70b/tp4:h100-80gb=1"
    argv = ["simulate", "--conversations", "16", "--fleet", fleet, "--json", str(out)]
    assert main([*argv, "--policies", "least-request,modelfleet"]) == 0
    text = capsys.readouterr().out
    assert "on 3 engines (llama-3-8b: 1×h100-80gb, 1×l40s; llama-3-70b TP4: 1×h100-80gb)" in text
    for m in json.loads(out.read_text()).values():
        assert m["completed"] == m["requests"] > 0
