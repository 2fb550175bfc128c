"""API keys and per-key rate limits of a RoutingPolicy (``spec.rateLimits``).

Keys. A request's key is its bearer token (``Authorization: Bearer <token>``); the policy names
keys by id, ``"sha256:" + the first 16 hex digits of sha256(token)``, so no secret is written in
a manifest. Who is let in:

* no ``rateLimits`` at all (no default, no per-key entry): everyone, no key needed;
* per-key entries and no ``default``: only the listed keys (others get 401);
* a ``default``: every caller; unlisted keys (and requests without a key, as the key
  ``anonymous``) get the default budgets, each key its own.

Budgets. Two token buckets per key, refilled continuously: requests per minute (a request
needs one whole token) and tokens per minute (prompt tokens are charged when the request is
admitted, output tokens as they stream; a request is admitted while the bucket is positive, so
one long answer can overdraw it and the next requests wait for the refill). A refused request
gets 429 with ``Retry-After`` = the time until the bucket allows it again.

Scale-out: with N scheduler replicas each enforces ``1/N`` of every budget (``share``), so the
fleet-wide budget holds without a shared counter on the request path.

Pure: the clock is passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from modelfleet.api.routingpolicy import RateLimit, RateLimitSpec
from modelfleet.scheduler.errors import ApiError

__all__ = ["ANONYMOUS", "KeyLimiter", "key_id"]

ANONYMOUS = "anonymous"
_IDLE_FORGET_S = 600.0


def key_id(token: str) -> str:
    """The id a RoutingPolicy uses for a bearer token: ``sha256:`` + 16 hex digits."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        if self.capacity <= 0:
            return
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.capacity / 60.0)
        self.updated = now

    def wait_for(self, need: float) -> float:
        """Seconds until the level reaches ``need`` (0 when it already has)."""
        if self.level >= need:
            return 0.0
        return (need - self.level) * 60.0 / self.capacity


@dataclass
class _KeyState:
    requests: _Bucket | None
    tokens: _Bucket | None
    seen: float


class KeyLimiter:
    """Authentication and budgets of one RoutingPolicy (see the module docstring)."""

    def __init__(self, spec: RateLimitSpec, clock: Callable[[], float], share: float = 1.0) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.spec = spec
        self.clock = clock
        self.share = share
        self._limits = {k.key_id: k for k in spec.per_key}
        self._state: dict[str, _KeyState] = {}
        self._last_sweep = clock()

    @property
    def open(self) -> bool:
        """No keys and no limits configured: nothing to check."""
        return self.spec.default is None and not self.spec.per_key

    def identify(self, authorization: str | None) -> str:
        """The key id of a request (``ApiError`` 401 when the policy does not let it in)."""
        token = ""
        if authorization:
            scheme, _, rest = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                token = rest.strip()
        if self.open:
            return key_id(token) if token else ANONYMOUS
        kid = key_id(token) if token else ANONYMOUS
        if kid in self._limits or self.spec.default is not None:
            return kid
        if not token:
            raise ApiError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                err_type="authentication_error",
                code="invalid_api_key",
            )
        raise ApiError(
            401, "invalid API key", err_type="authentication_error", code="invalid_api_key"
        )

    def _limit(self, kid: str) -> RateLimit | None:
        return self._limits.get(kid) or self.spec.default

    def _key(self, kid: str, now: float) -> _KeyState | None:
        st = self._state.get(kid)
        if st is None:
            limit = self._limit(kid)
            if limit is None:
                return None
            rpm = limit.requests_per_minute * self.share
            tpm = limit.tokens_per_minute * self.share
            st = _KeyState(
                requests=_Bucket(rpm, rpm, now) if rpm > 0 else None,
                tokens=_Bucket(tpm, tpm, now) if tpm > 0 else None,
                seen=now,
            )
            self._state[kid] = st
        st.seen = now
        return st

    def admit(self, kid: str, prompt_tokens: int) -> None:
        """Charge one request and its prompt tokens, or raise ``ApiError`` 429."""
        now = self.clock()
        self._sweep(now)
        st = self._key(kid, now)
        if st is None:
            return
        waits = []
        if st.requests is not None:
            st.requests.refill(now)
            waits.append(("requests", st.requests.wait_for(1.0)))
        if st.tokens is not None:
            st.tokens.refill(now)
            waits.append(("tokens", st.tokens.wait_for(1e-9)))
        worst = max(waits, key=lambda w: w[1], default=("", 0.0))
        if worst[1] > 0:
            raise ApiError(
                429,
                f"rate limit exceeded for key {kid}: {worst[0]} per minute; retry in "
                f"{worst[1]:.1f} s",
                err_type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after_s=worst[1],
            )
        if st.requests is not None:
            st.requests.level -= 1.0
        if st.tokens is not None:
            st.tokens.level -= prompt_tokens

    def charge_tokens(self, kid: str, n: int) -> None:
        """Charge ``n`` output tokens to ``kid`` (may overdraw the bucket)."""
        st = self._state.get(kid)
        if st is not None and st.tokens is not None:
            st.tokens.refill(self.clock())
            st.tokens.level -= n

    def _sweep(self, now: float) -> None:
        """Forget keys idle for 10 minutes (their buckets are full again by then)."""
        if now - self._last_sweep < _IDLE_FORGET_S:
            return
        self._last_sweep = now
        for kid in [k for k, st in self._state.items() if now - st.seen > _IDLE_FORGET_S]:
            del self._state[kid]
