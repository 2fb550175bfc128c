"""The scheduler as a Ray Serve application: N replicas of one ingress deployment.

One tier only: each replica is an ingress (``@serve.ingress``) whose ASGI app is the
:class:`~modelfleet.scheduler.runtime.SchedulerRuntime`'s, built in the replica after its
constructor (``__serve_build_asgi_app__``). The replica that takes an HTTP request places it
and proxies to the engine over HTTP itself, so the token stream crosses no Ray hop besides
Serve's own HTTP proxy (none with direct ingress). ``max_ongoing_requests`` is set high: a
replica holds every stream it relays open, and Serve's default of 5 would queue the sixth.

With ``share="actor"`` a detached-free named :class:`~modelfleet.scheduler.hub.FleetHub` actor
joins the replicas' prefix chains and in-flight counts (see :mod:`~modelfleet.scheduler.hub`).

The Ray/Serve lifecycle (``ray.init``, ``serve.start``/``run``/``shutdown``) is the CLI's
(:mod:`~modelfleet.scheduler.cli`); :func:`scheduler_app` only builds the bound application.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve
from starlette.applications import Starlette

from modelfleet.scheduler.hub import FleetHub, HubClient
from modelfleet.scheduler.runtime import RuntimeSettings, SchedulerRuntime

__all__ = ["HUB_NAME", "SchedulerReplica", "scheduler_app"]

log = logging.getLogger("modelfleet.scheduler.serve")

HUB_NAME = "modelfleet-fleet-hub"
MAX_ONGOING = 4096


@serve.ingress()
class SchedulerReplica:
    """One scheduler replica (see the module docstring)."""

    async def __init__(  # type: ignore[misc]
        self, settings: RuntimeSettings, share: str, hub_name: str
    ) -> None:
        import asyncio

        self.runtime = SchedulerRuntime(settings, collect_prefix_deltas=share == "actor")
        await self.runtime.start()
        self._hub_task = None
        if share == "actor":
            hub = ray.get_actor(hub_name)
            ctx = serve.get_replica_context()
            client = HubClient(hub, ctx.replica_tag, self.runtime.core)
            self._hub_task = asyncio.get_running_loop().create_task(client.run())
            self.hub_client = client

    def __serve_build_asgi_app__(self) -> Starlette:
        return self.runtime.app

    async def check_health(self) -> None:
        if not self.runtime.ready:
            raise RuntimeError("no fleet loaded")

    async def __del__(self) -> None:
        if self._hub_task is not None:
            self._hub_task.cancel()
        await self.runtime.stop()


def scheduler_app(
    settings: RuntimeSettings,
    *,
    replicas: int = 1,
    share: str = "none",
    replica_cpus: float = 0.0,
) -> Any:
    """The bound Serve application; with ``share="actor"`` the hub actor is created first."""
    if share not in ("none", "actor"):
        raise ValueError(f"share must be 'none' or 'actor', got {share!r}")
    if share == "actor":
        ray.remote(num_cpus=0)(FleetHub).options(name=HUB_NAME, get_if_exists=True).remote()
    deployment = serve.deployment(
        SchedulerReplica,
        name="scheduler",
        num_replicas=replicas,
        max_ongoing_requests=MAX_ONGOING,
        max_queued_requests=-1,
        ray_actor_options={"num_cpus": replica_cpus},
        health_check_period_s=2.0,
        graceful_shutdown_timeout_s=5.0,
        graceful_shutdown_wait_loop_s=0.5,
    )
    return deployment.bind(settings, share, HUB_NAME)  # type: ignore[attr-defined]
