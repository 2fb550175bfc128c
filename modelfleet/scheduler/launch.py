"""``--launch-engines``: start one ``modelfleet engine`` process per static endpoint.

For local runs and benchmarks: the static fleet file already says everything an engine
simulator needs — the variant's AcceleratorProfile (``simulatorProfile``, else its name), the
pool's model and engine settings (served name, context length, block size, batch limits, KV
events), the port of each endpoint's URL. Each engine is a child process (``python -m
modelfleet.engine``; the scheduler does not import the engine package), started before the
scheduler and stopped with it.

The pool's ``model`` (a Hugging Face id) is mapped to the simulator's model table by name: the
longest table key that starts the id's last part, lower-cased
(``meta-llama/Llama-3.1-8B-Instruct`` → ``llama-3.1-8b``).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit

from modelfleet.api.names import PREFIX_HASH_ALGO, PREFIX_HASH_SEED
from modelfleet.scheduler.fleet import EndpointSpec, FleetSnapshot

__all__ = ["LaunchedEngine", "engine_command", "launch_engines", "stop_engines"]

#: The simulator's model names (``modelfleet engine --model``), kept in sync by a unit test.
SIM_MODELS = (
    "llama-3-70b", "llama-3-8b", "llama-3.1-70b", "llama-3.1-8b", "llama-3.2-1b",
    "llama-3.2-3b", "mistral-7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "tiny",
)  # fmt: skip


@dataclass
class LaunchedEngine:
    endpoint: EndpointSpec
    proc: subprocess.Popen[str]
    line: str
    log: IO[bytes]

    def stderr_tail(self, n: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]


def sim_model(model: str) -> str | None:
    """The simulator's model for a pool's ``model`` id (``None`` when none matches)."""
    tail = model.rstrip("/").rsplit("/", 1)[-1].lower()
    found = [m for m in SIM_MODELS if tail.startswith(m)]
    return max(found, key=len) if found else None


def engine_command(
    snapshot: FleetSnapshot, e: EndpointSpec, time_scale: float
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of the engine simulator for endpoint ``e``."""
    pool = snapshot.pools[e.pool_key]
    variant = next(v for v in pool.spec.variants if v.name == e.variant)
    profile = snapshot.profiles.get(variant.accelerator_profile)
    accelerator = (
        profile.spec.simulator_profile if profile and profile.spec.simulator_profile else None
    ) or variant.accelerator_profile
    model = sim_model(pool.spec.model)
    if model is None:
        raise ValueError(
            f"--launch-engines: ModelPool {e.pool}: no simulated model for {pool.spec.model!r} "
            f"(simulated: {', '.join(SIM_MODELS)})"
        )
    url = urlsplit(e.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1") or url.port is None:
        raise ValueError(
            f"--launch-engines: endpoint {e.id}: the URL must be a loopback address with a port, "
            f"got {e.url}"
        )
    eng = pool.spec.engine
    cmd = [
        sys.executable, "-m", "modelfleet.engine", "--accelerator", accelerator,
        "--model", model, "--served-model-name", pool.spec.served_model_name,
        "--host", url.hostname, "--port", str(url.port), "--time-scale", str(time_scale),
        "--max-model-len", str(eng.max_model_len), "--block-size", str(eng.block_size),
        "--max-num-seqs", str(eng.max_num_seqs),
        "--max-num-batched-tokens", str(eng.max_num_batched_tokens),
        "--tensor-parallel-size", str(variant.tensor_parallel_size),
        "--enable-prefix-caching" if eng.enable_prefix_caching else "--no-enable-prefix-caching",
        "--gpu-memory-utilization", str(eng.gpu_memory_utilization),
    ]  # fmt: skip
    m = re.match(r"^tcp://[^:]+:(\d+)$", e.kv_events)
    if m:
        cmd += ["--kv-events-port", m.group(1)]
    elif e.kv_events == "auto" or eng.kv_events:
        raise ValueError(
            f"--launch-engines: endpoint {e.id}: give kvEvents as tcp://127.0.0.1:PORT so the "
            "launched engine knows where to publish"
        )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if eng.kv_events:  # the block hashing the operator renders for a KV-event pool
        cmd += ["--prefix-caching-hash-algo", PREFIX_HASH_ALGO]
        env["PYTHONHASHSEED"] = PREFIX_HASH_SEED
    for var in eng.env:
        env[var.name] = var.value
    return cmd, env


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the engine die with the scheduler (Linux), so even a killed
    scheduler leaves no engine behind; libc is loaded here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def launch_engines(
    snapshot: FleetSnapshot,
    time_scale: float,
    timeout_s: float = 60.0,
    endpoints: Sequence[EndpointSpec] | None = None,
) -> list[LaunchedEngine]:
    """Start the engine of every endpoint of ``snapshot`` (or of ``endpoints``, which name its
    pools) and wait until each listens (``RuntimeError`` if not; none is left running then)."""
    chosen = snapshot.endpoints if endpoints is None else endpoints
    plans = [(e, *engine_command(snapshot, e, time_scale)) for e in chosen]
    out: list[LaunchedEngine] = []
    try:
        for e, cmd, env in plans:
            log = tempfile.TemporaryFile()
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
            out.append(LaunchedEngine(e, proc, "", log))
        deadline = time.monotonic() + timeout_s
        for le in out:
            assert le.proc.stdout is not None
            le.line = le.proc.stdout.readline().strip()
            if "listening on" not in le.line:
                le.proc.wait(5)
                raise RuntimeError(f"engine for {le.endpoint.id} did not start: {le.stderr_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("engines did not start in time")
    except BaseException:
        stop_engines(out)
        raise
    return out


def stop_engines(engines: list[LaunchedEngine], grace_s: float = 5.0) -> None:
    """SIGTERM every engine, then SIGKILL what is left after ``grace_s``."""
    for le in engines:
        if le.proc.poll() is None:
            le.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for le in engines:
        try:
            le.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            le.proc.kill()
            le.proc.wait()
        le.log.close()
