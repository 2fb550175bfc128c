"""``modelfleet up``: the whole system on one machine, from the manifests a cluster would use.

Composition root of the local default::

    modelfleet up [-f DIR_OR_FILE ...] [--port 8000] [--replicas N] [--time-scale X]

1. Check, before anything starts (one line on stderr, exit 2): the manifests
   (:mod:`modelfleet.local.plan`), the scheduler's port, the simulator's support of every model.
2. Start one engine simulator per replica of each variant, with the variant's accelerator
   timing (:func:`modelfleet.scheduler.launch.launch_engines`, on free loopback ports), in a
   thread, while
3. the scheduler runs in this process with static discovery over the fleet folder
   (:func:`modelfleet.scheduler.cli.run`): a private local Ray (its files under this run's
   temporary folder) and Ray Serve, or uvicorn with ``--no-ray``. Edits of the manifest files
   apply live through the scheduler's file watcher.
4. Print the OpenAI base URL and a ready line once ``/v1/models`` answers and the scheduler
   sees every engine healthy.

Ctrl-C, SIGTERM and the death of the parent process (Linux: ``PR_SET_PDEATHSIG`` turns it
into a SIGTERM) stop the scheduler, Ray and the engines; the engines also die with this
process if it is killed outright. Exit 0 after a requested stop.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelfleet import cliargs
from modelfleet.local.plan import UpError, check_port_free, read_manifests, write_fleet

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
    p.add_argument("--no-ray", action="store_true", help="serve with uvicorn, without Ray")
    p.add_argument(
        "--ray-cpus", type=cliargs.positive_int, default=2, help="CPUs of the local Ray (2)"
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


#: A private single-node Ray needs none of this: no usage report sent home at start.
_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


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


class _EngineThread:
    """Starts the engines while the scheduler (and Ray) start, and owns them.

    ``PR_SET_PDEATHSIG`` ties each engine to the *thread* that forked it, so this thread
    lives until :meth:`stop`. A launch that fails prints why and SIGTERMs this process, which
    stops the scheduler like Ctrl-C would.
    """

    def __init__(self, snapshot: Any, time_scale: float) -> None:
        self.engines: list[Any] = []
        self.error = ""
        self.launched = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(snapshot, time_scale), name="modelfleet-up-engines"
        )
        self._thread.start()

    def _run(self, snapshot: Any, time_scale: float) -> None:
        from modelfleet.scheduler.launch import launch_engines

        try:
            self.engines = launch_engines(snapshot, time_scale)
            for le in self.engines:
                ep = le.endpoint
                print(f"  engine {ep.pool}/{ep.variant} at {ep.url}", flush=True)
        except (ValueError, RuntimeError) as e:
            self.error = str(e)
            print(f"modelfleet up: {e}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            self.launched.set()
        self._release.wait()

    def stop(self) -> None:
        """Stop the engines (after a launch in progress has finished) and the thread."""
        from modelfleet.scheduler.launch import stop_engines

        self.launched.wait()
        if self.engines:
            stop_engines(self.engines)
        self._release.set()
        self._thread.join()


def _announce_when_ready(
    host: str,
    port: int,
    models: list[str],
    engines: _EngineThread,
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
            if sum(ok for *_, ok in up) < n_engines:
                continue
            print(f"modelfleet up: OpenAI base URL {base}/v1", flush=True)
            print(
                f"modelfleet up: ready in {time.monotonic() - started:.1f} s; models "
                f"{', '.join(models)}; Ctrl-C stops everything",
                flush=True,
            )
            return

    return watch


def _scheduler_args(folder: Path, args: argparse.Namespace) -> argparse.Namespace:
    from modelfleet.scheduler import cli as scheduler_cli

    p = argparse.ArgumentParser(prog="modelfleet scheduler")
    scheduler_cli.add_arguments(p)
    argv = ["--config", str(folder), "--host", args.host, "--port", str(args.port)]
    argv += ["--ray-cpus", str(args.ray_cpus), "--log-level", args.log_level]
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
    engines: _EngineThread | None = None
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
        # The engines start first, so that their start overlaps the scheduler's imports and
        # Ray's, which take most of the time to ready.
        engines = _EngineThread(snapshot, args.time_scale)
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
        code: int = scheduler_cli.run(_scheduler_args(folder / "fleet", args))
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
