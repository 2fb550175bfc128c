"""KubernetesSource's snapshot building from what its watches hold: objects whose content
did not change are not parsed again (a status write, or an edit of another object)."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.scheduler.kube import KubernetesSource

pytestmark = pytest.mark.unit


class Held:
    """What an informer holds (``objects`` by key): all ``_build`` reads of one."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objects = {
            (o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs
        }


def pool(name: str, served: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(len(status))},
        "spec": {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "servedModelName": served,
            "variants": [{"name": "a", "acceleratorProfile": "p"}],
        },
        "status": status,
    }


def policy(names: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "rp", "namespace": "ns"},
        "spec": {"modelNames": names, "defaultTargets": [{"pool": "a"}]},
    }


def test_unchanged_objects_keep_their_parse_and_changed_ones_are_parsed_again() -> None:
    src = KubernetesSource(namespace="ns")
    pools = Held(pool("a", "m-a"), pool("b", "m-b"))
    held = {"profiles": Held(), "pools": pools, "policies": Held(policy(["x"])), "pods": Held()}
    first = src._build(held)
    pools.objects[("ns", "a")] = pool("a", "m-a", observedGeneration=3)  # a status write
    pools.objects[("ns", "b")] = pool("b", "m-b2")  # a spec edit
    held["policies"].objects[("ns", "rp")] = policy(["y"])
    second = src._build(held)
    assert second.pools[("ns", "a")] is first.pools[("ns", "a")]
    assert second.pools[("ns", "b")].spec.served_model_name == "m-b2"
    assert second.policies[("ns", "rp")].spec.model_names == ["y"]


def test_an_invalid_object_stays_left_out_with_its_problem_on_every_build() -> None:
    src = KubernetesSource(namespace="ns")
    bad = pool("bad", "m")
    bad["spec"]["variants"] = []
    held = {"profiles": Held(), "pools": Held(bad), "policies": Held(), "pods": Held()}
    for _ in range(2):
        snapshot = src._build(held)
        assert snapshot.pools == {}
        assert any("variants" in line for line in src.skipped), src.skipped
