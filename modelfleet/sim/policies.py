"""Policy factories for the simulator: build a named policy with the simulator's clock and RNG.

The simulator calls ``factory(clock, rng)`` once per run, so every run gets fresh trackers and
an RNG seeded from the run's seed. Profiles that read KV events (``prefixSource: kv-events``)
get the engine's own vLLM block-hash recipe as their precise hasher, so the chain of a request
matches the hashes the engines publish.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from modelfleet.engine.kvcache import BlockHasher as EngineBlockHasher
from modelfleet.engine.kvcache import event_hash
from modelfleet.policy.baselines import POLICY_NAMES, Policy, build_policy
from modelfleet.policy.config import ProfileSpec
from modelfleet.policy.hashing import FunctionBlockHasher
from modelfleet.policy.migration import MigrationParams

__all__ = ["POLICY_NAMES", "PolicyFactory", "engine_precise_hasher", "policy_factory"]

PolicyFactory = Callable[[Callable[[], float], random.Random], Policy]


def engine_precise_hasher(
    block_size: int = 16, algo: str = "sha256", seed: str | None = None
) -> FunctionBlockHasher:
    """The engine's vLLM recipe as a policy hasher (event hashes: low 64 bits as ints)."""
    hasher = EngineBlockHasher(block_size, algo, seed)

    def chain(ids: Sequence[int]) -> list[int | bytes]:
        return [event_hash(d) for d in hasher.hashes(ids)]

    return FunctionBlockHasher(f"vllm-{algo}-{block_size}-{seed}", block_size, chain)


def policy_factory(
    name: str,
    *,
    spec: ProfileSpec | None = None,
    migration: MigrationParams | None = None,
    block_size: int = 16,
    hash_algo: str = "builtin",
) -> PolicyFactory:
    """A factory for :class:`~modelfleet.sim.cluster.ClusterSimulator` (ValueError if unknown).

    ``hash_algo`` must match the engines' ``prefix_caching_hash_algo`` ("builtin" is what the
    simulator runs by default, see ``SimConfig.fast_block_hash``).
    """
    if name not in POLICY_NAMES and spec is None:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}")
    precise = engine_precise_hasher(block_size, hash_algo)

    def make(clock: Callable[[], float], rng: random.Random) -> Policy:
        return build_policy(
            name, clock=clock, rng=rng, precise_hasher=precise, spec=spec, migration=migration
        )

    return make
