"""Engine-simulator fleets for the scheduler tests: real ``modelfleet engine`` processes.

Each engine is a subprocess on a free loopback port (``--port 0``; the port is read from the
line the engine prints when it listens), stopped by PID. :func:`fleet_yaml` writes the static
fleet configuration (profiles, pools, policies, endpoints) the scheduler reads.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_LISTEN = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
_KV = re.compile(r"kv events (tcp://[^\s,)]+)")


@dataclass
class EngineProc:
    """One running ``modelfleet engine``."""

    proc: subprocess.Popen[str]
    url: str
    kv: str | None
    accelerator: str
    served: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: the engine vanishes without closing its connections cleanly."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_engine(
    served: str,
    *,
    model: str = "llama-3-8b",
    accelerator: str = "h100-80gb",
    time_scale: float = 0.05,
    kv_events: bool = False,
    extra: Sequence[str] = (),
) -> EngineProc:
    cmd = [
        sys.executable, "-m", "modelfleet.engine", "--accelerator", accelerator,
        "--model", model, "--served-model-name", served, "--port", "0",
        "--time-scale", str(time_scale), *extra,
    ]  # fmt: skip
    if kv_events:
        cmd += ["--kv-events-port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = _LISTEN.search(line)
    if m is None:
        proc.kill()
        raise RuntimeError(f"engine did not start: {line!r}")
    kv = _KV.search(line)
    kv_url = kv.group(1).replace("tcp://0.0.0.0:", "tcp://127.0.0.1:") if kv else None
    return EngineProc(proc, m.group(1), kv_url, accelerator, served)


def stop_all(engines: Iterable[EngineProc]) -> None:
    for e in engines:
        e.stop()


PROFILES = """
apiVersion: modelfleet.io/v1alpha1
kind: AcceleratorProfile
metadata: {name: h100-80gb}
spec: {gpuProduct: NVIDIA-H100-80GB-HBM3, memoryGiB: 80, costPerHour: 3.9}
---
apiVersion: modelfleet.io/v1alpha1
kind: AcceleratorProfile
metadata: {name: l40s}
spec: {gpuProduct: NVIDIA-L40S, memoryGiB: 48, prefillSpeed: 0.37, decodeSpeed: 0.26,
       costPerHour: 1.2}
"""


def pool_yaml(name: str, served: str, variants: dict[str, str], **extra: str) -> str:
    """A ModelPool; ``variants`` maps variant name → AcceleratorProfile."""
    vs = "\n".join(
        f"    - {{name: {v}, acceleratorProfile: {p}, minReplicas: 1, maxReplicas: 4}}"
        for v, p in variants.items()
    )
    engine = extra.get("engine", "{}")
    return (
        textwrap.dedent(
            f"""
        apiVersion: modelfleet.io/v1alpha1
        kind: ModelPool
        metadata: {{name: {name}, namespace: default}}
        spec:
          model: {served}
          servedModelName: {served}
          engine: {engine}
          variants:
        """
        )
        + vs
        + "\n"
    )


def endpoints_yaml(rows: Sequence[tuple[str, str, EngineProc]], kv: bool = False) -> str:
    """StaticEndpoints for (pool, variant, engine) rows."""
    lines = []
    for pool, variant, e in rows:
        kv_part = f', kvEvents: "{e.kv}"' if kv and e.kv else ""
        lines.append(f'    - {{pool: {pool}, variant: {variant}, url: "{e.url}"{kv_part}}}')
    return (
        "apiVersion: modelfleet.io/v1alpha1\nkind: StaticEndpoints\n"
        "metadata: {name: engines, namespace: default}\nspec:\n  endpoints:\n"
        + "\n".join(lines)
        + "\n"
    )


def fleet_yaml(*docs: str) -> str:
    return "\n---\n".join(d.strip("\n") for d in (PROFILES, *docs)) + "\n"
