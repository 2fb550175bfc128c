"""RoutingPolicy: which pool answers which request, and how requests are placed.

One policy answers one or more public model names. A request first goes through *model
selection* (ordered rules, then the selection strategy over the matched targets), then through
*placement* (a profile of filters, weighted scorers and a picker over the chosen pool's
instances). SLO classes give each request a latency target and a priority; migration moves
running requests between instances; rate limits apply per API key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from modelfleet.api.common import (
    HEADER_NAME_PATTERN,
    LABEL_PATTERN,
    NAME_PATTERN,
    POOL_NAME_PATTERN,
    ApiModel,
    Condition,
    Resource,
    Rule,
    cel_string,
    full_match,
    unique,
)

# The rule regex: the syntax Python's ``re`` (the scheduler runs it) and RE2 (the API server
# compiles it, Go's flavour) read alike. Each engine still compiles the pattern; this grammar,
# checked by both validators, keeps out every construct where the two engines' verdicts differ:
# lookaround, backreferences and Python-only groups ((?#, (?>, (?(, (?x)...), RE2-only escapes
# (\p, \z, \Q, \x{...}) and Python-only ones (\Z, \u, \N, octal), escapes of
# non-ASCII, named groups (Python refuses duplicate names, RE2 takes them), flags other than
# i, m, s and global flags past the start, stacked quantifiers (possessive a*+), counts above
# 1000 or on groups (RE2 bounds nested counts), class escapes in ranges ([\d-z]), deep nesting.
_PUNCT = r"""[-!"#$%&'()*+,./:;<=>?@\[\\\]^_`{|}~ ]"""
_CLASS_CHAR = r"([^\]\\\[&~|-]|\\[afnrtv]|\\" + _PUNCT + ")"
_CLASS_ITEM = r"(\\[dDsSwW]|" + _CLASS_CHAR + "(-" + _CLASS_CHAR + ")?)"
_CLASS = r"\[\^?(-|-?" + _CLASS_ITEM + r"+-?)\]"
_ATOM = r"""([^\\\[\](){}|*+?^$.]|\.|\\[dDsSwWafnrtv]|\\""" + _PUNCT + "|" + _CLASS + ")"
_COUNT = r"(0|[1-9][0-9]{0,2}|1000)"
_QUANTIFIER = r"[*+?]\??"
_COUNTED = r"(" + _QUANTIFIER + r"|\{" + _COUNT + "(," + _COUNT + r"?)?\}\??)"
_UNIT = "(" + _ATOM + _COUNTED + r"?|\)(" + _QUANTIFIER + r")?|[\^$|]|\\[bBA]|\((\?-?[ims]?:)?)"
#: What a rule regex may look like (besides compiling in both engines): see above. At most
#: 100 '(' (escaped ones too): Python's parser recurses per group and fails on deep nesting
#: (RecursionError) where RE2 goes on to depth 1000.
REGEX_SYNTAX = r"^(\(\?[ims]\))?" + _UNIT + "*$"
REGEX_GROUPS = r"^[^(]*(\([^(]*){0,100}$"


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable rule regex (None if it is): it must compile with Python's
    ``re`` (the scheduler) and stay inside :data:`REGEX_SYNTAX`, the syntax Python and RE2 (the
    API server) read alike."""
    # The syntax first: it also keeps out what makes re.compile warn ([a&&b], a nested set).
    if not (full_match(REGEX_SYNTAX, pattern) and full_match(REGEX_GROUPS, pattern)):
        return "outside the syntax Python re and RE2 share (docs/selection.md)"
    try:
        re.compile(pattern)
    except re.error as err:
        return f"does not compile: {err}"
    return None


def _pool_names_unique(targets: list[PoolTarget]) -> bool:
    return unique([t.pool for t in targets])


ScorerType = Literal[
    "prefix-cache",
    "queue",
    "kv-usage",
    "slo-headroom",
    "session-affinity",
    "cold-spread",
]
FilterType = Literal["healthy", "bounded-load", "slo-feasible", "shortlist"]
PickerType = Literal[
    "max-score", "random-top-k", "weighted-random", "round-robin", "power-of-two", "cache-aware"
]
ProfileName = Literal[
    "modelfleet",
    "round-robin",
    "least-request",
    "least-load-speed",
    "power-of-two",
    "cache-aware",
    "llm-d",
    "llumnix",
    "custom",
]


class PoolTarget(ApiModel):
    """A pool and its share of the traffic that reaches it."""

    pool: str = Field(
        min_length=1,
        max_length=63,
        pattern=POOL_NAME_PATTERN,
        description="ModelPool name (a DNS-1035 label, as pool names are).",
    )
    weight: float = Field(
        default=1.0, ge=0, le=1000, description="Relative weight (0..1000). Default 1."
    )


def _weights_ok(targets: list[PoolTarget]) -> bool:
    return any(t.weight > 0 for t in targets)


class Match(ApiModel):
    """Conditions of a rule; all given conditions must hold (AND)."""

    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "Request headers (names are HTTP tokens, matched case-insensitively) that must be "
            "present with exactly these values."
        ),
    )
    min_prompt_tokens: int = Field(
        default=0, ge=0, le=10_000_000, description="Smallest prompt, tokens. Default 0."
    )
    max_prompt_tokens: int = Field(
        default=10_000_000,
        ge=0,
        le=10_000_000,
        description="Largest prompt, tokens. Default 10,000,000 (no bound).",
    )
    keywords: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=64,
        description="Any of these words (case-insensitive, non-empty) in the last user message.",
    )
    regex: str = Field(
        default="",
        max_length=1024,
        description=(
            "Pattern found anywhere in the prompt (Python re), in the syntax Python re and "
            "RE2 share; it must compile. Escapes: \\d \\D \\s \\S \\w \\W \\b \\B "
            "\\A \\a \\f \\n \\r \\t \\v and escaped punctuation; groups ( ) and "
            "(?:...), (?i:...) (flags i, m, s, or -i...); one (?i)-style flag at the start; "
            "counts {n}, {n,}, {n,m} up to 1000 on a single atom; at most 100 '('. No "
            "lookaround, backreferences, named groups, \\p, \\z or \\Z, possessive or "
            "atomic forms (docs/selection.md)."
        ),
    )
    semantic_class: str = Field(
        default="",
        max_length=63,
        description="Class the semantic classifier must assign (selection.semantic.classes).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minPromptTokens <= self.maxPromptTokens",
            message="minPromptTokens must be <= maxPromptTokens",
            field="minPromptTokens",
            check=lambda m: m.min_prompt_tokens <= m.max_prompt_tokens,
        ),
        Rule(
            cel=f"self.headers.all(h, h.matches({cel_string(HEADER_NAME_PATTERN)}))",
            message="headers keys must be HTTP header names",
            field="headers",
            check=lambda m: all(full_match(HEADER_NAME_PATTERN, h) for h in m.headers),
        ),
        Rule(
            # matches() compiles the pattern with RE2 when the rule runs; a pattern that does
            # not compile makes the rule fail, and the conditional keeps that failure from
            # being absorbed by ||. Both branches of the conditional are true.
            cel=(
                f"self.regex == '' || (self.regex.matches({cel_string(REGEX_SYNTAX)}) && "
                f"self.regex.matches({cel_string(REGEX_GROUPS)}) && "
                "(''.matches(self.regex) ? true : true))"
            ),
            message=(
                "regex must compile, in the syntax Python re and RE2 share (no lookaround, "
                "backreferences, named groups or \\p; docs/selection.md)"
            ),
            # No field: the API server reports a rule that fails to evaluate at the object
            # (match), whatever its fieldPath, so both validators name match.
            field="",
            check=lambda m: m.regex == "" or regex_problem(m.regex) is None,
        ),
    )


class RoutingRule(ApiModel):
    """A named rule: the first rule whose match holds picks the targets."""

    name: str = Field(
        min_length=1, max_length=63, pattern=LABEL_PATTERN, description="Rule name (unique)."
    )
    match: Match = Field(default_factory=Match, description="Conditions (all must hold).")
    targets: list[PoolTarget] = Field(
        min_length=1, max_length=16, description="Pools to send matching requests to."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.targets.exists(t, t.weight > 0.0)",
            message="at least one target weight must be > 0",
            field="targets",
            check=lambda r: _weights_ok(r.targets),
        ),
        Rule(
            cel="self.targets.all(a, self.targets.exists_one(b, b.pool == a.pool))",
            message="target pools must be unique",
            field="targets",
            check=lambda r: _pool_names_unique(r.targets),
        ),
    )


FallbackReason = Literal["overload", "error", "timeout"]
MigrationTrigger = Literal["load-imbalance", "slo-rescue", "drain"]


def _all_fallbacks() -> list[FallbackReason]:
    return ["overload", "error", "timeout"]


def _drain_only() -> list[MigrationTrigger]:
    return ["drain"]


class CascadeParams(ApiModel):
    """cascade: try the targets in order, fall back to the next one."""

    fallback_on: list[FallbackReason] = Field(
        default_factory=_all_fallbacks,
        max_length=3,
        description="What sends a request on to the next target (unique). Default all three.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="",  # the schema's list type 'set' enforces it on the server
            message="fallbackOn values must be unique",
            field="fallbackOn",
            check=lambda c: unique(list(c.fallback_on)),
        ),
    )
    timeout_ms: int = Field(
        default=30000, ge=1, le=3_600_000, description="Time to first token before 'timeout', ms."
    )


class CostQualityParams(ApiModel):
    """cost-quality: pick argmax predicted quality − costWeight × cost (CARROT-style)."""

    cost_weight: float = Field(
        default=0.05,
        ge=0,
        le=1_000_000,
        description=(
            "Trade-off λ: predicted quality (probability of a correct answer, 0..1) given up "
            "per USD of cost per 1k requests. 0 = best quality regardless of cost; useful "
            "range 0.01..0.1. Default 0.05."
        ),
    )
    quality_model: str = Field(
        default="builtin",
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
        description="Quality predictor: 'builtin' or a ConfigMap name holding a trained one.",
    )
    pool_models: dict[str, Annotated[str, Field(max_length=253)]] = Field(
        default_factory=dict,
        max_length=32,
        description="Pool name → model key in the quality predictor (default: the pool name).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=(
                "self.poolModels.all(p, p.size() <= 63 && "
                f"p.matches({cel_string(POOL_NAME_PATTERN)}))"
            ),
            message="poolModels keys must be pool names",
            field="poolModels",
            check=lambda c: all(
                len(p) <= 63 and full_match(POOL_NAME_PATTERN, p) for p in c.pool_models
            ),
        ),
    )


class SemanticClass(ApiModel):
    """A class of requests, described by example phrases."""

    name: str = Field(min_length=1, max_length=63, pattern=LABEL_PATTERN, description="Name.")
    examples: list[Annotated[str, Field(min_length=1, max_length=8192)]] = Field(
        min_length=1, max_length=256, description="Example prompts of this class (non-empty)."
    )


class SemanticParams(ApiModel):
    """semantic: nearest class centroid decides the class used by rules."""

    classes: list[SemanticClass] = Field(
        default_factory=list, max_length=32, description="The classes."
    )
    min_similarity: float = Field(
        default=0.0, ge=0, le=1, description="Below this cosine similarity: no class."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.classes.all(a, self.classes.exists_one(b, b.name == a.name))",
            message="class names must be unique",
            field="classes",
            check=lambda s: unique([c.name for c in s.classes]),
        ),
    )


class BanditParams(ApiModel):
    """bandit: learn online from feedback which target serves best."""

    algorithm: Literal["epsilon-greedy", "thompson", "ucb"] = Field(
        default="thompson", description="Bandit algorithm. Default thompson."
    )
    epsilon: float = Field(default=0.1, ge=0, le=1, description="Exploration (epsilon-greedy).")
    reward: Literal["success", "latency", "feedback"] = Field(
        default="success",
        description="Reward: request success, SLO met, or explicit client feedback.",
    )


class SelectionSpec(ApiModel):
    """How a pool is chosen among the matched targets."""

    strategy: Literal["weighted", "cascade", "cost-quality", "semantic", "bandit"] = Field(
        default="weighted", description="Selection strategy. Default weighted."
    )
    cascade: CascadeParams = Field(default_factory=CascadeParams)
    cost_quality: CostQualityParams = Field(default_factory=CostQualityParams)
    semantic: SemanticParams = Field(default_factory=SemanticParams)
    bandit: BanditParams = Field(default_factory=BanditParams)

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.strategy != 'semantic' || size(self.semantic.classes) > 0",
            message="strategy semantic needs at least one class in semantic.classes",
            field="semantic.classes",
            check=lambda s: s.strategy != "semantic" or bool(s.semantic.classes),
        ),
    )


class ScorerSpec(ApiModel):
    """A weighted placement scorer."""

    type: ScorerType = Field(description="Scorer type.")
    weight: float = Field(default=1.0, ge=0, le=1000, description="Weight (0..1000).")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Scorer parameters, checked against the scorer's own schema by `modelfleet "
            "validate` and the operator (condition Accepted, reason InvalidParameters)."
        ),
    )


class FilterSpec(ApiModel):
    """A placement filter: endpoints it removes are not considered."""

    type: FilterType = Field(description="Filter type.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Filter parameters (checked like scorers')."
    )


class PickerSpec(ApiModel):
    """How an instance is picked from the scores."""

    type: PickerType = Field(
        default="max-score", description="Picker type. Default max-score (ties at random)."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Picker parameters, e.g. {k: 2} for random-top-k."
    )


class PrefixIndexSpec(ApiModel):
    """Sizing of the scheduler's prefix index."""

    block_size: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Approximate index: tokens per hashed block (1..4096). Default 64.",
    )
    capacity_blocks: int = Field(
        default=31250,
        ge=1,
        le=100_000_000,
        description="Approximate index: LRU capacity per instance, blocks. Default 31,250.",
    )
    speculative_ttl_s: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description=(
            "Exact index: how long a routed prompt counts as cached before its KV events "
            "arrive, s (0..600). Default 2."
        ),
    )


class SessionAffinitySpec(ApiModel):
    """Keep a session on one instance while its load stays bounded."""

    header: str = Field(
        default="x-session-id",
        min_length=1,
        max_length=256,
        pattern=HEADER_NAME_PATTERN,
        description="Session header (an HTTP header name).",
    )
    max_load_factor: float = Field(
        default=1.25,
        ge=1,
        le=10,
        description="An instance takes a session only below this × mean load (1..10).",
    )


class PlacementSpec(ApiModel):
    """How an instance of the chosen pool is picked: filters → weighted scorers → picker."""

    profile: ProfileName = Field(
        default="modelfleet",
        description=(
            "Built-in profile: modelfleet (SLO headroom + prefix cache + load, bounded load), "
            "or a baseline (round-robin, least-request, least-load-speed, power-of-two, "
            "cache-aware, llm-d, llumnix); custom = the filters, scorers and picker below."
        ),
    )
    filters: list[FilterSpec] = Field(
        default_factory=list,
        max_length=16,
        description="Filters (profile custom only; default: healthy).",
    )
    scorers: list[ScorerSpec] = Field(
        default_factory=list, max_length=16, description="Scorers (profile custom only)."
    )
    picker: PickerSpec = Field(
        default_factory=PickerSpec, description="Picker (profile custom only)."
    )
    prefix_source: Literal["approximate", "kv-events"] = Field(
        default="approximate",
        description=(
            "approximate: prefixes learned from routed requests; kv-events: exact, from the "
            "engines' KV-cache events (engine.kvEvents must be on)."
        ),
    )
    prefix_index: PrefixIndexSpec = Field(default_factory=PrefixIndexSpec)
    session_affinity: SessionAffinitySpec | None = Field(
        default=None,
        description=(
            "Session affinity with bounded load. Unset = the profile's default (modelfleet: "
            "header x-session-id, factor 1.25; baselines: off)."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.profile != 'custom' || self.scorers.exists(s, s.weight > 0.0)",
            message="profile custom needs at least one scorer with weight > 0",
            field="scorers",
            check=lambda p: p.profile != "custom" or any(s.weight > 0 for s in p.scorers),
        ),
        Rule(
            cel="self.profile == 'custom' || (size(self.scorers) == 0 && size(self.filters) == 0)",
            message="filters and scorers may only be set with profile custom",
            field="profile",
            check=lambda p: p.profile == "custom" or not (p.scorers or p.filters),
        ),
        Rule(
            cel="self.scorers.all(a, self.scorers.exists_one(b, b.type == a.type))",
            message="scorer types must be unique",
            field="scorers",
            check=lambda p: unique([s.type for s in p.scorers]),
        ),
    )


class SLOClass(ApiModel):
    """A latency class a request can ask for."""

    name: str = Field(min_length=1, max_length=63, pattern=LABEL_PATTERN, description="Name.")
    ttft_ms: int = Field(ge=1, le=600000, description="Time to first token target, ms.")
    tpot_ms: int = Field(ge=1, le=60000, description="Time per output token target, ms.")
    priority: int = Field(
        default=50, ge=0, le=100, description="Higher is served first (0..100). Default 50."
    )
    on_violation: Literal["queue", "shed", "downgrade"] = Field(
        default="queue",
        description=(
            "When no instance can meet the target: queue (wait), shed (429 at once) or "
            "downgrade (send to downgradePool)."
        ),
    )
    downgrade_pool: str = Field(
        default="",
        max_length=63,
        pattern=r"^$|" + POOL_NAME_PATTERN,
        description="Pool for onViolation downgrade (a pool name).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.onViolation != 'downgrade' || self.downgradePool != ''",
            message="downgradePool is required when onViolation is downgrade",
            field="downgradePool",
            check=lambda c: c.on_violation != "downgrade" or c.downgrade_pool != "",
        ),
    )


class MigrationSpec(ApiModel):
    """Live migration of running requests (make-before-break)."""

    enabled: bool = Field(default=False, description="Allow migrations. Default false.")
    triggers: list[MigrationTrigger] = Field(
        default_factory=_drain_only,
        max_length=3,
        description="Why a request may move (unique). Default: drain only.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    max_concurrent: int = Field(
        default=4, ge=1, le=256, description="Migrations in flight at once (1..256). Default 4."
    )
    min_gain_ms: int = Field(
        default=200,
        ge=0,
        le=600000,
        description="Move only if the predicted gain exceeds the move's cost by this, ms.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="",  # the schema's list type 'set' enforces it on the server
            message="triggers must be unique",
            field="triggers",
            check=lambda m: unique(list(m.triggers)),
        ),
    )


class RateLimit(ApiModel):
    """Request and token budgets per minute."""

    requests_per_minute: int = Field(default=0, ge=0, le=10_000_000, description="0 = none.")
    tokens_per_minute: int = Field(default=0, ge=0, le=1_000_000_000, description="0 = none.")


class KeyRateLimit(RateLimit):
    """Budgets for one API key."""

    key_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^sha256:[0-9a-f]{16}$",
        description=(
            "API key id: 'sha256:' + the first 16 lowercase hex digits of the SHA-256 of the "
            "bearer token."
        ),
    )


class RateLimitSpec(ApiModel):
    """Per-key rate limits; requests over the limit get 429 with Retry-After."""

    default: RateLimit | None = Field(default=None, description="Applies to unlisted keys.")
    per_key: list[KeyRateLimit] = Field(default_factory=list, max_length=64)

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.perKey.all(a, self.perKey.exists_one(b, b.keyId == a.keyId))",
            message="keyId values must be unique",
            field="perKey",
            check=lambda r: unique([k.key_id for k in r.per_key]),
        ),
    )


class RoutingPolicySpec(ApiModel):
    """Desired routing for some public model names."""

    model_names: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        min_length=1,
        max_length=32,
        description="Public model names (OpenAI 'model' field) this policy answers; unique.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    rules: list[RoutingRule] = Field(
        default_factory=list, max_length=32, description="Ordered rules; first match wins."
    )
    default_targets: list[PoolTarget] = Field(
        min_length=1, max_length=16, description="Targets when no rule matches."
    )
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    slo_classes: list[SLOClass] = Field(default_factory=list, max_length=16)
    slo_class_header: str = Field(
        default="x-slo-class",
        min_length=1,
        max_length=256,
        pattern=HEADER_NAME_PATTERN,
        description="Header naming a class (an HTTP header name).",
    )
    default_slo_class: str = Field(
        default="", max_length=63, description="Class of requests without the header."
    )
    migration: MigrationSpec = Field(default_factory=MigrationSpec)
    rate_limits: RateLimitSpec = Field(default_factory=RateLimitSpec)

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.rules.all(a, self.rules.exists_one(b, b.name == a.name))",
            message="rule names must be unique",
            field="rules",
            check=lambda s: unique([r.name for r in s.rules]),
        ),
        Rule(
            cel="self.defaultTargets.exists(t, t.weight > 0.0)",
            message="at least one defaultTargets weight must be > 0",
            field="defaultTargets",
            check=lambda s: _weights_ok(s.default_targets),
        ),
        Rule(
            cel="self.sloClasses.all(a, self.sloClasses.exists_one(b, b.name == a.name))",
            message="SLO class names must be unique",
            field="sloClasses",
            check=lambda s: unique([c.name for c in s.slo_classes]),
        ),
        Rule(
            cel=(
                "self.defaultSloClass == '' || "
                "self.sloClasses.exists(c, c.name == self.defaultSloClass)"
            ),
            message="defaultSloClass must name one of sloClasses",
            field="defaultSloClass",
            check=lambda s: (
                s.default_slo_class == ""
                or any(c.name == s.default_slo_class for c in s.slo_classes)
            ),
        ),
        Rule(
            cel="",  # the schema's list type 'set' enforces it on the server
            message="modelNames must be unique",
            field="modelNames",
            check=lambda s: unique(s.model_names),
        ),
        Rule(
            cel="self.defaultTargets.all(a, self.defaultTargets.exists_one(b, b.pool == a.pool))",
            message="defaultTargets pools must be unique",
            field="defaultTargets",
            check=lambda s: _pool_names_unique(s.default_targets),
        ),
        Rule(
            cel=(
                "self.rules.all(r, r.match.semanticClass == '' || "
                "self.selection.semantic.classes.exists(c, c.name == r.match.semanticClass))"
            ),
            message="a rule's match.semanticClass must name one of selection.semantic.classes",
            field="rules",
            check=lambda s: all(
                r.match.semantic_class == ""
                or any(c.name == r.match.semantic_class for c in s.selection.semantic.classes)
                for r in s.rules
            ),
        ),
    )


class RoutingPolicyStatus(ApiModel):
    """Observed state, written by the operator."""

    observed_generation: int = Field(default=0, ge=0, description="Generation last processed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Accepted (the spec is usable by the scheduler; reason Invalid otherwise), "
            "ResolvedRefs (every referenced pool exists; reason PoolNotFound names the missing)."
        ),
    )


class RoutingPolicy(Resource):
    """How requests for some model names are answered (namespaced, short name rp)."""

    KIND: ClassVar[str] = "RoutingPolicy"
    PLURAL: ClassVar[str] = "routingpolicies"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("rp",)
    NAMESPACED: ClassVar[bool] = True

    kind: Literal["RoutingPolicy"] = "RoutingPolicy"
    spec: RoutingPolicySpec
    status: RoutingPolicyStatus | None = None

    def referenced_pools(self) -> set[str]:
        """Every pool name the spec refers to."""
        s = self.spec
        names = {t.pool for t in s.default_targets}
        names |= {t.pool for r in s.rules for t in r.targets}
        names |= {c.downgrade_pool for c in s.slo_classes if c.downgrade_pool}
        return names
