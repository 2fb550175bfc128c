"""``modelfleet dev-cluster``: a local control plane for development, run in the background.

``python -m modelfleet.testing.cluster_cli`` is the same command (``add_arguments``/``run`` let
``modelfleet dev-cluster`` reuse it):

* ``up`` runs a :class:`~modelfleet.testing.cluster.Cluster` in the foreground until Ctrl-C or
  SIGTERM and records it in a state dir (default ``$MODELFLEET_CACHE/dev-cluster``);
  ``up --detach`` starts the same in the background and returns once it is ready;
* ``kubeconfig`` prints the running cluster's kubeconfig path
  (``export KUBECONFIG=$(modelfleet dev-cluster kubeconfig)``);
* ``down`` stops it (SIGTERM to the ``up`` process, which tears down; SIGKILL as a last resort).

The state dir holds ``state.json`` (pid of ``up``, readiness, server, component pids, workdir),
a stable copy of the kubeconfig, the component logs and ``up.log`` of a detached start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from modelfleet.testing.cluster import (
    DEFAULT_NODES,
    Cluster,
    ClusterError,
    cache_root,
    locate_binaries,
)
from modelfleet.testing.cluster_nodes import nodes_from_profiles

__all__ = ["add_arguments", "main", "run"]


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir).expanduser() if args.state_dir else cache_root() / "dev-cluster"


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_dir / "state.json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load_profile_docs(paths: Sequence[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
        for f in files:
            try:
                loaded = list(yaml.safe_load_all(f.read_text()))
            except (OSError, yaml.YAMLError) as err:
                raise ClusterError(f"--profiles {f}: {err}") from err
            docs.extend(d for d in loaded if isinstance(d, dict))
    if not any(d.get("kind") == "AcceleratorProfile" for d in docs):
        raise ClusterError(f"--profiles {' '.join(paths)}: no AcceleratorProfile found")
    return docs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``up`` / ``down`` / ``kubeconfig`` sub-commands to ``parser``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=None,
        help="where the running cluster is recorded (default: $MODELFLEET_CACHE/dev-cluster, "
        "i.e. ~/.cache/modelfleet/dev-cluster)",
    )
    sub = parser.add_subparsers(
        dest="cluster_action", metavar="{up,down,kubeconfig}", required=True
    )
    up = sub.add_parser(
        "up", parents=[common], help="start a cluster; runs until Ctrl-C/SIGTERM unless --detach"
    )
    up.add_argument(
        "--detach", action="store_true", help="run in the background; return when ready"
    )
    up.add_argument(
        "--profiles",
        nargs="+",
        metavar="PATH",
        default=None,
        help="AcceleratorProfile manifests (files or directories) to derive GPU nodes from; "
        "default: one node each of H100-80GB, A100-80GB, L40S, L4 plus a CPU node",
    )
    up.add_argument(
        "--no-build",
        action="store_true",
        help="fail instead of building the binaries when they are missing",
    )
    up.add_argument("--log-dir", default=None, help="keep component logs here (default: state dir)")
    down = sub.add_parser("down", parents=[common], help="stop the cluster started by `up`")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds before SIGKILL")
    sub.add_parser(
        "kubeconfig", parents=[common], help="print the running cluster's kubeconfig path"
    )


def run(args: argparse.Namespace) -> int:
    """Execute the sub-command parsed by :func:`add_arguments`; returns the exit code."""
    try:
        action = args.cluster_action
        if action == "up":
            return _cmd_detach(args) if args.detach else _cmd_up(args)
        if action == "down":
            return _cmd_down(args)
        if action == "kubeconfig":
            return _cmd_kubeconfig(args)
        print(f"unknown action {action!r}", file=sys.stderr)
        return 2
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _refuse_if_running(state_dir: Path) -> None:
    state = _read_state(state_dir)
    if state and _pid_alive(int(state.get("pid", 0))):
        raise ClusterError(
            f"a cluster is already running (pid {state['pid']}, state {state_dir}); "
            "stop it with `down` or pass another --state-dir"
        )


def _cmd_up(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state_dir.mkdir(parents=True, exist_ok=True)
    _refuse_if_running(state_dir)
    binaries = locate_binaries(build=not args.no_build)
    nodes = (
        nodes_from_profiles(_load_profile_docs(args.profiles)) if args.profiles else DEFAULT_NODES
    )
    log_dir = Path(args.log_dir).expanduser() if args.log_dir else state_dir / "logs"
    if log_dir.exists():
        shutil.rmtree(log_dir)

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    state: dict[str, Any] = {"pid": os.getpid(), "ready": False}
    _write_state(state_dir, state)
    cluster = Cluster(binaries, nodes, log_dir=log_dir)
    started = time.monotonic()
    try:
        with cluster:
            shutil.copyfile(cluster.kubeconfig, state_dir / "kubeconfig")
            state |= {
                "ready": True,
                "server": cluster.server,
                "kubeconfig": str(state_dir / "kubeconfig"),
                "workdir": str(cluster.workdir),
                "processes": cluster.pids(),
                "nodes": [n.name for n in cluster.nodes],
            }
            _write_state(state_dir, state)
            print(
                f"cluster ready in {time.monotonic() - started:.1f} s at {cluster.server} "
                f"(nodes: {', '.join(n.name for n in cluster.nodes)}; logs: {log_dir})\n"
                f"export KUBECONFIG={state_dir / 'kubeconfig'}\n"
                "Ctrl-C (or `down`) stops it.",
                flush=True,
            )
            while True:
                signal.pause()
    except KeyboardInterrupt:
        print("stopping cluster", flush=True)
    finally:
        for name in ("state.json", "kubeconfig"):
            (state_dir / name).unlink(missing_ok=True)
    return 0


def _cmd_detach(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state_dir.mkdir(parents=True, exist_ok=True)
    _refuse_if_running(state_dir)
    locate_binaries(build=not args.no_build)  # build here, in the foreground, if needed
    argv = [
        sys.executable,
        "-m",
        "modelfleet.testing.cluster_cli",
        "up",
        "--state-dir",
        str(state_dir),
    ]
    if args.profiles:
        argv += ["--profiles", *args.profiles]
    if args.log_dir:
        argv += ["--log-dir", args.log_dir]
    (state_dir / "state.json").unlink(missing_ok=True)
    with (state_dir / "up.log").open("wb") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = _read_state(state_dir)
        if state and state.get("ready") and state.get("pid") == child.pid:
            print(state["kubeconfig"])
            return 0
        if child.poll() is not None:
            log = (state_dir / "up.log").read_text(errors="replace")
            print(
                f"error: cluster failed to start (exit {child.returncode}):\n{log}", file=sys.stderr
            )
            return 1
        time.sleep(0.2)
    child.terminate()
    print(f"error: cluster not ready after 300 s; see {state_dir / 'up.log'}", file=sys.stderr)
    return 1


def _cmd_down(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state = _read_state(state_dir)
    if state is None:
        print(f"no cluster recorded in {state_dir}", file=sys.stderr)
        return 1
    pid = int(state.get("pid", 0))
    if pid and _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    # Last resort: the `up` process is gone or stuck. Kill component groups that still run
    # the recorded workdir (a pid alone may have been reused by an unrelated process).
    workdir = str(state.get("workdir", ""))
    for comp_pid in dict(state.get("processes") or {}).values():
        try:
            cmdline = Path(f"/proc/{comp_pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if workdir and workdir in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(comp_pid), signal.SIGKILL)
    if pid and _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for name in ("state.json", "kubeconfig"):
        (state_dir / name).unlink(missing_ok=True)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print("cluster stopped")
    return 0


def _cmd_kubeconfig(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state = _read_state(state_dir)
    if not state or not state.get("ready") or not _pid_alive(int(state.get("pid", 0))):
        print(f"no running cluster recorded in {state_dir}; start one with `up`", file=sys.stderr)
        return 1
    print(state["kubeconfig"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelfleet.testing.cluster_cli",
        description="A local Kubernetes control plane with simulated GPU nodes.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
