"""``modelfleet up``: the whole system on one machine, from the manifests a cluster would use.

Composition root of the local default::

    modelfleet up [-f DIR_OR_FILE ...] [--port 8000] [--replicas N] [--time-scale X]
                  [--no-autoscale] [--scale-period S] [--stats-window S]

1. Check, before anything starts (one line on stderr, exit 2): the manifests
   (:mod:`modelfleet.local.plan`), the scheduler's port, the simulator's support of every model.
2. Start one engine simulator per replica of each variant, with the variant's accelerator
   timing (:func:`modelfleet.scheduler.launch.launch_engines`, on free loopback ports), in a
   thread (:class:`modelfleet.local.scale.EngineFleet`), while
3. the scheduler runs in this process with static discovery over the fleet folder
   (:func:`modelfleet.scheduler.cli.run`): a private local Ray (its files under this run's
   temporary folder) and Ray Serve, or uvicorn with ``--no-ray``. Edits of the manifest files
   apply live through the scheduler's file watcher. Its gRPC control API listens on a free
   loopback port with a token written to this run's folder.
4. Print the OpenAI base URL and a ready line once ``/v1/models`` answers and the scheduler
   sees every engine healthy.
5. Unless ``--no-autoscale``, the engine thread then autoscales every pool in scaling mode
   SLO as the operator would: the operator's decision function on the scheduler's ``Stats``
   every ``--scale-period`` seconds, new engines joining the static fleet live, removed ones
   drained first (:mod:`modelfleet.local.scale`).

Ctrl-C, SIGTERM and the death of the parent process (Linux: ``PR_SET_PDEATHSIG`` turns it
into a SIGTERM) stop the scheduler, Ray and the engines; the engines also die with this
process if it is killed outright. Exit 0 after a requested stop.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfleet import cliargs
from modelfleet.local.plan import (
    UpError,
    check_port_free,
    read_manifests,
    reserve_ports,
    write_fleet,
)

if TYPE_CHECKING:
    from modelfleet.local.scale import EngineFleet

__all__ = ["add_arguments", "default_manifests", "run"]

QUICKSTART = Path("examples") / "quickstart"


def default_manifests() -> Path | None:
    """``examples/quickstart`` of the working directory, else of the source checkout."""
    if QUICKSTART.is_dir():
        return QUICKSTART
    source = Path(__file__).resolve().parents[2] / QUICKSTART
    return source if source.is_dir() else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f", "--filename", dest="paths", action="append", metavar="DIR_OR_FILE",
        help="AcceleratorProfile, ModelPool and RoutingPolicy manifests, files or folders "
        "(repeatable; default: examples/quickstart)",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="scheduler bind address (127.0.0.1)")
    p.add_argument("--port", type=cliargs.port, default=8000, help="scheduler port (8000)")
    p.add_argument(
        "--replicas", type=cliargs.positive_int, default=None, metavar="N",
        help="engines per variant, within its minReplicas..maxReplicas (default: minReplicas)",
    )  # fmt: skip
    p.add_argument(
        "--time-scale", type=cliargs.positive_float, default=1.0, metavar="X",
        help="engine clock: 0.1 runs ten times faster than the modelled GPUs (default 1.0)",
    )  # fmt: skip
    p.add_argument(
        "--no-autoscale", action="store_true",
        help="keep the engines it starts: no autoscaling of pools in scaling mode SLO",
    )  # fmt: skip
    p.add_argument(
        "--scale-period", type=cliargs.positive_float, default=2.0, metavar="S",
        help="seconds between autoscaling decisions (2)",
    )  # fmt: skip
    p.add_argument(
        "--stats-window", type=cliargs.positive_float, default=30.0, metavar="S",
        help="the scheduler's stats window the autoscaler reads, seconds (30)",
    )  # fmt: skip
    p.add_argument("--no-ray", action="store_true", help="serve with uvicorn, without Ray")
    p.add_argument(
        "--ray-cpus", type=cliargs.positive_int, default=2, help="CPUs of the local Ray (2)"
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


#: A private single-node Ray needs none of this: no usage report sent home at start.
_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
#: The autoscaler's gRPC channel is open while engines are forked (and exec at once), so
#: gRPC's fork handlers have nothing to protect and would only log that they skip.
_GRPC_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "false"}


def _fail(problems: list[str], paths: list[str]) -> int:
    more = len(problems) - 1
    tail = f" (and {more} more: modelfleet validate --check-refs {' '.join(paths)})" if more else ""
    print(f"modelfleet up: {problems[0]}{tail}", file=sys.stderr, flush=True)
    return 2


_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _announce_when_ready(
    host: str,
    port: int,
    models: list[str],
    engines: EngineFleet,
    n_engines: int,
    started: float,
    done: threading.Event,
) -> Callable[[], None]:
    """A thread body printing the ready lines once the engines run, ``/v1/models`` answers and
    the scheduler sees every engine healthy (``modelfleet_endpoint_up``)."""
    import httpx

    from modelfleet.local.top import parse_scheduler

    local = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    base = f"http://{local}:{port}"

    def watch() -> None:
        while not engines.launched.wait(0.2):
            if done.is_set():
                return
        if engines.error:
            return
        while not done.wait(0.2):
            try:
                if httpx.get(f"{base}/v1/models", timeout=2.0).status_code != 200:
                    continue
                m = httpx.get(f"{base}/metrics", timeout=2.0)
                up = parse_scheduler(m.text, 0.0).up.values() if m.status_code == 200 else []
            except (httpx.HTTPError, ValueError):
                continue
            # The autoscaler may already have removed an engine: count the engines running now.
            if sum(ok for *_, ok in up) < min(n_engines, len(engines.engines)):
                continue
            print(f"modelfleet up: OpenAI base URL {base}/v1", flush=True)
            print(
                f"modelfleet up: ready in {time.monotonic() - started:.1f} s; models "
                f"{', '.join(models)}; Ctrl-C stops everything",
                flush=True,
            )
            return

    return watch


def _scheduler_args(
    folder: Path, args: argparse.Namespace, control: tuple[int, Path] | None
) -> argparse.Namespace:
    from modelfleet.scheduler import cli as scheduler_cli

    p = argparse.ArgumentParser(prog="modelfleet scheduler")
    scheduler_cli.add_arguments(p)
    argv = ["--config", str(folder), "--host", args.host, "--port", str(args.port)]
    argv += ["--ray-cpus", str(args.ray_cpus), "--log-level", args.log_level]
    if control is not None:
        argv += ["--control-port", str(control[0]), "--control-token-file", str(control[1])]
    if args.no_ray:
        argv.append("--no-ray")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    _stop_with_parent()
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    if args.paths:
        paths = list(args.paths)
    else:
        found = default_manifests()
        if found is None:
            print(
                "modelfleet up: no examples/quickstart here; give the manifests with -f DIR",
                file=sys.stderr,
            )
            return 2
        paths = [str(found)]
    folder = Path(tempfile.mkdtemp(prefix="modelfleet-up-"))
    engines: EngineFleet | None = None
    done = threading.Event()
    try:
        try:
            files, objects = read_manifests(paths)
            check_port_free(args.host, args.port)
            fleet = folder / "fleet"
            fleet.mkdir()
            snapshot, plan = write_fleet(fleet, files, objects, args.replicas, {args.port})
        except UpError as e:
            return _fail(e.problems, paths)
        gpus = {
            v.accelerator_profile
            for e in snapshot.endpoints
            for v in snapshot.pools[e.pool_key].spec.variants
            if v.name == e.variant
        }
        print(
            f"modelfleet up: starting {len(plan)} engines ({len(snapshot.pools)} pools, "
            f"{len(gpus)} GPU types) from {', '.join(paths)}",
            flush=True,
        )
        for name, value in _GRPC_ENV.items():
            os.environ.setdefault(name, value)
        from modelfleet.local.scale import AutoscaleSettings, EngineFleet

        engine_ports = {e.port for e in plan}
        autoscale, control = None, None
        if not args.no_autoscale:
            token_file = folder / "control-token"
            token_file.write_text(secrets.token_urlsafe(24))
            token_file.chmod(0o600)
            [control_port] = reserve_ports(1, {args.port, *engine_ports})
            control = (control_port, token_file)
            local = "127.0.0.1" if args.host in ("0.0.0.0", "", "::") else args.host
            autoscale = AutoscaleSettings(
                f"{local}:{control_port}",
                token_file.read_text(),
                period_s=args.scale_period,
                window_s=args.stats_window,
            )
        # The engines start first, so that their start overlaps the scheduler's imports and
        # Ray's, which take most of the time to ready.
        engines = EngineFleet(
            fleet,
            snapshot,
            plan,
            args.time_scale,
            avoid_ports={args.port, *engine_ports, *([control[0]] if control else [])},
            autoscale=autoscale,
        )
        from modelfleet.scheduler import cli as scheduler_cli

        for name, value in _RAY_ENV.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("RAY_TMPDIR", str(folder))  # this run's Ray files, removed below
        models = sorted(snapshot.public_models())
        threading.Thread(
            target=_announce_when_ready(
                args.host, args.port, models, engines, len(plan), started, done
            ),
            name="modelfleet-up-ready",
            daemon=True,
        ).start()
        code: int = scheduler_cli.run(_scheduler_args(fleet, args, control))
        return 1 if engines.error else code
    except KeyboardInterrupt:
        return 1 if engines is not None and engines.error else 0
    finally:
        done.set()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # no second signal mid-cleanup
        if engines is not None:
            engines.stop()
            print("modelfleet up: stopped", flush=True)
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)
        for s, h in previous.items():
            signal.signal(s, h)
