"""The ``modelfleet engine`` command line: flag validation and config building."""

from __future__ import annotations

import argparse

import pytest

from modelfleet.engine.cli import add_arguments, build_config, run

pytestmark = pytest.mark.unit

BASE = ["--accelerator", "h100-80gb", "--model", "llama-3-8b"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelfleet engine")
    add_arguments(p)
    return p


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--accelerator", "tpu-v5", "--model", "llama-3-8b"],
         ["--accelerator", "tpu-v5", "h100-80gb", "a10g"]),
        (["--accelerator", "h100-80gb", "--model", "gpt-9"], ["--model", "gpt-9", "llama-3-70b"]),
        (["--model", "llama-3-8b"], ["--accelerator", "required"]),
        ([*BASE, "--max-model-len", "0"], ["--max-model-len", "positive integer"]),
        ([*BASE, "--num-gpu-blocks", "lots"], ["--num-gpu-blocks", "positive integer"]),
        ([*BASE, "--time-scale", "-1"], ["--time-scale", "positive number"]),
        ([*BASE, "--port", "70000"], ["--port", "0..65535"]),
        ([*BASE, "--gpu-memory-utilization", "1.5"], ["--gpu-memory-utilization", "(0, 1]"]),
        ([*BASE, "--kv-events-config", "{bad"], ["--kv-events-config", "JSON"]),
        ([*BASE, "--kv-events-config", '{"enable": true}'], ["--kv-events-config", "enable"]),
        ([*BASE, "--bogus-flag"], ["--bogus-flag"]),
    ],
    ids=["accelerator", "model", "missing", "max-model-len", "blocks", "time-scale", "port",
         "gpu-mem", "kv-json", "kv-key", "unknown-flag"],
)  # fmt: skip
def test_bad_flags_name_the_flag(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ei:
        _parser().parse_args(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, (f, err)


def test_config_from_flags_and_vllm_environment() -> None:
    args = _parser().parse_args(
        [*BASE, "-tp", "2", "--max-model-len", "4096", "--num-gpu-blocks-override", "500",
         "--served-model-name", "a", "b", "--kv-events-port", "5599", "--time-scale", "0.5",
         "--prefix-caching-hash-algo", "sha256_cbor", "--no-enable-prefix-caching"]
    )  # fmt: skip
    cfg = build_config(
        args, {"PYTHONHASHSEED": "12345", "VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": "0"}
    )
    e = cfg.engine
    assert (e.tensor_parallel_size, e.max_model_len, e.num_gpu_blocks) == (2, 4096, 500)
    assert e.hash_seed == "12345" and e.kv_events_int_hashes is False
    assert e.prefix_caching_hash_algo == "sha256_cbor" and e.enable_prefix_caching is False
    assert cfg.served_model_names == ("a", "b") and cfg.time_scale == 0.5
    assert cfg.kv_events.active and cfg.kv_events.endpoint == "tcp://*:5599"
    default = build_config(_parser().parse_args(BASE), {})
    assert default.engine.hash_seed is None and default.engine.kv_events_int_hashes is True
    assert not default.kv_events.active


def test_invalid_combination_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_parser().parse_args([*BASE, "-tp", "3"])) == 2
    assert "tensor_parallel_size must be 1, 2, 4 or 8, got 3" in capsys.readouterr().err
