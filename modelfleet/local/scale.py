"""The engines of ``modelfleet up`` and the autoscaler that adds and removes them.

:class:`EngineFleet` owns the engine simulator processes. A thread of its own starts the
planned engines (while the scheduler and Ray start in the main thread), then, unless
``--no-autoscale``, runs the operator's SLO autoscaler every ``period_s``, and at the end stops
every engine it started. The engines are tied to that thread (``PR_SET_PDEATHSIG``), so they
also die if this process is killed outright.

One autoscaling pass, for every ModelPool with ``spec.scaling.mode: SLO`` (a pool in mode
Manual keeps the engines it started with):

1. **Read** the fleet folder as the scheduler does (so an edit of a pool's bounds, SLO or
   windows counts from the next pass; an invalid edit keeps the last good fleet), and the
   scheduler's ``Stats`` over ``window_s`` and ``ListEndpoints`` through its gRPC control API
   (served on a private loopback port with a per-run token).
2. **Decide** with the operator's pure functions: the inputs from
   :func:`modelfleet.policy.autoscale_inputs.slo_inputs`, the load from
   :func:`modelfleet.control.stats.pool_demand`, the decision from
   :func:`modelfleet.policy.autoscale.decide` with this pool's memory (kept in this process;
   the operator keeps it in the pool's status). So the replica counts stay within each
   variant's ``minReplicas..maxReplicas`` and follow its stabilisation windows.
3. **Grow** a variant: start its new engines on free loopback ports, wait until each listens,
   then list them in the folder's ``StaticEndpoints``; the scheduler's file watcher adds them
   to the live fleet.
4. **Shrink** a variant, one engine at a time, least in-flight work first (then the newest,
   whose prefix cache is the coldest), as the operator does: ``Drain`` it (the scheduler places
   nothing new there and live-migrates its running streams elsewhere; the call returns when
   it is empty or ``drainTimeoutSeconds`` has passed), unlist it, wait until the scheduler has
   dropped it, and only then stop its process. No request is lost to a scale-down that
   drains within the timeout; past it, what is left gets :data:`GRACE_S` more to finish (a
   pod's termination grace beyond the drain) before the process stops. When the control API
   cannot be reached, nothing is removed.

A pass that fails (the scheduler not up yet, an engine that does not start) prints why and
leaves the fleet as it is; the next pass tries again.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from modelfleet.api.modelpool import ModelPool
from modelfleet.control import bearer
from modelfleet.control import control_pb2 as pb
from modelfleet.control import control_pb2_grpc as pb_grpc
from modelfleet.control.stats import pool_demand
from modelfleet.local.plan import EnginePlan, reserve_ports, write_endpoints
from modelfleet.policy.autoscale import AutoscalerMemory, decide
from modelfleet.policy.autoscale_inputs import slo_inputs
from modelfleet.scheduler.config import ConfigError, load_static_fleet
from modelfleet.scheduler.fleet import FleetSnapshot, PoolKey, PredictorCache
from modelfleet.scheduler.launch import LaunchedEngine, launch_engines, stop_engines

__all__ = ["AutoscaleSettings", "ControlClient", "EngineFleet"]

#: After a drain's deadline, how long the requests left on an engine may still finish (the
#: operator's pods get the same beyond ``drainTimeoutSeconds``).
GRACE_S = 30.0
#: How long a removed engine may stay in the scheduler's fleet before its process is stopped
#: anyway (the file watcher polls every 50 ms; this covers a loaded machine).
UNLIST_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class AutoscaleSettings:
    """Where the scheduler's control API is, and how often and over what window to decide."""

    control_address: str  # host:port
    token: str
    period_s: float = 2.0
    window_s: float = 30.0


class ControlClient:
    """The three calls of the scheduler's control API the local autoscaler makes; each returns
    None when the scheduler cannot be asked (not up yet, stopping)."""

    def __init__(self, address: str, token: str, call_timeout_s: float = 5.0) -> None:
        self._metadata = bearer(token)
        self._timeout = call_timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Close the channel; a call in flight (a drain) ends at once."""
        self._channel.close()

    def stats(self, window_s: float) -> pb.StatsResponse | None:
        try:
            resp: pb.StatsResponse = self._stub.Stats(
                pb.StatsRequest(window_s=window_s), metadata=self._metadata, timeout=self._timeout
            )
        except (grpc.RpcError, ValueError):  # ValueError: the channel was closed
            return None
        return resp

    def inflight(self) -> dict[str, int] | None:
        """Endpoint id → requests the scheduler has in flight there."""
        try:
            resp = self._stub.ListEndpoints(
                pb.ListEndpointsRequest(), metadata=self._metadata, timeout=self._timeout
            )
        except (grpc.RpcError, ValueError):
            return None
        return {e.id: int(e.inflight_requests) for e in resp.endpoints}

    def drain(self, endpoint: str, deadline_s: float) -> pb.DrainProgress | None:
        """Drain ``endpoint``; its final progress (EMPTY, DEADLINE_EXCEEDED or
        UNKNOWN_ENDPOINT), None if the call failed."""
        request = pb.DrainRequest(endpoint=endpoint, deadline_s=deadline_s, reason="scale-down")
        try:
            for progress in self._stub.Drain(
                request, metadata=self._metadata, timeout=deadline_s + 15.0
            ):
                if progress.state != pb.DRAINING:
                    return progress  # type: ignore[no-any-return]
        except (grpc.RpcError, ValueError):
            return None
        return None


@dataclass
class _Engine:
    plan: EnginePlan
    launched: LaunchedEngine
    started: float = field(default_factory=time.monotonic)


def _say(line: str) -> None:
    print(f"modelfleet up: {line}", flush=True)


class EngineFleet:
    """Starts, scales and stops the engines of ``modelfleet up`` (module docstring).

    ``launched`` is set once the planned engines listen (or failed to: ``error`` says why,
    and this process got a SIGTERM, which stops the scheduler like Ctrl-C would).
    """

    def __init__(
        self,
        folder: Path,
        snapshot: FleetSnapshot,
        plans: list[EnginePlan],
        time_scale: float,
        *,
        avoid_ports: set[int],
        autoscale: AutoscaleSettings | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = folder
        self.snapshot = snapshot
        self.time_scale = time_scale
        self.autoscale = autoscale
        self.engines: list[_Engine] = []
        self.error = ""
        self.launched = threading.Event()
        self._plans = plans
        self._avoid = set(avoid_ports)
        self._clock = clock
        self._memory: dict[PoolKey, AutoscalerMemory] = {}
        self._predictors = PredictorCache()
        self._release = threading.Event()
        self._client = (
            ControlClient(autoscale.control_address, autoscale.token) if autoscale else None
        )
        self._thread = threading.Thread(target=self._run, name="modelfleet-up-engines")
        self._thread.start()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            self._start_planned()
            if self._client is not None and not self.error:
                assert self.autoscale is not None
                while not self._release.wait(self.autoscale.period_s):
                    try:
                        self.scale_once()
                    except (OSError, RuntimeError, ValueError) as e:
                        _say(f"autoscaling pass skipped: {e}")
            self._release.wait()
        finally:
            stop_engines([e.launched for e in self.engines])
            self.engines = []

    def _start_planned(self) -> None:
        try:
            launched = launch_engines(self.snapshot, self.time_scale)
            self.engines = [_Engine(p, le) for p, le in zip(self._plans, launched, strict=True)]
            for e in self.engines:
                print(f"  engine {e.plan.pool}/{e.plan.variant} at {e.plan.url}", flush=True)
        except (ValueError, RuntimeError) as e:
            self.error = str(e)
            print(f"modelfleet up: {e}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            self.launched.set()

    def stop(self) -> None:
        """Stop autoscaling (a drain in progress is cut short), then every engine."""
        self._release.set()
        if self._client is not None:
            self._client.close()
        self._thread.join()

    # ------------------------------------------------------------------ one pass

    def counts(self, key: PoolKey) -> Counter[str]:
        """Engines per variant of pool ``key``."""
        return Counter(e.plan.variant for e in self.engines if e.plan.pool_key == key)

    def scale_once(self) -> None:
        """One autoscaling pass over every pool in mode SLO (module docstring)."""
        assert self._client is not None and self.autoscale is not None
        try:
            self.snapshot = load_static_fleet(str(self.folder), self._predictors)
        except ConfigError:
            pass  # the scheduler keeps its last good fleet too
        stats = self._client.stats(self.autoscale.window_s)
        if stats is None:
            return
        for key, pool in self.snapshot.pools.items():
            if pool.spec.scaling.mode != "SLO" or self._release.is_set():
                continue
            variants, slo, windows = slo_inputs(pool.spec, self.snapshot.profiles)
            demand = pool_demand(
                stats, key[0], key[1], self.autoscale.window_s, pool.spec.slo.percentile
            )
            have = self.counts(key)
            decision = decide(
                variants,
                slo,
                windows,
                demand,
                {v.name: have[v.name] for v in variants},
                self._memory.get(key, AutoscalerMemory()),
                self._clock(),
            )
            self._memory[key] = decision.memory
            for v in pool.spec.variants:
                want, now = decision.replicas.get(v.name, have[v.name]), have[v.name]
                if want == now:
                    continue
                why = f"{decision.reasons.get(v.name, '')}, load {demand.rate():.2f} req/s"
                _say(f"scale {key[1]}/{v.name} {now} -> {want} engines ({why})")
                if want > now:
                    self._grow(key, v.name, want - now)
                else:
                    self._shrink(pool, v.name, now - want)

    def _grow(self, key: PoolKey, variant: str, n: int) -> None:
        used = self._avoid | {e.plan.port for e in self.engines}
        plans = [EnginePlan(key[0], key[1], variant, p) for p in reserve_ports(n, used)]
        try:
            launched = launch_engines(
                self.snapshot, self.time_scale, endpoints=[p.spec() for p in plans]
            )
        except (ValueError, RuntimeError) as e:
            _say(f"{key[1]}/{variant}: engine did not start: {e}")
            return
        for p, le in zip(plans, launched, strict=True):
            self.engines.append(_Engine(p, le))
            print(f"  engine {p.pool}/{p.variant} at {p.url}", flush=True)
        write_endpoints(self.folder, [e.plan for e in self.engines])

    def _shrink(self, pool: ModelPool, variant: str, n: int) -> None:
        assert self._client is not None
        key = (pool.metadata.namespace or "default", pool.metadata.name)
        inflight = self._client.inflight()
        if inflight is None:
            return
        mine = [e for e in self.engines if e.plan.pool_key == key and e.plan.variant == variant]
        mine.sort(key=lambda e: e.started, reverse=True)  # stable: newest first among equals
        mine.sort(key=lambda e: inflight.get(e.plan.id, 0))
        deadline = float(pool.spec.scaling.drain_timeout_seconds)
        for e in mine[:n]:
            if self._release.is_set():
                return
            done = self._client.drain(e.plan.id, deadline)
            if done is None:
                if not self._release.is_set():  # else: cut short by the stop
                    _say(f"drain of {e.plan.id} failed; it stays")
                return
            _say(
                f"drained {e.plan.id} ({key[1]}/{variant}): {done.migrated} migrated, "
                f"{done.completed} finished there, {done.remaining} left"
            )
            ep = e.plan.id
            if done.remaining:
                self._wait(lambda listed: listed.get(ep, 0) == 0, GRACE_S)  # noqa: B023
            self.engines.remove(e)
            write_endpoints(self.folder, [x.plan for x in self.engines])
            self._wait(lambda listed: ep not in listed, UNLIST_TIMEOUT_S)  # noqa: B023
            stop_engines([e.launched])

    def _wait(self, done: Callable[[dict[str, int]], bool], timeout_s: float) -> None:
        """Until ``done`` holds of the scheduler's in-flight counts, ``timeout_s`` or a stop."""
        assert self._client is not None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not self._release.is_set():
            listed = self._client.inflight()
            if listed is not None and done(listed):
                return
            time.sleep(0.1)
