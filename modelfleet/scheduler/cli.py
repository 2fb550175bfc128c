"""``modelfleet scheduler``: the OpenAI-compatible scheduler over a fleet, under Ray Serve.

Composition root of the scheduler process::

    modelfleet scheduler --config FLEET.yaml|DIR [--launch-engines] [--replicas N] ...
    modelfleet scheduler --kubernetes [--kubeconfig FILE] [--namespace NS] ...

1. The static fleet is read and checked first; a bad file exits 2 with one line per problem
   (``file: Kind/name: field: message``) before anything starts.
2. ``--launch-engines`` starts one engine simulator per static endpoint (and stops them on
   exit).
3. Ray: ``--ray-address`` (or ``$RAY_ADDRESS``) joins a running cluster; otherwise the command
   starts a private local one (no dashboard, ``--ray-cpus`` CPUs) and shuts it down on exit.
   Serve runs ``--replicas`` replicas of the scheduler (``--share actor`` joins their prefix
   chains and in-flight counts through a Ray actor, the default with more than one replica).
   ``--ingress proxy`` (default) serves HTTP through Serve's proxy; ``--ingress direct``
   through Serve's direct ingress (each replica listens itself, the first on ``--port``).
   ``--no-ray`` serves the same app with uvicorn in this process (one replica; for comparison
   and for machines without Ray).
4. ``--control-port`` serves the gRPC control API (:mod:`~modelfleet.scheduler.control_server`)
   inside the one replica (or the ``--no-ray`` process), with the bearer token from
   ``--control-token-file`` or ``$MODELFLEET_CONTROL_TOKEN`` (refused to start without one).
5. It prints ``modelfleet scheduler listening on http://HOST:PORT`` once requests are served,
   then runs until SIGINT or SIGTERM and exits 0 after stopping Serve, Ray (if it started it)
   and the engines it launched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from modelfleet.cliargs import non_negative_float, port, positive_float, positive_int
from modelfleet.scheduler.config import ConfigError, load_static_fleet
from modelfleet.scheduler.fleet import FleetSnapshot
from modelfleet.scheduler.runtime import RuntimeSettings

__all__ = ["add_arguments", "replica_share", "run", "runtime_settings"]

log = logging.getLogger("modelfleet.scheduler.cli")

CONTROL_TOKEN_ENV = "MODELFLEET_CONTROL_TOKEN"


def _control_token(args: argparse.Namespace) -> str:
    """The control API's token: the file's first line, else $MODELFLEET_CONTROL_TOKEN."""
    if args.control_token_file:
        try:
            with open(args.control_token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise ValueError(
                f"--control-token-file: {e.strerror}: {args.control_token_file}"
            ) from None
        if not token:
            raise ValueError(f"--control-token-file: {args.control_token_file} is empty")
        return token
    token = os.environ.get(CONTROL_TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(
            f"--control-port needs a token: set ${CONTROL_TOKEN_ENV} or --control-token-file"
        )
    return token


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE|DIR", help="static fleet: manifests + endpoints")
    src.add_argument("--kubernetes", action="store_true", help="watch the cluster's objects")
    p.add_argument("--kubeconfig", help="kubeconfig (default: in-cluster, $KUBECONFIG, ~/.kube)")
    p.add_argument("--namespace", help="watch one namespace (default: all)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="HTTP port, 1..65535 (default 8000)")
    p.add_argument("--replicas", type=positive_int, default=1, help="Serve replicas")
    p.add_argument(
        "--share", choices=["auto", "actor", "none"], default="auto",
        help="how replicas share prefixes and load: actor (a Ray actor) or none; "
        "auto = actor with more than one replica",
    )  # fmt: skip
    p.add_argument(
        "--ingress", choices=["proxy", "direct"], default="proxy",
        help="HTTP through Serve's proxy (default) or Serve's direct ingress",
    )  # fmt: skip
    p.add_argument("--no-ray", action="store_true", help="serve with uvicorn in this process")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster ($RAY_ADDRESS)")
    p.add_argument(
        "--ray-cpus", type=positive_int, default=2, help="CPUs of a local Ray (default 2)"
    )
    p.add_argument(
        "--scrape-period", type=positive_float, default=0.05, metavar="S",
        help="engine /metrics period, seconds (default 0.05)",
    )  # fmt: skip
    p.add_argument(
        "--max-body-bytes", type=positive_int, default=32 * 1024 * 1024, metavar="N",
        help="larger request bodies are answered 413 (default 32 MiB)",
    )  # fmt: skip
    p.add_argument(
        "--write-interval", type=non_negative_float, default=0.05, metavar="S",
        help="after a stream's first token, write its tokens every S seconds, batched "
        "(default 0.05; 0 = each as it arrives)",
    )  # fmt: skip
    p.add_argument(
        "--launch-engines", action="store_true",
        help="start one engine simulator per static endpoint (stopped on exit)",
    )  # fmt: skip
    p.add_argument(
        "--engine-time-scale", type=positive_float, default=1.0, metavar="X",
        help="--time-scale of launched engines (default 1.0)",
    )  # fmt: skip
    p.add_argument(
        "--control-port", type=port, default=None, metavar="PORT",
        help="serve the gRPC control API (Drain, Undrain, ListEndpoints, Stats) on this port "
        "of --host (0: a free one); needs a token: $MODELFLEET_CONTROL_TOKEN or "
        "--control-token-file. One scheduler replica only",
    )  # fmt: skip
    p.add_argument(
        "--control-token-file", metavar="FILE",
        help="file holding the control API's bearer token (default: $MODELFLEET_CONTROL_TOKEN)",
    )  # fmt: skip
    p.add_argument(
        "--drain-timeout", type=positive_float, default=120.0, metavar="S",
        help="deadline of a Drain call that gives none, seconds (default 120)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="seed of the policies' RNGs")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def runtime_settings(args: argparse.Namespace) -> RuntimeSettings:
    """The replicas' settings from parsed flags (this command and the Serve builder share it).

    ``ValueError`` when ``--control-port`` is given without a usable token."""
    return RuntimeSettings(
        config=os.path.abspath(args.config) if args.config else None,
        kubernetes=bool(args.kubernetes),
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        scrape_period_s=args.scrape_period,
        max_body_bytes=args.max_body_bytes,
        write_interval_s=args.write_interval,
        replicas=1 if args.no_ray else args.replicas,
        seed=args.seed,
        control_port=args.control_port,
        control_host=args.host,
        control_token=_control_token(args) if args.control_port is not None else None,
        drain_timeout_s=args.drain_timeout,
    )


def replica_share(args: argparse.Namespace) -> str:
    """``--share`` resolved: ``auto`` is ``actor`` with more than one replica."""
    if args.share != "auto":
        return str(args.share)
    return "actor" if args.replicas > 1 else "none"


class _Stop:
    """SIGINT/SIGTERM → a flag the main thread waits on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.install()

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces SIGTERM's with one that exits."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, signum: int, _frame: Any) -> None:
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(0.5):
            pass


def _listening(host: str, port: int) -> None:
    print(f"modelfleet scheduler listening on http://{host}:{port}", flush=True)


def _wait_ready(host: str, port: int, stop: _Stop, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/health"
    while time.monotonic() < deadline and not stop.event.is_set():
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the scheduler did not answer {url} within {timeout_s:.0f} s")


def _serve_uvicorn(settings: RuntimeSettings, args: argparse.Namespace) -> None:
    import uvicorn

    from modelfleet.scheduler.runtime import SchedulerRuntime

    async def main() -> None:
        runtime = SchedulerRuntime(settings)
        await runtime.start()
        config = uvicorn.Config(
            runtime.app, host=args.host, port=args.port, log_level="warning", access_log=False
        )
        # uvicorn stops on SIGINT/SIGTERM itself, then re-raises the signal to the handler
        # installed before it (_Stop's), which only sets a flag: the exit stays clean.
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            _listening(args.host, args.port)
        try:
            await task
        finally:
            await runtime.stop()

    asyncio.run(main())


def _serve_ray(settings: RuntimeSettings, args: argparse.Namespace, stop: _Stop) -> None:
    if args.ingress == "direct":  # read by Serve's controller and replicas at import
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(args.port)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(args.port + 1000)
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
    import ray
    from ray import serve

    from modelfleet.scheduler.serve import scheduler_app

    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    started_ray = address is None
    # Ray's C++ failure handler turns SIGTERM into an abort (no cleanup); ray.init's own
    # Python handler raises SystemExit, which the finally below turns into a clean stop.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        if started_ray:
            ray.init(
                include_dashboard=False,
                num_cpus=args.ray_cpus,
                log_to_driver=args.log_level == "debug",
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        else:
            ray.init(address=address, log_to_driver=False)
        stop.install()
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        if stop.event.is_set():
            return
        share = replica_share(args)
        serve.start(
            http_options={"host": args.host, "port": args.port},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        app = scheduler_app(settings, replicas=args.replicas, share=share)
        serve.run(app, name="modelfleet", route_prefix="/", blocking=False)
        _wait_ready(args.host, args.port, stop)
        if not stop.event.is_set():
            _listening(args.host, args.port)
            stop.wait()
    except SystemExit:
        pass  # SIGTERM while ray.init ran: stop cleanly
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second signal mid-cleanup
        try:
            # A cluster we joined keeps running: take our application off it. A private Ray is
            # stopped whole below, Serve's actors with it; Serve's own shutdown there would
            # only add a raylet warning at every stop ("Task ServeController.graceful_shutdown
            # failed ... will be retried": the controller kills itself while that call waits).
            if ray.is_initialized() and not started_ray:
                with contextlib.suppress(Exception):
                    serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            if started_ray:
                ray.shutdown()
            stop.install()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.port == 0:  # the shared type takes 0 (any free port); Serve's proxy needs a fixed one
        print(
            "modelfleet scheduler: argument --port: must be a port number in 1..65535, got '0'",
            file=sys.stderr,
        )
        return 2
    snapshot: FleetSnapshot | None = None
    if args.config:
        try:
            snapshot = load_static_fleet(args.config)
        except ConfigError as e:
            for line in e.problems:
                print(line, file=sys.stderr)
            print(f"modelfleet scheduler: {args.config}: not started", file=sys.stderr)
            return 2
    elif args.launch_engines:
        print("modelfleet scheduler: --launch-engines needs --config", file=sys.stderr)
        return 2
    if args.control_port is not None and args.replicas > 1 and not args.no_ray:
        print(
            "modelfleet scheduler: --control-port serves one replica's requests; "
            "use it with --replicas 1",
            file=sys.stderr,
        )
        return 2
    try:
        settings = runtime_settings(args)
    except ValueError as e:
        print(f"modelfleet scheduler: {e}", file=sys.stderr)
        return 2
    stop = _Stop()
    engines: list[Any] = []
    try:
        if args.launch_engines and snapshot is not None:
            from modelfleet.scheduler.launch import launch_engines

            try:
                engines = launch_engines(snapshot, args.engine_time_scale)
            except (ValueError, RuntimeError) as e:
                print(f"modelfleet scheduler: {e}", file=sys.stderr)
                return 2
            for le in engines:
                print(le.line, flush=True)
        if stop.event.is_set():
            return 0
        if args.no_ray:
            _serve_uvicorn(settings, args)
        else:
            _serve_ray(settings, args, stop)
    except (OSError, RuntimeError) as e:
        print(f"modelfleet scheduler: {e}", file=sys.stderr)
        return 1
    finally:
        if engines:
            from modelfleet.scheduler.launch import stop_engines

            stop_engines(engines)
    return 0
