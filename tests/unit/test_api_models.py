"""The API models: defaults, rules, wire format."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelfleet.api import AcceleratorProfile, ModelPool, RoutingPolicy
from modelfleet.api.modelpool import Variant

pytestmark = pytest.mark.unit


def pool(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "m",
        "servedModelName": "m",
        "variants": [{"name": "a", "acceleratorProfile": "l4"}],
    }
    base.update(spec)
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": base,
    }


def test_modelpool_defaults_fill_in() -> None:
    mp = ModelPool.model_validate(pool())
    assert mp.spec.engine.block_size == 16
    assert mp.spec.engine.enable_prefix_caching is True
    assert mp.spec.scaling.mode == "Manual"
    assert mp.spec.variants[0].min_replicas == 1
    assert mp.spec.replicas is None


def test_wire_format_is_camel_case_round_trip() -> None:
    mp = ModelPool.model_validate(pool())
    wire = mp.spec.to_wire()
    assert wire["servedModelName"] == "m"
    assert wire["engine"]["gpuMemoryUtilization"] == 0.9
    assert ModelPool.model_validate({**pool(), "spec": wire}).spec == mp.spec


@pytest.mark.parametrize(
    ("variant", "ok"),
    [
        ({"minReplicas": 2, "maxReplicas": 2}, True),
        ({"minReplicas": 3, "maxReplicas": 2}, False),
        ({"gpusPerReplica": 4, "tensorParallelSize": 2}, True),
        ({"gpusPerReplica": 4, "tensorParallelSize": 3}, False),
        ({"gpusPerReplica": 2, "tensorParallelSize": 4}, False),
    ],
    ids=["min-eq-max", "min-gt-max", "tp-divides", "tp-not-divides", "tp-exceeds"],
)
def test_variant_rules(variant: dict[str, Any], ok: bool) -> None:
    data = {"name": "a", "acceleratorProfile": "l4", **variant}
    if ok:
        Variant.model_validate(data)
    else:
        with pytest.raises(ValidationError) as exc:
            Variant.model_validate(data)
        (err,) = exc.value.errors()
        assert err["type"] == "rule"


def test_strict_types_match_the_api_server() -> None:
    """A quoted number is refused, as the API server refuses it for an integer field."""
    with pytest.raises(ValidationError):
        ModelPool.model_validate(pool(replicas="2"))


def test_wrong_kind_for_model_refused() -> None:
    data = pool()
    data["kind"] = "RoutingPolicy"
    with pytest.raises(ValidationError):
        ModelPool.model_validate(data)


def test_accelerator_selector_defaults_to_gpu_product() -> None:
    ap = AcceleratorProfile.model_validate(
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "AcceleratorProfile",
            "metadata": {"name": "l4"},
            "spec": {"gpuProduct": "NVIDIA-L4", "memoryGiB": 24, "costPerHour": 0.7},
        }
    )
    assert ap.selector() == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert ap.spec.resource_name == "nvidia.com/gpu"


def test_routing_policy_referenced_pools() -> None:
    rp = RoutingPolicy.model_validate(
        {
            "apiVersion": "modelfleet.io/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {
                "modelNames": ["x"],
                "defaultTargets": [{"pool": "a"}],
                "rules": [{"name": "r1", "targets": [{"pool": "b"}]}],
                "sloClasses": [
                    {
                        "name": "i",
                        "ttftMs": 1,
                        "tpotMs": 1,
                        "onViolation": "downgrade",
                        "downgradePool": "c",
                    }
                ],
            },
        }
    )
    assert rp.referenced_pools() == {"a", "b", "c"}
    assert rp.spec.placement.profile == "modelfleet"
