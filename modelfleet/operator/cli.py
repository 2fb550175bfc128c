"""``modelfleet operator``: run the operator (kopf) — the process's composition root.

Watches ModelPools, RoutingPolicies and AcceleratorProfiles cluster-wide, or in the
namespaces given with ``--namespace``, and reconciles them (``docs/operator.md``). With
``--leader-elect`` several replicas run for availability and only the holder of the Lease
``--leader-election-id`` in ``--leader-election-namespace`` acts; a leader that cannot renew
its lease exits with status 3 so that its pod restarts as a standby.

The scheduler's control API (``--scheduler-address``, token from ``--scheduler-token-file``)
is used to drain engines before they are removed and to read the load the SLO autoscaler
needs; without it, scale-down relies on the pods' preStop hook alone and mode SLO holds
replicas where they are.

Exit status: 0 after SIGTERM/SIGINT, 2 for bad flags or an unreadable kubeconfig or token,
3 when leadership was lost.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from modelfleet.cliargs import port, positive_float
from modelfleet.operator.reconcile import OperatorConfig

EXIT_LEADERSHIP_LOST = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The operator's flags."""
    parser.add_argument(
        "--kubeconfig", type=Path, default=None,
        help="kubeconfig file (default: in-cluster service account, else $KUBECONFIG)",
    )  # fmt: skip
    parser.add_argument("--context", default=None, help="kubeconfig context (default: current)")
    parser.add_argument(
        "--namespace", "-n", action="append", default=[], metavar="NS", dest="namespaces",
        help="watch this namespace (repeatable); default: every namespace",
    )  # fmt: skip
    parser.add_argument(
        "--scheduler-address", default="", metavar="HOST:PORT",
        help="the scheduler's gRPC control API, e.g. modelfleet-scheduler:50051",
    )  # fmt: skip
    parser.add_argument(
        "--scheduler-token-file", type=Path, default=None, metavar="PATH",
        help="file holding the control API's bearer token (required with --scheduler-address)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-port", type=port, default=8080,
        help="serve Prometheus metrics on this port (default 8080; 0 = off)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-address", default="0.0.0.0", help="metrics bind address (default 0.0.0.0)"
    )
    parser.add_argument(
        "--health-port", type=port, default=8081,
        help="kopf liveness probe on http://0.0.0.0:PORT/healthz (default 8081; 0 = off)",
    )  # fmt: skip
    parser.add_argument(
        "--resync-seconds", type=positive_float, default=15.0,
        help="period of the full reconcile of every object (autoscaling, drift), s (default 15)",
    )  # fmt: skip
    parser.add_argument(
        "--stats-window-seconds", type=positive_float, default=60.0,
        help="window of the scheduler's Stats the autoscaler reads, s (default 60)",
    )  # fmt: skip
    parser.add_argument(
        "--leader-elect", action=argparse.BooleanOptionalAction, default=False,
        help="run as one of several replicas; only the Lease holder acts (default off)",
    )  # fmt: skip
    parser.add_argument(
        "--leader-election-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the Lease (default: $POD_NAMESPACE or default)",
    )  # fmt: skip
    parser.add_argument(
        "--leader-election-id", default="modelfleet-operator", help="name of the Lease"
    )
    parser.add_argument(
        "--identity", default=f"{socket.gethostname()}-{os.getpid()}",
        help="this replica's identity in the Lease (default: hostname-pid)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def _token(args: argparse.Namespace) -> str:
    if not args.scheduler_address:
        if args.scheduler_token_file is not None:
            raise ValueError("--scheduler-token-file needs --scheduler-address")
        return ""
    if args.scheduler_token_file is None:
        raise ValueError("--scheduler-address needs --scheduler-token-file")
    try:
        token: str = args.scheduler_token_file.read_text().strip()
    except OSError as err:
        raise ValueError(f"--scheduler-token-file {args.scheduler_token_file}: {err}") from err
    if not token:
        raise ValueError(f"--scheduler-token-file {args.scheduler_token_file}: the file is empty")
    return token


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT (or lost leadership); returns the exit status."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from modelfleet.operator.runtime import LeaderElector, api_client, build_operator

    try:
        token = _token(args)
        client = api_client(args.kubeconfig, args.context)
    except Exception as err:  # a bad kubeconfig raises several kinds; all are fatal here
        print(f"modelfleet operator: {err}", file=sys.stderr)
        return 2
    config = OperatorConfig(
        resync_s=args.resync_seconds,
        stats_window_s=args.stats_window_seconds,
        namespaces=tuple(args.namespaces),
    )
    op = build_operator(
        client, config=config, scheduler_address=args.scheduler_address, scheduler_token=token
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    status = 0
    try:
        if args.metrics_port:
            op.metrics.serve(args.metrics_port, args.metrics_address)
        elector = None
        if args.leader_elect:
            elector = LeaderElector(
                op.kube, args.leader_election_namespace, args.leader_election_id, args.identity
            )
            logging.info("waiting to lead (Lease %s)", args.leader_election_id)
            if not elector.wait_to_lead(stop):
                return 0
            op.metrics.leader.set(1)
        liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
        kopf_thread = op.thread(args.namespaces, liveness_endpoint=liveness)
        kopf_thread.start()
        lost = threading.Event()
        renewer = None
        if elector is not None:

            def on_lost() -> None:
                lost.set()
                stop.set()

            renewer = threading.Thread(
                target=elector.keep_leading, args=(stop, on_lost), name="lease", daemon=True
            )
            renewer.start()
        while not stop.wait(0.5) and kopf_thread.alive:
            pass
        kopf_thread.stop()
        if renewer is not None:
            renewer.join(timeout=10)
        if lost.is_set():
            print("modelfleet operator: lost the leader lease", file=sys.stderr)
            status = EXIT_LEADERSHIP_LOST
        elif elector is not None:
            elector.release()
    finally:
        op.metrics.leader.set(0)
        op.close()
    return status
