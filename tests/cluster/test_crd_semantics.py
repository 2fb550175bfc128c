"""What the generated CRDs *mean* on the real API server, beyond matching a snapshot.

* Defaults: a minimal object of each kind comes back from the server with exactly the spec the
  Python model fills in (every default, nested ones included, and nothing else).
* An exclusive minimum is exclusive, a fractional bound holds for integer values too, an enum
  refuses a value outside it: each on the server and in ``modelfleet validate`` alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from support.manifests import Manifest, policy, pool, profile

from modelfleet.api.validate import validate_object
from modelfleet.testing.cluster import ClusterClient

pytestmark = pytest.mark.cluster

Create = Callable[..., tuple[int, dict[str, Any], str]]


@pytest.mark.parametrize("make", [pool, policy, profile], ids=["ModelPool", "RoutingPolicy", "AP"])
def test_server_defaults_equal_the_models_defaults(
    make: Callable[..., Manifest],
    cluster: ClusterClient,
    installed_crds: list[Manifest],
    try_create: Create,
    namespace: str,
) -> None:
    doc = make()
    parsed, problems = validate_object(doc)
    assert parsed is not None, problems
    status, _, text = try_create(doc, namespace, keep=True)
    assert status == 201, text
    target = [f"{doc['kind'].lower()}/{doc['metadata']['name']}"]
    if doc["kind"] != "AcceleratorProfile":
        target += ["-n", namespace]
    try:
        live = json.loads(cluster.kubectl("get", *target, "-o", "json").stdout)
        assert live["spec"] == parsed.spec.to_wire()  # type: ignore[attr-defined]
        assert live["spec"] != doc["spec"]  # defaults were really added
    finally:
        cluster.kubectl("delete", *target, "--wait=false")


def _outcomes(docs: list[Manifest], try_create: Create, namespace: str) -> list[tuple[bool, bool]]:
    """(accepted by modelfleet validate, accepted by the API server) per manifest."""
    out = []
    for doc in docs:
        _, problems = validate_object(doc)
        status, _, _ = try_create(doc, namespace)
        out.append((not problems, status in (200, 201)))
    return out


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(0, False), (0.0, False), (-1, False), (1e-6, True), (0.5, True), (100, True), (100.5, False)],
)
def test_exclusive_minimum_is_exclusive(
    value: float, accepted: bool, installed_crds: list[Manifest], try_create: Create, namespace: str
) -> None:
    """prefillSpeed is in (0, 100]: zero itself is refused, anything above it is not."""
    [outcome] = _outcomes([profile(prefillSpeed=value)], try_create, namespace)
    assert outcome == (accepted, accepted)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(0, False), (0.05, False), (0.1, True), (0.5, True), (0.99, True), (0.995, False), (1, False)],
)
def test_fractional_bounds_hold_for_integer_values(
    value: float, accepted: bool, installed_crds: list[Manifest], try_create: Create, namespace: str
) -> None:
    """gpuMemoryUtilization is in [0.1, 0.99]. The API server truncates a fractional bound to
    an integer for an integer value (0 would pass ``minimum: 0.1``); the CEL rule the CRD
    generator adds for fractional bounds refuses it, as ``modelfleet validate`` does."""
    [outcome] = _outcomes([pool(engine={"gpuMemoryUtilization": value})], try_create, namespace)
    assert outcome == (accepted, accepted)


@pytest.mark.parametrize(
    "doc",
    [
        pool(engine={"blockSize": 24}),
        pool(scaling={"mode": "Auto"}),
        pool(slo={"percentile": 75}),
        policy(placement={"profile": "fastest"}),
        policy(selection={"strategy": "random"}),
        profile(tolerations=[{"operator": "In"}]),
    ],
    ids=["blockSize", "scaling.mode", "slo.percentile", "profile", "strategy", "operator"],
)
def test_an_enum_refuses_a_value_outside_it(
    doc: Manifest, installed_crds: list[Manifest], try_create: Create, namespace: str
) -> None:
    status, body, text = try_create(doc, namespace)
    assert status == 422, text
    assert "Unsupported value" in body["message"]
    _, problems = validate_object(doc)
    assert problems and all("Input should be" in p.message for p in problems), problems


def test_enum_values_inside_it_are_accepted(
    installed_crds: list[Manifest], try_create: Create, namespace: str
) -> None:
    docs = [
        pool(engine={"blockSize": 32}, scaling={"mode": "SLO"}, slo={"percentile": 99}),
        policy(placement={"profile": "llm-d"}, selection={"strategy": "cascade"}),
        profile(tolerations=[{"operator": "Exists"}]),
    ]
    assert _outcomes(docs, try_create, namespace) == [(True, True)] * 3
