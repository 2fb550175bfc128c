"""Pure placement decisions: filters, scorers, pickers, admission and migration planning.

Nothing here does I/O or reads a clock or an RNG of its own; hosts (the live scheduler and the
cluster simulator) build everything from config and pass the clock and the RNG in. A host
drives the policy through one :class:`Router` (``host``): it owns the endpoint set, the
in-flight counters and the planner's inputs, and fans every lifecycle event out once. The
policy objects come from ``baselines.build_policy`` (a named policy) or
``config.build_profile`` (a placement spec); the snapshots they read are in ``types``.
``docs/policy.md`` documents this surface; model selection is the separate
``modelfleet.policy.selection`` package.
"""

from modelfleet.policy.admission import AdmissionDecision, SloClassPolicy, admit
from modelfleet.policy.baselines import POLICY_NAMES, Policy, build_policy, policy_spec
from modelfleet.policy.config import (
    PickerSpec,
    PluginSpec,
    ProfileSpec,
    build_profile,
    default_profile_spec,
)
from modelfleet.policy.framework import (
    BuildContext,
    CycleState,
    Data,
    Filter,
    Picker,
    Plugin,
    PluginRegistry,
    Profile,
    Scorer,
)
from modelfleet.policy.hashing import (
    ApproxAutoHasher,
    ApproxTextHasher,
    ApproxTokenHasher,
    BlockHasher,
    FunctionBlockHasher,
)
from modelfleet.policy.host import EndpointInfo, EndpointMetrics, PlanRound, Router
from modelfleet.policy.load import InflightTracker
from modelfleet.policy.migration import (
    InflightView,
    Migration,
    MigrationParams,
    MigrationPlanner,
    default_migration_params,
)
from modelfleet.policy.perf import ParametricPerfModel, PerfModel, QueueState, predict_ttft
from modelfleet.policy.plugins import default_registry
from modelfleet.policy.prefix import ApproxPrefixIndex, PrecisePrefixIndex, PrefixIndex
from modelfleet.policy.types import (
    BlockChain,
    Decision,
    EndpointId,
    EndpointView,
    NoEndpointError,
    RequestId,
    RequestView,
)

__all__ = [
    "POLICY_NAMES",
    "AdmissionDecision",
    "ApproxAutoHasher",
    "ApproxPrefixIndex",
    "ApproxTextHasher",
    "ApproxTokenHasher",
    "BlockChain",
    "BlockHasher",
    "BuildContext",
    "CycleState",
    "Data",
    "Decision",
    "EndpointId",
    "EndpointInfo",
    "EndpointMetrics",
    "EndpointView",
    "Filter",
    "FunctionBlockHasher",
    "InflightTracker",
    "InflightView",
    "Migration",
    "MigrationParams",
    "MigrationPlanner",
    "NoEndpointError",
    "ParametricPerfModel",
    "PerfModel",
    "Picker",
    "PickerSpec",
    "PlanRound",
    "Plugin",
    "PluginRegistry",
    "PluginSpec",
    "Policy",
    "PrecisePrefixIndex",
    "PrefixIndex",
    "Profile",
    "ProfileSpec",
    "QueueState",
    "RequestId",
    "RequestView",
    "Router",
    "Scorer",
    "SloClassPolicy",
    "admit",
    "build_policy",
    "build_profile",
    "default_migration_params",
    "default_profile_spec",
    "default_registry",
    "policy_spec",
    "predict_ttft",
]
