"""Fleet state: what the scheduler serves, behind one interface with two sources.

A :class:`FleetSnapshot` is the desired fleet at one moment: AcceleratorProfiles, ModelPools,
RoutingPolicies (the API models, parsed once) and the engine endpoints of each pool variant.
A :class:`FleetSource` yields snapshots: the first one when it has read everything, then one
per change. Two sources exist:

* :class:`~modelfleet.scheduler.config.StaticFileSource` — one YAML file or folder (tests,
  benchmarks, the local default), re-read when a file changes;
* :class:`~modelfleet.scheduler.kube.KubernetesSource` — the cluster's objects and the pods
  of each variant, listed and watched.

:func:`check_fleet` is the one consistency check both use, so a snapshot the runtime applies
is always usable: plugin parameters valid, selectors buildable, every public model name
answered by one policy. Problems name the object and the field, as ``modelfleet validate`` does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.routingpolicy import RoutingPolicy, RoutingPolicySpec
from modelfleet.api.validate import Problem
from modelfleet.policy.from_api import check_placement
from modelfleet.policy.selection import QualityPredictor, Selector, build_selector
from modelfleet.policy.selection.predictor import load_builtin_predictor, load_predictor

__all__ = [
    "EndpointSpec",
    "FleetSnapshot",
    "FleetSource",
    "PoolKey",
    "PredictorCache",
    "check_fleet",
    "make_selector",
]

PoolKey = tuple[str, str]
"""(namespace, name) of a ModelPool or RoutingPolicy."""


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One engine instance: where it answers and which pool variant it belongs to.

    ``id`` is ``<namespace>/<pod>`` in Kubernetes and the configured id (default
    ``host:port``) in static mode. ``kv_events`` is the ZMQ endpoint of its KV-cache events,
    ``"auto"`` to ask the engine's ``/kv_event_sources``, or ``""`` for none.
    """

    id: str
    url: str
    namespace: str
    pool: str
    variant: str
    kv_events: str = ""

    @property
    def pool_key(self) -> PoolKey:
        return (self.namespace, self.pool)


@dataclass(frozen=True)
class FleetSnapshot:
    """The desired fleet at one moment (immutable; sources build a new one per change)."""

    profiles: Mapping[str, AcceleratorProfile] = field(default_factory=dict)
    pools: Mapping[PoolKey, ModelPool] = field(default_factory=dict)
    policies: Mapping[PoolKey, RoutingPolicy] = field(default_factory=dict)
    endpoints: tuple[EndpointSpec, ...] = ()
    source: str = ""

    @property
    def version(self) -> str:
        """A digest of the content (equal snapshots have equal versions)."""
        h = hashlib.sha256()
        for name in sorted(self.profiles):
            h.update(json.dumps(self.profiles[name].spec.to_wire(), sort_keys=True).encode())
        for key in sorted(self.pools):
            h.update(repr(key).encode())
            h.update(json.dumps(self.pools[key].spec.to_wire(), sort_keys=True).encode())
        for key in sorted(self.policies):
            h.update(repr(key).encode())
            h.update(json.dumps(self.policies[key].spec.to_wire(), sort_keys=True).encode())
        for e in sorted(self.endpoints, key=lambda e: e.id):
            h.update(repr(e).encode())
        return h.hexdigest()[:16]

    def public_models(self) -> dict[str, PoolKey]:
        """Public model name → the RoutingPolicy answering it (first by namespace/name)."""
        out: dict[str, PoolKey] = {}
        for key in sorted(self.policies):
            for name in self.policies[key].spec.model_names:
                out.setdefault(name, key)
        return out


class FleetSource(Protocol):
    """Yields the fleet: the first snapshot once everything was read, then one per change."""

    def snapshots(self) -> AsyncIterator[FleetSnapshot]: ...


class PredictorCache:
    """Quality predictors by ``costQuality.qualityModel``, each loaded once per process.

    ``builtin`` is the package's artefact; any other value is read as the path of a predictor
    file (``.npz`` written by ``bench/train_selector.py``; in Kubernetes, a mounted ConfigMap).
    """

    def __init__(self) -> None:
        self._loaded: dict[str, QualityPredictor] = {}

    def get(self, name: str) -> QualityPredictor:
        found = self._loaded.get(name)
        if found is None:
            try:
                found = load_builtin_predictor() if name == "builtin" else load_predictor(name)
            except (OSError, KeyError, ValueError) as e:
                raise ValueError(
                    f"costQuality.qualityModel: cannot load predictor {name!r}: {e}"
                ) from None
            self._loaded[name] = found
        return found


def make_selector(spec: RoutingPolicySpec, predictors: PredictorCache) -> Selector:
    """The selector of one policy (``ValueError`` naming the field when it cannot be built)."""
    predictor = None
    if spec.selection.strategy == "cost-quality":
        predictor = predictors.get(spec.selection.cost_quality.quality_model)
    return build_selector(spec, predictor=predictor)


def check_fleet(snapshot: FleetSnapshot, predictors: PredictorCache | None = None) -> list[Problem]:
    """Problems that make a snapshot unusable by the scheduler (empty list: usable).

    Checked: RoutingPolicy plugin parameters and selectors (rules, strategies, classes), a
    public model name claimed by two policies, endpoints of an unknown pool or variant. A
    policy target naming a missing pool is not a problem (that target is unavailable, as in
    Kubernetes, where the operator reports it in the policy's ResolvedRefs condition).
    """
    problems: list[Problem] = []
    owner: dict[str, PoolKey] = {}
    for key in sorted(snapshot.policies):
        rp = snapshot.policies[key]
        src, kind, name = snapshot.source, rp.KIND, f"{key[0]}/{key[1]}"
        for path, message in check_placement(rp.spec.placement):
            problems.append(Problem(src, kind, name, f"spec.placement.{path}", message))
        try:
            make_selector(rp.spec, predictors or PredictorCache())
        except ValueError as err:
            problems.append(Problem(src, kind, name, "spec.selection", str(err)))
        for model in rp.spec.model_names:
            if model in owner:
                problems.append(
                    Problem(
                        src,
                        kind,
                        name,
                        "spec.modelNames",
                        f"model name {model!r} is already answered by RoutingPolicy "
                        f"{owner[model][0]}/{owner[model][1]}",
                    )
                )
            else:
                owner[model] = key
    for e in snapshot.endpoints:
        pool = snapshot.pools.get(e.pool_key)
        if pool is None:
            problems.append(
                Problem(
                    snapshot.source,
                    "StaticEndpoints",
                    e.id,
                    "pool",
                    f"no ModelPool named {e.pool!r} in namespace {e.namespace}",
                )
            )
        elif e.variant not in {v.name for v in pool.spec.variants}:
            problems.append(
                Problem(
                    snapshot.source,
                    "StaticEndpoints",
                    e.id,
                    "variant",
                    f"ModelPool {e.pool!r} has no variant {e.variant!r}",
                )
            )
    return problems
