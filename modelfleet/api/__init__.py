"""The ``modelfleet.io/v1alpha1`` API: typed models of the three CRDs.

These pydantic models are the source of truth: the CRDs in ``crds/`` are generated from them
(:mod:`modelfleet.api.crdgen`), the offline validator uses them, and the operator and the
scheduler parse every object through them exactly once.
"""

from modelfleet.api.accelerator import AcceleratorProfile, AcceleratorProfileSpec
from modelfleet.api.common import API_VERSION, GROUP, VERSION, Condition, Rule
from modelfleet.api.modelpool import ModelPool, ModelPoolSpec, Variant
from modelfleet.api.routingpolicy import PlacementSpec, RoutingPolicy, RoutingPolicySpec

#: Every kind of the API, in the order CRDs are written.
KINDS = (AcceleratorProfile, ModelPool, RoutingPolicy)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "AcceleratorProfile",
    "AcceleratorProfileSpec",
    "Condition",
    "ModelPool",
    "ModelPoolSpec",
    "PlacementSpec",
    "RoutingPolicy",
    "RoutingPolicySpec",
    "Rule",
    "Variant",
]
