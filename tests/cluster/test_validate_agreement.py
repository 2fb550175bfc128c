"""`modelfleet validate` and the real API server agree on every cross-field rule.

Every :class:`~modelfleet.api.common.Rule` of the API models (collected from the models, so a
new rule without a generator here fails :func:`test_every_rule_has_a_generator`) gets a
hypothesis strategy that varies the fields the rule reads, on either side of it, inside an
otherwise valid manifest. For each generated manifest the offline validator and the API
server (strict field validation, the CRDs of ``crds/``) must both accept it or both refuse
it; when the offline validator refuses it with the rule's message, the server's refusal must
carry the same message (the CEL rule fired, not some other check). A bounded number of
examples per rule keeps the module under a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from support.manifests import Manifest, policy, pool, profile

from modelfleet.api import KINDS
from modelfleet.api.common import ApiModel, Rule
from modelfleet.api.validate import validate_object

pytestmark = pytest.mark.cluster

Create = Callable[[Manifest, str], tuple[int, dict[str, Any], str]]


weights = st.sampled_from([0, 0.0, 0.25, 1, 1000])
names = st.sampled_from(["a", "b", "c"])
scorer_types = st.sampled_from(["queue", "kv-usage", "prefix-cache"])


def scorers(unique: bool) -> st.SearchStrategy[list[dict[str, Any]]]:
    items = st.fixed_dictionaries({"type": scorer_types, "weight": weights})
    if unique:
        return st.lists(items, max_size=3, unique_by=lambda s: s["type"])
    return st.lists(items, max_size=3)


#: Pieces of patterns for the regex rule (up to three are joined): ones Python's ``re`` (the
#: scheduler) and RE2 (the API server) both take, and ones where the two engines' verdicts
#: differ (each refused by one of them, or outside the syntax both share).
REGEX_PIECES = [
    "code",
    "(?i)",
    "\\bpy\\b",
    "^def [a-z_]+\\(",
    "[\\w-]+@corp\\.com",
    "\\d{3}-\\d{1000}",
    "(foo|bar)+?",
    "\\\\1",
    "[(?=]",
    "[unclosed",
    "a**",
    "(?=x)",
    "(a)\\1",
    "(?P<n>a)",
    "(?<n>a)",
    "\\pL",
    "\\z",
    "\\Z",
    "\\u0041",
    "a{1001}",
    "(?x)",
    "a*+",
    "[\\b]",
    "[\\d-z]",
    "\\\u00e9",
    "\\12",
    "[[:alpha:]]",
    "(" * 101,
    ")" * 101,
]

#: (model class name, rule message) -> strategy of manifests that vary what the rule reads.
GENERATORS: dict[tuple[str, str], st.SearchStrategy[Manifest]] = {
    ("ModelSource", "path must be absolute when no pvcName is given"): st.builds(
        lambda pvc, path: pool(source={"pvcName": pvc, "path": path}),
        st.sampled_from(["", "weights"]),
        st.sampled_from(["", "/models/llama", "models/llama", "/"]),
    ),
    ("Variant", "minReplicas must be <= maxReplicas"): st.builds(
        lambda lo, hi: pool(
            variants=[
                {"name": "a", "acceleratorProfile": "h100", "minReplicas": lo, "maxReplicas": hi}
            ]
        ),
        st.integers(0, 4),
        st.integers(1, 4),
    ),
    ("Variant", "gpusPerReplica must be a multiple of tensorParallelSize"): st.builds(
        lambda gpus, tp: pool(
            variants=[
                {
                    "name": "a",
                    "acceleratorProfile": "h100",
                    "gpusPerReplica": gpus,
                    "tensorParallelSize": tp,
                }
            ]
        ),
        st.integers(1, 16),
        st.integers(1, 16),
    ),
    ("ModelPoolSpec", "variant names must be unique"): st.builds(
        lambda ns: pool(variants=[{"name": n, "acceleratorProfile": "h100"} for n in ns]),
        st.lists(names, min_size=1, max_size=3),
    ),
    ("Toleration", "value must be empty when operator is Exists"): st.builds(
        lambda op, value: profile(tolerations=[{"key": "gpu", "operator": op, "value": value}]),
        st.sampled_from(["Exists", "Equal"]),
        st.sampled_from(["", "true"]),
    ),
    ("Match", "minPromptTokens must be <= maxPromptTokens"): st.builds(
        lambda lo, hi: policy(
            rules=[
                {
                    "name": "r",
                    "match": {"minPromptTokens": lo, "maxPromptTokens": hi},
                    "targets": [{"pool": "p"}],
                }
            ]
        ),
        st.sampled_from([0, 1, 100, 10_000_000]),
        st.sampled_from([0, 1, 100, 10_000_000]),
    ),
    ("RoutingRule", "at least one target weight must be > 0"): st.builds(
        lambda ws: policy(
            rules=[
                {"name": "r", "targets": [{"pool": f"p{i}", "weight": w} for i, w in enumerate(ws)]}
            ]
        ),
        st.lists(weights, min_size=1, max_size=3),
    ),
    ("PlacementSpec", "profile custom needs at least one scorer with weight > 0"): st.builds(
        lambda prof, sc: policy(placement={"profile": prof, "scorers": sc}),
        st.sampled_from(["custom", "custom", "modelfleet"]),
        scorers(unique=False),
    ),
    ("PlacementSpec", "filters and scorers may only be set with profile custom"): st.builds(
        lambda prof, sc, filters: policy(
            placement={"profile": prof, "scorers": sc, "filters": [{"type": f} for f in filters]}
        ),
        st.sampled_from(["custom", "modelfleet", "round-robin"]),
        scorers(unique=True),
        st.lists(st.sampled_from(["healthy", "bounded-load"]), max_size=2, unique=True),
    ),
    ("PlacementSpec", "scorer types must be unique"): st.builds(
        lambda sc: policy(placement={"profile": "custom", "scorers": sc}),
        st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["queue", "kv-usage"]), "weight": st.just(1)}
            ),
            max_size=3,
        ),
    ),
    ("SLOClass", "downgradePool is required when onViolation is downgrade"): st.builds(
        lambda action, dst: policy(
            sloClasses=[
                {
                    "name": "gold",
                    "ttftMs": 500,
                    "tpotMs": 50,
                    "onViolation": action,
                    "downgradePool": dst,
                }
            ]
        ),
        st.sampled_from(["queue", "shed", "downgrade"]),
        st.sampled_from(["", "small"]),
    ),
    ("RateLimitSpec", "keyId values must be unique"): st.builds(
        lambda keys: policy(
            rateLimits={"perKey": [{"keyId": k, "requestsPerMinute": 10} for k in keys]}
        ),
        st.lists(st.sampled_from(["sha256:aa", "sha256:bb"]), max_size=3),
    ),
    ("RoutingPolicySpec", "rule names must be unique"): st.builds(
        lambda ns: policy(rules=[{"name": n, "targets": [{"pool": "p"}]} for n in ns]),
        st.lists(names, max_size=3),
    ),
    ("RoutingPolicySpec", "at least one defaultTargets weight must be > 0"): st.builds(
        lambda ws: policy(
            defaultTargets=[{"pool": f"p{i}", "weight": w} for i, w in enumerate(ws)]
        ),
        st.lists(weights, min_size=1, max_size=3),
    ),
    ("RoutingPolicySpec", "SLO class names must be unique"): st.builds(
        lambda ns: policy(sloClasses=[{"name": n, "ttftMs": 500, "tpotMs": 50} for n in ns]),
        st.lists(st.sampled_from(["gold", "silver"]), max_size=3),
    ),
    ("RoutingPolicySpec", "defaultSloClass must name one of sloClasses"): st.builds(
        lambda ns, default: policy(
            sloClasses=[{"name": n, "ttftMs": 500, "tpotMs": 50} for n in ns],
            defaultSloClass=default,
        ),
        st.lists(st.sampled_from(["gold", "silver"]), max_size=2, unique=True),
        st.sampled_from(["", "gold", "silver"]),
    ),
    ("RoutingPolicySpec", "modelNames must be unique"): st.builds(
        lambda ns: policy(modelNames=ns),
        st.lists(st.sampled_from(["llama", "mistral"]), min_size=1, max_size=3),
    ),
    # The operator's API hardening.
    ("ModelSource", "path must be relative to the PVC (mounted at /models) when pvcName is set"): (
        st.builds(
            lambda pvc, path: pool(source={"pvcName": pvc, "path": path}),
            st.sampled_from(["", "weights"]),
            st.sampled_from(["", "llama", "models/llama", "/models/llama", "/"]),
        )
    ),
    ("ModelSource", "path must not contain '..' components"): st.builds(
        lambda pvc, path: pool(source={"pvcName": pvc, "path": path}),
        st.just("weights"),
        st.sampled_from(
            ["llama", "..", "../llama", "a/../b", "a/..", "..a", "a..b/c", "a/.../b", "a//..//b"]
        ),
    ),
    ("EngineSpec", "maxNumBatchedTokens must be >= maxNumSeqs (vLLM refuses to start otherwise)"): (
        st.builds(
            lambda seqs, tokens: pool(engine={"maxNumSeqs": seqs, "maxNumBatchedTokens": tokens}),
            st.sampled_from([1, 16, 256, 4096]),
            st.sampled_from([16, 255, 256, 8192]),
        )
    ),
    ("EngineSpec", "port 5557 is the KV-events port; choose another"): st.builds(
        lambda port: pool(engine={"port": port}),
        st.sampled_from([1024, 5556, 5557, 5557, 5558, 8000]),
    ),
    ("EngineSpec", "extraArgs must not set a flag the operator renders from a field"): st.builds(
        lambda args: pool(engine={"extraArgs": args}),
        st.lists(
            st.sampled_from(
                [
                    "--enforce-eager",
                    "--model-impl=vllm",
                    "--portx=1",
                    "--seed=0",
                    "--model",
                    "--model=x",
                    "--max_model_len=9",
                    "--served_model_name=a_b",
                    "-tp",
                    "-tp=2",
                    "--no-enable-prefix-caching",
                    "--port 8001",
                ]
            ),
            max_size=3,
        ),
    ),
    ("EngineSpec", "env names must be unique"): st.builds(
        lambda ns: pool(engine={"env": [{"name": n, "value": "1"} for n in ns]}),
        st.lists(st.sampled_from(["VLLM_LOGGING_LEVEL", "NCCL_DEBUG"]), max_size=3),
    ),
    ("EngineSpec", "env must not set a variable the operator sets"): st.builds(
        lambda ns: pool(engine={"env": [{"name": n, "value": "1"} for n in ns]}),
        st.lists(
            st.sampled_from(
                [
                    "HF_TOKEN",
                    "HF_HOME",
                    "PYTHONHASHSEED",
                    "POD_NAME",
                    "POD_NAMESPACE",
                    "hf_token",
                    "HF_TOKEN_PATH",
                    "VLLM_LOGGING_LEVEL",
                ]
            ),
            max_size=2,
            unique=True,
        ),
    ),
    ("Toleration", "operator must be Exists when key is empty (a toleration of every taint)"): (
        st.builds(
            lambda key, op: profile(tolerations=[{"key": key, "operator": op}]),
            st.sampled_from(["", "nvidia.com/gpu"]),
            st.sampled_from(["Exists", "Equal"]),
        )
    ),
    ("AcceleratorProfileSpec", "nodeSelector keys must be label keys and values label values"): (
        st.builds(
            lambda items: profile(nodeSelector=dict(items)),
            st.lists(
                st.tuples(
                    st.sampled_from(
                        [
                            "nvidia.com/gpu.product",
                            "gpu",
                            "a" * 63,
                            "a" * 64,
                            "Example.com/gpu",
                            "a/b/c",
                            "-gpu",
                            "gpu\n",
                        ]
                    ),
                    st.sampled_from(["", "NVIDIA-H100-80GB-HBM3", "a_b.c", "-x", "a b", "x\n"]),
                ),
                min_size=1,
                max_size=2,
            ),
        )
    ),
    ("AcceleratorProfileSpec", "resourceName must be an extended resource outside kubernetes.io"): (
        st.builds(
            lambda name: profile(resourceName=name),
            st.sampled_from(
                [
                    "nvidia.com/gpu",
                    "amd.com/gpu",
                    "xkubernetes.io/gpu",
                    "kubernetes.io.example.com/gpu",
                    "kubernetes.io/gpu",
                    "gpu.kubernetes.io/x",
                    "a.b.kubernetes.io/gpu",
                ]
            ),
        )
    ),
    ("Match", "headers keys must be HTTP header names"): st.builds(
        lambda keys: policy(
            rules=[
                {
                    "name": "r",
                    "match": {"headers": {k: "v" for k in keys}},
                    "targets": [{"pool": "p"}],
                }
            ]
        ),
        st.lists(
            st.sampled_from(
                ["x-tenant", "X_Tenant", "~!#$%&'*+.^`|", "", "x tenant", "x:y", "x\n", "x-\u00e9"]
            ),
            min_size=1,
            max_size=2,
        ),
    ),
    (
        "Match",
        "regex must compile, in the syntax Python re and RE2 share (no lookaround, "
        "backreferences, named groups or \\p; docs/selection.md)",
    ): st.builds(
        lambda pieces: policy(
            rules=[{"name": "r", "match": {"regex": "".join(pieces)}, "targets": [{"pool": "p"}]}]
        ),
        st.lists(st.sampled_from(REGEX_PIECES), max_size=3),
    ),
    ("RoutingRule", "target pools must be unique"): st.builds(
        lambda ps: policy(rules=[{"name": "r", "targets": [{"pool": p} for p in ps]}]),
        st.lists(st.sampled_from(["p", "q"]), min_size=1, max_size=3),
    ),
    ("RoutingPolicySpec", "defaultTargets pools must be unique"): st.builds(
        lambda ps: policy(defaultTargets=[{"pool": p} for p in ps]),
        st.lists(st.sampled_from(["p", "q"]), min_size=1, max_size=3),
    ),
    (
        "RoutingPolicySpec",
        "a rule's match.semanticClass must name one of selection.semantic.classes",
    ): st.builds(
        lambda cs, refs: policy(
            selection={"semantic": {"classes": [{"name": c, "examples": ["x"]} for c in cs]}},
            rules=[
                {"name": f"r{i}", "match": {"semanticClass": r}, "targets": [{"pool": "p"}]}
                for i, r in enumerate(refs)
            ],
        ),
        st.lists(st.sampled_from(["code", "chat"]), max_size=2, unique=True),
        st.lists(st.sampled_from(["", "code", "chat", "Code"]), min_size=1, max_size=2),
    ),
    ("SelectionSpec", "strategy semantic needs at least one class in semantic.classes"): st.builds(
        lambda strategy, cs: policy(
            selection={
                "strategy": strategy,
                "semantic": {"classes": [{"name": c, "examples": ["x"]} for c in cs]},
            }
        ),
        st.sampled_from(["semantic", "semantic", "weighted", "cascade"]),
        st.lists(st.sampled_from(["code", "chat"]), max_size=2, unique=True),
    ),
    ("SemanticParams", "class names must be unique"): st.builds(
        lambda cs: policy(
            selection={"semantic": {"classes": [{"name": c, "examples": ["x"]} for c in cs]}}
        ),
        st.lists(st.sampled_from(["code", "chat"]), max_size=3),
    ),
    ("CostQualityParams", "poolModels keys must be pool names"): st.builds(
        lambda keys: policy(
            selection={
                "strategy": "cost-quality",
                "costQuality": {"poolModels": {k: "llama-8b" for k in keys}},
            }
        ),
        st.lists(
            st.sampled_from(["small", "llama-8b", "a" * 63, "a" * 64, "Big", "1pool", "p-", "p\n"]),
            min_size=1,
            max_size=2,
        ),
    ),
    # cel "": the CRD's list type set refuses the duplicates (the test checks agreement only).
    ("CascadeParams", "fallbackOn values must be unique"): st.builds(
        lambda reasons: policy(
            selection={"strategy": "cascade", "cascade": {"fallbackOn": reasons}}
        ),
        st.lists(st.sampled_from(["overload", "error", "timeout"]), max_size=3),
    ),
    ("MigrationSpec", "triggers must be unique"): st.builds(
        lambda triggers: policy(migration={"enabled": True, "triggers": triggers}),
        st.lists(st.sampled_from(["load-imbalance", "slo-rescue", "drain"]), max_size=3),
    ),
}


def all_rules() -> dict[tuple[str, str], Rule]:
    """Every Rule of every model reachable from the three kinds, by (class name, message)."""
    found: dict[tuple[str, str], Rule] = {}
    seen: set[type] = set()

    def walk(tp: Any) -> None:
        for arg in getattr(tp, "__args__", ()):
            walk(arg)
        if isinstance(tp, type) and issubclass(tp, ApiModel) and tp not in seen:
            seen.add(tp)
            for rule in tp.cel_rules:
                key = (tp.__name__, rule.message)
                assert key not in found, f"two rules of {tp.__name__} say {rule.message!r}"
                found[key] = rule
            for f in tp.model_fields.values():
                walk(f.annotation)

    for kind in KINDS:
        walk(kind.model_fields["spec"].annotation)
    return found


def test_every_rule_has_a_generator() -> None:
    rules = all_rules()
    assert len(rules) >= 17
    assert set(rules) == set(GENERATORS)


@pytest.mark.parametrize("key", sorted(GENERATORS), ids=lambda k: f"{k[0]}: {k[1]}")
def test_validate_and_api_server_agree(
    key: tuple[str, str], installed_crds: list[Manifest], try_create: Create, namespace: str
) -> None:
    rule = all_rules()[key]
    outcomes: set[bool] = set()

    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(doc=GENERATORS[key])
    def agree(doc: Manifest) -> None:
        _, problems = validate_object(doc)
        status, body, text = try_create(doc, namespace)
        offline_ok, server_ok = not problems, status in (200, 201)
        assert offline_ok == server_ok, (
            f"{doc['kind']} spec {doc['spec']}: modelfleet validate "
            f"{'accepts' if offline_ok else 'refuses: ' + '; '.join(map(str, problems))}, "
            f"the API server {'accepts' if server_ok else 'refuses: ' + body.get('message', text)}"
        )
        if any(p.message == rule.message for p in problems) and rule.cel:
            assert rule.message in body.get("message", text), body.get("message", text)
        outcomes.add(offline_ok)

    agree()
    # Both sides of the rule were generated (the rule was really exercised).
    assert outcomes == {True, False}, (
        f"only {'accepted' if True in outcomes else 'refused'} examples"
    )
