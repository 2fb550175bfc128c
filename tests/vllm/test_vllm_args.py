"""The operator's rendered ``vllm serve`` arguments, parsed by vLLM's own CLI parser.

For every ModelPool example and variant, with KV events on and off, the container's args are
handed to ``vllm serve``'s argument parser (``ServeSubcommand.subparser_init`` =
``make_arg_parser`` on a ``FlexibleArgumentParser``), then to vLLM's own post-parse checks
(``validate_parsed_serve_args``) and to ``AsyncEngineArgs.from_cli_args``. One subprocess of
the real vLLM venv checks all of them and reports, per case, the values vLLM read back, which
must be the ones of the typed spec.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.example_objects import example_pools, example_profiles

from modelfleet.operator.builders import build_deployment

pytestmark = pytest.mark.vllm

CHECK = r"""
import json, sys
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser

out = {}
for case, argv in json.load(sys.stdin).items():
    parser = FlexibleArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="subparser")
    ServeSubcommand().subparser_init(sub)
    try:
        args = parser.parse_args(["serve", *argv])
        validate_parsed_serve_args(args)
        args.model = args.model_tag or args.model
        engine = AsyncEngineArgs.from_cli_args(args)
    except SystemExit as e:
        out[case] = {"error": f"argparse exit {e.code}"}
        continue
    except Exception as e:
        out[case] = {"error": repr(e)}
        continue
    kv = engine.kv_events_config
    out[case] = {
        "model": engine.model,
        "served_model_name": engine.served_model_name,
        "port": args.port,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "data_parallel_size": engine.data_parallel_size,
        "max_model_len": engine.max_model_len,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "block_size": engine.block_size,
        "max_num_seqs": engine.max_num_seqs,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "prefix_caching_hash_algo": engine.prefix_caching_hash_algo,
        "kv_events": None if kv is None else {
            "enable": kv.enable_kv_cache_events, "endpoint": kv.endpoint, "topic": kv.topic},
    }
print(json.dumps(out))
"""


def test_rendered_arguments_parse_with_vllms_own_parser(vllm_home: Path) -> None:
    pools, profiles = example_pools(), example_profiles()
    cases: dict[str, list[str]] = {}
    expected: dict[str, dict[str, object]] = {}
    for pool in pools.values():
        for variant in pool.spec.variants:
            profile = profiles[variant.accelerator_profile]
            for kv in (False, True):
                dep = build_deployment(pool, variant, profile, replicas=1, kv_events=kv)
                key = f"{pool.metadata.name}/{variant.name}/kv={kv}"
                cases[key] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
                eng = pool.spec.engine
                expected[key] = {
                    "model": cases[key][0],
                    "served_model_name": [pool.spec.served_model_name],
                    "port": eng.port,
                    "tensor_parallel_size": variant.tensor_parallel_size,
                    "data_parallel_size": variant.gpus_per_replica // variant.tensor_parallel_size,
                    "max_model_len": eng.max_model_len,
                    "gpu_memory_utilization": eng.gpu_memory_utilization,
                    "block_size": eng.block_size,
                    "max_num_seqs": eng.max_num_seqs,
                    "max_num_batched_tokens": eng.max_num_batched_tokens,
                    "enable_prefix_caching": eng.enable_prefix_caching,
                }
    proc = subprocess.run(
        [str(vllm_home / "venv" / "bin" / "python"), "-c", CHECK],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=300,
        # not HF_HUB_OFFLINE: offline, EngineArgs resolves model ids to cached snapshots
        env={"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(got) == set(cases)
    for key, want in expected.items():
        res = got[key]
        assert "error" not in res, f"{key}: vLLM refused {cases[key]}: {res['error']}"
        for field, value in want.items():
            assert res[field] == value, f"{key}: {field} = {res[field]!r}, want {value!r}"
        if key.endswith("kv=True"):
            assert res["kv_events"]["enable"] is True
            assert res["kv_events"]["endpoint"] == "tcp://*:5557"
            assert res["prefix_caching_hash_algo"] == "sha256_cbor"
        else:
            assert res["kv_events"] is None or res["kv_events"]["enable"] is False
