"""Timeline of ``bash scripts/run.sh`` to its first streamed answer (bench/results/local-start.md).

    python3 bench/local_start.py [--label NAME] [-- COMMAND ...]   # default: bash scripts/run.sh

Runs the command in its own process group, stamps every output line with the seconds since the
start, and meanwhile (every 0.1 s) watches the process tree for the phases that print nothing:
the first engine simulator, Ray's GCS and raylet, Ray's agents, Serve's controller, proxy and
the scheduler replica. After the ``self-check:`` line it reads the CPU seconds of every process
still in the tree (a figure that depends less on the machine's load than the wall time), then
sends SIGINT to the group as Ctrl-C would and waits for the exit. Load averages from
``/proc/loadavg`` are printed before and after.

Only Linux (``/proc``). Stdlib only, so it runs before any venv exists (the cold case).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: Process-tree phases: label -> a substring of the process's command line.
MARKERS = {
    "engine simulator started": "modelfleet.engine",
    "Ray GCS started": "gcs_server",
    "raylet started": "raylet/raylet",
    "Ray dashboard agent": "ray::DashboardAgent",
    "Serve controller": "ray::ServeController",
    "Serve proxy": "ray::ProxyActor",
    "scheduler replica": "ray::ServeReplica",
}
TICKS = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> dict[int, str]:
    """pid -> command line of ``root`` and its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(d.name)] = int(fields[1])
    keep = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                grew = True
    out = {}
    for pid in keep:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        out[pid] = raw.replace(b"\0", b" ").decode(errors="replace")
    return out


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="run")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("command", nargs="*", default=["bash", "scripts/run.sh"])
    args = p.parse_args()
    print(f"# {args.label}: {' '.join(args.command)}; load average before: {_load()}")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        args.command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            lines = _tree(proc.pid).values()
            for label, needle in MARKERS.items():
                if label not in seen and any(needle in c for c in lines):
                    seen[label] = time.monotonic() - t0
                    print(f"{seen[label]:7.2f} [tree] {label}", flush=True)

    threading.Thread(target=watch, daemon=True).start()
    assert proc.stdout is not None
    answered = None
    for line in proc.stdout:
        now = time.monotonic() - t0
        print(f"{now:7.2f} {line.rstrip()[:150]}", flush=True)
        if line.startswith("self-check:"):
            answered = now
            break
        if now > args.timeout:
            break
    done.set()
    tree = _tree(proc.pid)
    groups: dict[str, float] = {}
    for pid, cmd in tree.items():
        key = next((k for k, n in MARKERS.items() if n in cmd), None)
        if key is None:
            key = "modelfleet up (driver)" if " up " in f"{cmd} " else "other"
        groups[key] = groups.get(key, 0.0) + _cpu_s(pid)
    print(f"# CPU seconds of the live processes at the answer: {sum(groups.values()):.1f}")
    for key, cpu in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"#   {key}: {cpu:.1f}")
    os.killpg(proc.pid, signal.SIGINT)
    for line in proc.stdout:
        print(f"{time.monotonic() - t0:7.2f} {line.rstrip()[:150]}", flush=True)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    print(
        f"# {args.label}: first streamed answer at "
        f"{'NONE' if answered is None else f'{answered:.1f} s'}; exit {code}; "
        f"load average after: {_load()}"
    )
    return 0 if answered is not None else 1


if __name__ == "__main__":
    sys.exit(main())
