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

**Application builder.** :func:`build_app` is the import path a Serve config names (KubeRay's
``RayService``, ``serve run modelfleet.scheduler.serve:build_app``): it takes the config's
``args`` — ``{"argv": [flags of modelfleet scheduler]}`` — and builds the same application
the command runs. The flags are parsed by the command's own parser (same types, same words);
a static fleet is read and checked before anything is deployed. Flags that configure what the
Serve config owns are refused by name: ``--no-ray``, ``--launch-engines``, ``--ingress``,
``--ray-address``, ``--ray-cpus``. ``--host`` and ``--port`` are accepted and ignored (the
config's ``http_options`` bind Serve's proxy), so one flag list serves both deployments.
With more than one replica the hub actor is detached (its replicas create or find it): it
outlives ``serve delete`` (0 CPUs, a few MB) and the next deployment reuses it.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, NoReturn

import ray
from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from ray.serve import Application
from starlette.applications import Starlette

from modelfleet.scheduler.config import ConfigError, load_static_fleet
from modelfleet.scheduler.hub import FleetHub, HubClient
from modelfleet.scheduler.runtime import RuntimeSettings, SchedulerRuntime

__all__ = ["HUB_NAME", "BuildArgs", "SchedulerReplica", "build_app", "scheduler_app"]

log = logging.getLogger("modelfleet.scheduler.serve")

HUB_NAME = "modelfleet-fleet-hub"
MAX_ONGOING = 4096
#: The hub actors this process created and owns, by name. A named actor that is not detached is
#: still reference-counted: Ray kills it once its creator drops the last handle, so the driver
#: keeps the handle here for as long as it serves (the replicas find the actor by name).
_OWNED_HUBS: dict[str, Any] = {}


@serve.ingress()
class SchedulerReplica:
    """One scheduler replica (see the module docstring)."""

    async def __init__(  # type: ignore[misc]
        self, settings: RuntimeSettings, share: str, hub_name: str, own_hub: bool = False
    ) -> None:
        import asyncio

        self.runtime = SchedulerRuntime(settings, collect_prefix_deltas=share == "actor")
        await self.runtime.start()
        self._hub_task = None
        if share == "actor":
            if own_hub:  # built by a Serve config: no driver outlives the build to own it
                hub = _hub_actor(hub_name, detached=True)
            else:
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
    own_hub: bool = False,
) -> Any:
    """The bound Serve application; with ``share="actor"`` the hub actor is created first.

    With ``own_hub`` the replicas create (or find) the hub themselves, as a detached actor:
    the application builder's process does not live on to own it.
    """
    if share not in ("none", "actor"):
        raise ValueError(f"share must be 'none' or 'actor', got {share!r}")
    if share == "actor" and not own_hub:
        _OWNED_HUBS[HUB_NAME] = _hub_actor(HUB_NAME, detached=False)
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
    return deployment.bind(settings, share, HUB_NAME, own_hub)  # type: ignore[attr-defined]


def _hub_actor(name: str, *, detached: bool) -> Any:
    options: dict[str, Any] = {"name": name, "get_if_exists": True}
    if detached:
        options["lifetime"] = "detached"
    return ray.remote(num_cpus=0)(FleetHub).options(**options).remote()


class BuildArgs(BaseModel):
    """The ``args`` of a Serve config that names :func:`build_app`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The flags of ``modelfleet scheduler`` (without the command's name).
    argv: list[str]


#: Flags of the command that configure what a Serve config owns, refused by :func:`build_app`.
NOT_UNDER_SERVE_CONFIG = {
    "no_ray": "--no-ray",
    "launch_engines": "--launch-engines",
    "ingress": "--ingress",
    "ray_address": "--ray-address",
    "ray_cpus": "--ray-cpus",
}


class _Parser(argparse.ArgumentParser):
    """The command's parser, raising instead of exiting (a builder runs in Serve's controller)."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(f"build_app: argv: {message}")


def _parse_argv(argv: list[str]) -> argparse.Namespace:
    from modelfleet.scheduler.cli import add_arguments

    parser = _Parser(prog="modelfleet.scheduler.serve:build_app", add_help=False)
    add_arguments(parser)
    defaults = parser.parse_args(["--kubernetes"])
    args = parser.parse_args(argv)
    refused = [
        flag
        for dest, flag in NOT_UNDER_SERVE_CONFIG.items()
        if getattr(args, dest) != getattr(defaults, dest)
    ]
    if refused:
        raise ValueError(
            f"build_app: argv: {', '.join(refused)}: not for a Serve application "
            "(Ray, Serve's HTTP ingress and the engines are the Serve config's and the "
            "operator's)"
        )
    return args


def build_app(args: dict[str, Any]) -> Application:
    """The scheduler application from a Serve config's ``args`` (see the module docstring).

    Raises ``ValueError`` naming the bad key, flag or fleet field; nothing is deployed then.
    """
    from modelfleet.scheduler.cli import replica_share, runtime_settings

    try:
        checked = BuildArgs.model_validate(args)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(args)'}: {err['msg']}"
            for err in e.errors()
        )
        raise ValueError(f"build_app: args: {problems}") from None
    parsed = _parse_argv(checked.argv)
    if parsed.config:
        try:
            load_static_fleet(parsed.config)
        except ConfigError as e:
            raise ValueError(f"build_app: {parsed.config}: " + "; ".join(e.problems)) from None
    app = scheduler_app(
        runtime_settings(parsed),
        replicas=parsed.replicas,
        share=replica_share(parsed),
        own_hub=True,
    )
    assert isinstance(app, Application)
    return app
