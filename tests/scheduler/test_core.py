"""SchedulerCore: selection, keys and limits, SLO classes, placement, live fleet changes."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest

from modelfleet.api.names import PREFIX_HASH_ALGO, PREFIX_HASH_SEED
from modelfleet.engine.kvcache import BlockHasher, event_hash
from modelfleet.policy.host import EndpointMetrics
from modelfleet.policy.prefix import ApproxPrefixIndex
from modelfleet.policy.types import EndpointId, RequestId
from modelfleet.scheduler.config import load_static_fleet
from modelfleet.scheduler.core import Attempt, SchedulerCore, Wait, precise_hasher_for
from modelfleet.scheduler.errors import ApiError
from modelfleet.scheduler.fleet import FleetSnapshot
from modelfleet.scheduler.hub import FleetHub
from modelfleet.scheduler.launch import engine_command
from modelfleet.scheduler.protocol import parse_body
from modelfleet.scheduler.proxy import Proxy
from modelfleet.scheduler.ratelimit import key_id
from modelfleet.scheduler.telemetry import Telemetry

from .fleet_helpers import PROFILES

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(name: str, variants: str = "h100: h100-80gb", engine: str = "{}") -> str:
    vs = "\n".join(
        f"    - {{name: {v.split(':')[0].strip()}, acceleratorProfile: {v.split(':')[1].strip()}}}"
        for v in variants.split(",")
    )
    return f"""apiVersion: modelfleet.io/v1alpha1
kind: ModelPool
metadata: {{name: {name}, namespace: default}}
spec:
  model: m/{name}
  servedModelName: {name}-served
  engine: {engine}
  variants:
{vs}
"""


def endpoints(*rows: tuple[str, str, str]) -> str:
    lines = "\n".join(
        f'    - {{pool: {p}, variant: {v}, url: "http://127.0.0.1:{port}"}}' for p, v, port in rows
    )
    return (
        "apiVersion: modelfleet.io/v1alpha1\nkind: StaticEndpoints\n"
        f"metadata: {{name: e, namespace: default}}\nspec:\n  endpoints:\n{lines}\n"
    )


def policy(name: str, spec: str) -> str:
    return (
        "apiVersion: modelfleet.io/v1alpha1\nkind: RoutingPolicy\n"
        f"metadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )


BASE_POLICY = """  modelNames: [chat]
  defaultTargets: [{pool: big}]
"""


def fleet(tmp_path: Path, *docs: str) -> FleetSnapshot:
    path = tmp_path / "fleet.yaml"
    path.write_text("\n---\n".join([PROFILES.strip(), *[d.strip() for d in docs]]) + "\n")
    return load_static_fleet(str(path))


def two_engines(tmp_path: Path, spec: str = BASE_POLICY) -> FleetSnapshot:
    return fleet(
        tmp_path,
        pool("big"),
        policy("chat", spec),
        endpoints(("big", "h100", "9001"), ("big", "h100", "9002")),
    )


def make_core(clock: Clock | None = None) -> SchedulerCore:
    return SchedulerCore(
        clock=clock or Clock(),
        rng_factory=lambda name: random.Random(name),
        telemetry=Telemetry(clock or Clock()),
    )


def chat(text: str = "hello", **extra: object) -> bytes:
    return json.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": text}], **extra}
    ).encode()


def place(
    core: SchedulerCore, rid: str, headers: dict[str, str] | None = None, **kw: object
) -> Attempt:
    ticket = core.open(parse_body("chat", chat(**kw)), headers or {}, RequestId(rid))  # type: ignore[arg-type]
    result = core.place(ticket)
    assert isinstance(result, Attempt)
    return result


def test_unknown_model_is_404_naming_the_served_ones(tmp_path: Path) -> None:
    core = make_core()
    core.apply(two_engines(tmp_path))
    with pytest.raises(ApiError) as err:
        core.open(
            parse_body(
                "chat", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}'
            ),
            {},
            RequestId("r"),
        )
    assert err.value.status == 404 and err.value.code == "model_not_found"
    assert "chat" in err.value.message
    assert core.public_models() == ["chat"]


def test_placement_tracks_the_request_until_finish(tmp_path: Path) -> None:
    core = make_core()
    core.apply(two_engines(tmp_path))
    a = place(core, "r1")
    assert a.pool.served_model == "big-served"
    assert a.endpoint.id in ("127.0.0.1:9001", "127.0.0.1:9002")
    counts = core.inflight_counts()
    assert counts[a.endpoint.id][0] == 1
    core.on_tokens(a, 3)
    assert a.first_token_s is not None and a.tokens == 3
    core.finish(a, "ok")
    assert core.inflight_counts() == {}
    core.finish(a, "ok")  # idempotent
    assert core.pools[("default", "big")].router.in_flight == 0


def test_avoid_excludes_failed_endpoints_for_one_decision(tmp_path: Path) -> None:
    core = make_core()
    core.apply(two_engines(tmp_path))
    a = place(core, "r1")
    core.abandon(a, "connect", unhealthy=False)
    ticket = a.ticket
    for _ in range(5):
        b = core.place(ticket, avoid=frozenset({a.endpoint.id}))
        assert isinstance(b, Attempt) and b.endpoint.id != a.endpoint.id
        core.abandon(b, "test", unhealthy=False)
    router = core.pools[("default", "big")].router
    assert all(info.healthy for info in router.endpoints())


def test_a_request_that_failed_on_every_endpoint_is_tried_again_not_refused(
    tmp_path: Path,
) -> None:
    """Both engines of the pool timed out on connect: the third attempt goes to one of them
    (the poller still sees them up), not a 503 blaming the health filter."""
    core = make_core()
    core.apply(two_engines(tmp_path))
    a = place(core, "r1")
    core.abandon(a, "ConnectTimeout", unhealthy=False)
    b = core.place(a.ticket, avoid=frozenset({a.endpoint.id}))
    assert isinstance(b, Attempt) and b.endpoint.id != a.endpoint.id
    core.abandon(b, "ConnectTimeout", unhealthy=False)
    c = core.place(a.ticket, avoid=frozenset({a.endpoint.id, b.endpoint.id}))
    assert isinstance(c, Attempt) and c.endpoint.id in {a.endpoint.id, b.endpoint.id}
    router = core.pools[("default", "big")].router
    assert all(info.healthy for info in router.endpoints())
    # an endpoint that is down stays out even then
    core.abandon(c, "ConnectTimeout", unhealthy=False)
    core.set_healthy(a.endpoint.id, False, "scrape failed: ConnectError")
    for _ in range(5):
        d = core.place(a.ticket, avoid=frozenset({a.endpoint.id, b.endpoint.id}))
        assert isinstance(d, Attempt) and d.endpoint.id == b.endpoint.id
        core.abandon(d, "test", unhealthy=False)


def test_unhealthy_marks_the_endpoint_down_and_503_when_none_is_left(tmp_path: Path) -> None:
    core = make_core()
    core.apply(two_engines(tmp_path))
    for port in ("9001", "9002"):
        core.set_healthy(f"127.0.0.1:{port}", False, f"scrape failed: engine {port} refused")
    with pytest.raises(ApiError) as err:
        place(core, "r1")
    assert err.value.status == 503 and err.value.retry_after_s
    assert "engine 9001 refused" in err.value.message and "engine 9002 refused" in err.value.message
    core.set_healthy("127.0.0.1:9001", True)
    assert isinstance(place(core, "r2"), Attempt)


def test_keys_and_request_rate_limits(tmp_path: Path) -> None:
    good = "sk-good"
    spec = (
        BASE_POLICY
        + f"""  rateLimits:
    perKey:
      - {{keyId: "{key_id(good)}", requestsPerMinute: 2}}
"""
    )
    clock = Clock()
    core = make_core(clock)
    core.apply(two_engines(tmp_path, spec))
    for headers, status in (({}, 401), ({"authorization": "Bearer sk-bad"}, 401)):
        with pytest.raises(ApiError) as err:
            place(core, "r", headers)
        assert err.value.status == status and err.value.code == "invalid_api_key"
    auth = {"authorization": f"Bearer {good}"}
    place(core, "r1", auth)
    place(core, "r2", auth)
    with pytest.raises(ApiError) as err:
        place(core, "r3", auth)
    assert err.value.status == 429 and err.value.headers()["Retry-After"] == "30"
    clock.now += 30.0
    place(core, "r4", auth)
    text = core.telemetry.render().decode()  # type: ignore[union-attr]
    assert f'modelfleet_rate_limited_total{{key="{key_id(good)}",model="chat"}} 1.0' in text


def test_token_budget_charges_prompt_then_output(tmp_path: Path) -> None:
    spec = (
        BASE_POLICY
        + """  rateLimits:
    default: {tokensPerMinute: 100}
"""
    )
    clock = Clock()
    core = make_core(clock)
    core.apply(two_engines(tmp_path, spec))
    a = place(core, "r1", text="x" * 200)  # ~60 prompt tokens: admitted, 40 left
    core.on_tokens(a, 50)
    core.finish(a, "ok")  # overdraws to -10
    with pytest.raises(ApiError) as err:
        place(core, "r2")
    assert err.value.status == 429
    clock.now += 60.0
    place(core, "r3")


SLO_POLICY = (
    BASE_POLICY
    + """  sloClasses:
    - {name: interactive, ttftMs: 50, tpotMs: 50, onViolation: shed}
    - {name: best-effort, ttftMs: 50, tpotMs: 50, onViolation: downgrade, downgradePool: small}
    - {name: batch, ttftMs: 50, tpotMs: 500, onViolation: queue}
  defaultSloClass: batch
"""
)


def slo_fleet(tmp_path: Path) -> FleetSnapshot:
    return fleet(
        tmp_path,
        pool("big"),
        pool("small", "l40s: l40s"),
        policy("chat", SLO_POLICY),
        endpoints(("big", "h100", "9001"), ("small", "l40s", "9003")),
    )


def overload(core: SchedulerCore, endpoint: str) -> None:
    core.update_metrics(endpoint, EndpointMetrics(running=500, waiting=300, kv_cache_usage=0.9))


def test_unknown_slo_class_header_is_400(tmp_path: Path) -> None:
    core = make_core()
    core.apply(slo_fleet(tmp_path))
    with pytest.raises(ApiError) as err:
        place(core, "r", {"x-slo-class": "gold"})
    assert err.value.status == 400 and err.value.param == "x-slo-class"
    assert "batch, best-effort, interactive" in err.value.message


@pytest.mark.parametrize(
    ("cls", "expect"),
    [("interactive", "shed"), ("best-effort", "downgrade"), ("batch", "queue")],
)
def test_admission_by_class_when_no_endpoint_meets_the_target(
    tmp_path: Path, cls: str, expect: str
) -> None:
    core = make_core()
    core.apply(slo_fleet(tmp_path))
    overload(core, "127.0.0.1:9001")
    headers = {"x-slo-class": cls} if cls != "batch" else {}
    ticket = core.open(parse_body("chat", chat()), headers, RequestId("r"))
    if expect == "shed":
        with pytest.raises(ApiError) as err:
            core.place(ticket)
        assert err.value.status == 429 and err.value.code == "slo_shed"
        return
    result = core.place(ticket)
    if expect == "downgrade":
        assert isinstance(result, Attempt) and result.pool.name == "small"
        assert ticket.downgraded
        return
    assert isinstance(result, Wait) and result.retry_after_s > 0
    forced = core.place(ticket, force=True)
    assert isinstance(forced, Attempt) and forced.pool.name == "big"


def test_admits_when_the_target_is_met(tmp_path: Path) -> None:
    core = make_core()
    core.apply(slo_fleet(tmp_path))
    a = place(core, "r", {"x-slo-class": "interactive"})
    assert a.pool.name == "big" and a.view.ttft_slo_s == 0.05


def test_editing_placement_swaps_the_profile_and_keeps_what_is_in_flight(tmp_path: Path) -> None:
    core = make_core()
    core.apply(two_engines(tmp_path))
    state = core.pools[("default", "big")]
    router, profile = state.router, state.router.profile
    a = place(core, "r1")
    edited = BASE_POLICY + "  placement: {profile: round-robin}\n"
    change = core.apply(two_engines(tmp_path, edited))
    assert change.added == change.removed == change.changed == ()
    assert core.pools[("default", "big")].router is router
    assert router.profile is not profile and router.profile.name == "round-robin"
    assert core.inflight_counts()[a.endpoint.id][0] == 1
    core.finish(a, "ok")
    assert router.in_flight == 0
    # a selection-only edit keeps the profile (and what its prefix index learned)
    profile = router.profile
    core.apply(two_engines(tmp_path, edited.replace("{pool: big}", "{pool: big, weight: 2}")))
    assert router.profile is profile


def test_endpoints_come_and_go(tmp_path: Path) -> None:
    core = make_core()
    core.apply(two_engines(tmp_path))
    a = place(core, "r1")
    other = "9002" if a.endpoint.id.endswith("9001") else "9001"
    snap = fleet(
        tmp_path,
        pool("big"),
        policy("chat", BASE_POLICY),
        endpoints(("big", "h100", other), ("big", "h100", "9005")),
    )
    change = core.apply(snap)
    assert [e.id for e in change.removed] == [a.endpoint.id]
    assert [e.id for e in change.added] == ["127.0.0.1:9005"]
    router = core.pools[("default", "big")].router
    assert EndpointId(a.endpoint.id) not in {i.id for i in router.endpoints()}
    core.finish(a, "ok")  # its request still finishes cleanly
    assert router.in_flight == 0


def test_kv_event_pools_need_token_ids_and_hash_like_the_engine(tmp_path: Path) -> None:
    # the operator renders the hash algorithm and seed for a KV-event pool (the API refuses
    # them in extraArgs/env); the scheduler hashes with the same
    engine = "{blockSize: 32, kvEvents: true}"
    snap = fleet(
        tmp_path,
        pool("big", engine=engine),
        policy("chat", BASE_POLICY + "  placement: {profile: llm-d, prefixSource: kv-events}\n"),
        endpoints(("big", "h100", "9001")),
    )
    core = make_core()
    core.apply(snap)
    assert core.pools[("default", "big")].needs_token_ids
    hasher = precise_hasher_for(snap.pools[("default", "big")])
    ids = list(range(100, 200))
    want = [event_hash(d) for d in BlockHasher(32, PREFIX_HASH_ALGO, PREFIX_HASH_SEED).hashes(ids)]
    from modelfleet.policy.types import RequestView

    assert list(hasher.chain(RequestView(RequestId("r"), token_ids=ids))) == want


def test_launched_engines_of_a_kv_event_pool_hash_as_the_operator_renders(
    tmp_path: Path,
) -> None:
    """--launch-engines gives a KV-event pool's engines the operator's algorithm and seed (the
    ones precise_hasher_for reproduces); other pools keep the engine's defaults."""
    rows = (
        '    - {pool: big, variant: h100, url: "http://127.0.0.1:9001", '
        'kvEvents: "tcp://127.0.0.1:9501"}\n'
        '    - {pool: small, variant: h100, url: "http://127.0.0.1:9002"}\n'
    )
    snap = fleet(
        tmp_path,
        *(
            pool(name, engine=engine).replace(f"m/{name}", "meta-llama/Llama-3.1-8B-Instruct")
            for name, engine in (("big", "{kvEvents: true}"), ("small", "{}"))
        ),
        policy("chat", BASE_POLICY),
        "apiVersion: modelfleet.io/v1alpha1\nkind: StaticEndpoints\n"
        f"metadata: {{name: e, namespace: default}}\nspec:\n  endpoints:\n{rows}",
    )
    by_pool = {e.pool: e for e in snap.endpoints}
    cmd, env = engine_command(snap, by_pool["big"], 0.1)
    assert cmd[cmd.index("--prefix-caching-hash-algo") + 1] == PREFIX_HASH_ALGO
    assert env["PYTHONHASHSEED"] == PREFIX_HASH_SEED
    assert cmd[cmd.index("--kv-events-port") + 1] == "9501"
    cmd, env = engine_command(snap, by_pool["small"], 0.1)
    assert "--prefix-caching-hash-algo" not in cmd


def test_replicas_share_prefixes_and_load_through_the_hub(tmp_path: Path) -> None:
    snap = two_engines(tmp_path)
    a_core, b_core = (
        SchedulerCore(clock=Clock(), rng_factory=random.Random, collect_prefix_deltas=True)
        for _ in range(2)
    )
    for c in (a_core, b_core):
        c.apply(snap)
    hub = FleetHub()
    long_prompt = "a shared system prompt " * 40
    a = place(a_core, "r1", text=long_prompt)
    news, _, cursor_a = hub.exchange("A", a_core.take_prefix_deltas(), a_core.inflight_counts(), 0)
    assert news == []
    news, peers, _ = hub.exchange("B", b_core.take_prefix_deltas(), b_core.inflight_counts(), 0)
    assert len(news) == 1 and peers == {a.endpoint.id: a_core.inflight_counts()[a.endpoint.id]}
    assert b_core.apply_peer_prefixes(news) == 1
    b_core.apply_peer_inflight(peers)
    b_router = b_core.pools[("default", "big")].router
    view = {v.id: v for v in b_router.views()}[EndpointId(a.endpoint.id)]
    assert view.inflight_requests == 1
    index = b_router.profile.prefix_index
    assert isinstance(index, ApproxPrefixIndex)
    a_core.finish(a, "ok")
    hub.exchange("A", a_core.take_prefix_deltas(), a_core.inflight_counts(), cursor_a)
    _, peers, _ = hub.exchange("B", [], b_core.inflight_counts(), 1)
    b_core.apply_peer_inflight(peers)
    assert peers == {}
    probe = place(b_core, "r2", text=long_prompt)  # B never routed it, yet knows where it is
    assert probe.decision.cached_tokens > 0 and probe.endpoint.id == a.endpoint.id
    # A replica that stops exchanging no longer counts
    hub.stale_s = 0.0
    _, peers, _ = hub.exchange("B", [], {}, cursor_a)
    assert peers == {}


def test_an_engine_gone_during_connection_setup_is_retried_elsewhere(tmp_path: Path) -> None:
    """httpcore surfaces a peer that closed while it set up the connection as anyio's
    AttributeError (no socket to read the peer name of); that is a failed connection like
    ConnectError: the request goes to the other engine, not a 500."""
    core = make_core()
    core.apply(two_engines(tmp_path))
    tried: list[str] = []

    def engine(request: httpx.Request) -> httpx.Response:
        tried.append(f"{request.url.host}:{request.url.port}")
        if len(tried) == 1:
            raise AttributeError("'NoneType' object has no attribute 'getpeername'")
        usage = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
        return httpx.Response(200, json={"choices": [], "usage": usage})

    async def run() -> int:
        async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
            result = await Proxy(core, client, migrate=False).handle("chat", chat(), {})
            return result.status

    assert asyncio.run(run()) == 200
    assert len(tried) == 2 and tried[0] != tried[1]
    assert core.pools[("default", "big")].router.in_flight == 0
