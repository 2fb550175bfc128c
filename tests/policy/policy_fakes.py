"""Shared fakes for the policy tests (hand-written, no mocks)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelfleet.policy.framework import CycleState, Plugin
from modelfleet.policy.perf import ParametricPerfModel
from modelfleet.policy.types import EndpointId, EndpointView, RequestId, RequestView


class FakeClock:
    """A clock that only moves when told to; each call can also auto-advance by ``step``."""

    def __init__(self, start: float = 0.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        t = self.now
        self.now += self.step
        return t

    def advance(self, dt: float) -> None:
        self.now += dt


PERF = ParametricPerfModel(
    prefill_base_s=0.01,
    prefill_s_per_token=1e-4,
    decode_base_s=0.01,
    decode_s_per_seq=1e-3,
    max_num_seqs=64,
    mean_decode_s_per_request=2.0,
)


def ep(name: str, **kw: Any) -> EndpointView:
    return EndpointView(id=EndpointId(name), **kw)


def req(name: str = "r", **kw: Any) -> RequestView:
    return RequestView(id=RequestId(name), **kw)


def tokens(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)


def state(request: RequestView | None = None, index: Any = None, seed: int = 0) -> CycleState:
    return CycleState(request or req(), 0.0, random.Random(seed), index)


class Const(Plugin):
    """A scorer that gives fixed scores, in endpoint order."""

    def __init__(self, name: str, values: Sequence[float]) -> None:
        self.name = name
        self.values = values

    def score(self, state: CycleState, endpoints: Sequence[EndpointView]) -> Sequence[float]:
        return list(self.values)[: len(endpoints)]
