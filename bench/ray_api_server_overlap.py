"""Does ``ray.init`` get faster if Ray's API server starts off its critical path?

    python bench/ray_api_server_overlap.py plain|overlapped   # one ray.init, then shutdown

``ray.init`` on a new head node starts the GCS, then the API server ("dashboard" process,
started even with ``include_dashboard=False``) and waits until it has written its address to
the GCS, then the raylet. ``overlapped`` runs Ray's own ``Node.start_api_server`` in a thread
(joined after ``ray.init``), so the raylet starts while the API server boots. Prints the mode,
ok/FAILED, the seconds of ``ray.init`` (+ the join) and the load average; run the modes
alternately (bench/results/local-start.md, round 3). A measurement only: modelfleet does not
ship the overlap (it failed half its starts under load).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any


def main(mode: str) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray._private.node as ray_node

    threads: list[threading.Thread] = []
    if mode == "overlapped":
        original = ray_node.Node.start_api_server

        def in_background(node: Any, **kwargs: Any) -> None:
            t = threading.Thread(target=original, args=(node,), kwargs=kwargs, daemon=True)
            t.start()
            threads.append(t)

        setattr(ray_node.Node, "start_api_server", in_background)  # noqa: B010
    elif mode != "plain":
        print("mode: plain or overlapped", file=sys.stderr)
        return 2
    start = time.monotonic()
    ok = True
    try:
        ray.init(
            include_dashboard=False,
            num_cpus=2,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except Exception:
        ok = False
    for t in threads:
        t.join(60)
    took = time.monotonic() - start
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"{mode} {'ok' if ok else 'FAILED'} {took:.1f} s, load average {load}", flush=True)
    if ok:
        ray.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "plain"))
