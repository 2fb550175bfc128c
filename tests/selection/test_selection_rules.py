"""Rules: each condition, precedence (first match wins), fall-through and bad rules."""

from __future__ import annotations

import random
from typing import Any

import pytest

from modelfleet.api.routingpolicy import RoutingPolicySpec
from modelfleet.policy.selection import PoolView, SelectionRequest, build_selector

pytestmark = pytest.mark.unit


def spec(**kw: Any) -> RoutingPolicySpec:
    """A RoutingPolicySpec from camelCase wire fields, with defaults for the required ones."""
    body: dict[str, Any] = {"modelNames": ["auto"], "defaultTargets": [{"pool": "default"}]}
    body.update(kw)
    return RoutingPolicySpec.model_validate(body)


POOLS = [PoolView(name=n) for n in ("default", "small", "big", "code", "canary")]


def rule(name: str, pool: str, **match: Any) -> dict[str, Any]:
    return {"name": name, "match": match, "targets": [{"pool": pool}]}


@pytest.mark.parametrize(
    ("match", "request_", "hit"),
    [
        ({}, SelectionRequest(), True),
        ({"headers": {"x-tier": "gold"}}, SelectionRequest(headers={"x-tier": "gold"}), True),
        ({"headers": {"X-Tier": "gold"}}, SelectionRequest(headers={"x-tier": "gold"}), True),
        ({"headers": {"x-tier": "gold"}}, SelectionRequest(headers={"X-TIER": "gold"}), True),
        ({"headers": {"x-tier": "gold"}}, SelectionRequest(headers={"x-tier": "Gold"}), False),
        ({"headers": {"x-tier": "gold"}}, SelectionRequest(), False),
        ({"minPromptTokens": 100}, SelectionRequest(prompt_tokens=100), True),
        ({"minPromptTokens": 100}, SelectionRequest(prompt_tokens=99), False),
        ({"maxPromptTokens": 100}, SelectionRequest(prompt_tokens=100), True),
        ({"maxPromptTokens": 100}, SelectionRequest(prompt_tokens=101), False),
        ({"keywords": ["python", "rust"]}, SelectionRequest(prompt="Write Rust code"), True),
        ({"keywords": ["rust"]}, SelectionRequest(prompt="trusty old car"), False),
        ({"regex": r"def \w+\("}, SelectionRequest(prompt="fix: def foo(x)"), True),
        ({"regex": r"^SELECT"}, SelectionRequest(prompt="select 1"), False),
        (
            {"keywords": ["sql"], "maxPromptTokens": 10},
            SelectionRequest(prompt="sql please", prompt_tokens=11),
            False,
        ),
    ],
    ids=[
        "empty-match-always",
        "header-exact",
        "header-name-case-in-rule",
        "header-name-case-in-request",
        "header-value-case-sensitive",
        "header-missing",
        "min-tokens-inclusive",
        "min-tokens-below",
        "max-tokens-inclusive",
        "max-tokens-above",
        "keyword-any-case-insensitive",
        "keyword-whole-word-only",
        "regex-search",
        "regex-no-match",
        "all-conditions-must-hold",
    ],
)
def test_each_condition(match: dict[str, Any], request_: SelectionRequest, hit: bool) -> None:
    sel = build_selector(spec(rules=[rule("r", "small", **match)]))
    d = sel.select(request_, POOLS, random.Random(0))
    assert (d.pool == "small") is hit
    assert (d.rule == "r") is hit
    if not hit:
        assert d.pool == "default" and d.reason == "default targets"


def test_first_matching_rule_wins_over_later_ones() -> None:
    sel = build_selector(
        spec(
            rules=[
                rule("code", "code", keywords=["python"]),
                rule("long", "big", minPromptTokens=1000),
                rule("all", "small"),
            ]
        )
    )
    rng = random.Random(0)
    both = SelectionRequest(prompt="python", prompt_tokens=5000)
    assert sel.select(both, POOLS, rng).rule == "code"
    assert sel.select(SelectionRequest(prompt_tokens=5000), POOLS, rng).rule == "long"
    assert sel.select(SelectionRequest(prompt="hi"), POOLS, rng).rule == "all"


def test_rule_with_no_available_pool_falls_through_to_next_rule_then_defaults() -> None:
    sel = build_selector(spec(rules=[rule("a", "canary"), rule("b", "small")]))
    pools = [PoolView("default"), PoolView("canary", available=False), PoolView("small")]
    assert sel.select(SelectionRequest(), pools, random.Random(0)).rule == "b"
    pools = [PoolView("default"), PoolView("canary", available=False)]
    d = sel.select(SelectionRequest(), pools, random.Random(0))
    assert (d.pool, d.rule) == ("default", None)


def test_no_available_target_gives_no_pool() -> None:
    sel = build_selector(spec())
    d = sel.select(SelectionRequest(), [PoolView("default", available=False)], random.Random(0))
    assert d.pool is None and d.reason == "no available target pool"
    assert sel.select(SelectionRequest(), [], random.Random(0)).pool is None


def test_semantic_class_feeds_rules() -> None:
    classes = [
        {"name": "code", "examples": ["write a python function", "fix this java bug"]},
        {"name": "chat", "examples": ["tell me a joke", "how are you today"]},
    ]
    sel = build_selector(
        spec(
            rules=[rule("code", "code", semanticClass="code")],
            selection={"strategy": "semantic", "semantic": {"classes": classes}},
        )
    )
    rng = random.Random(0)
    d = sel.select(SelectionRequest(prompt="please write a python function"), POOLS, rng)
    assert (d.pool, d.semantic_class) == ("code", "code")
    d = sel.select(SelectionRequest(prompt="tell me a joke about cats"), POOLS, rng)
    assert (d.pool, d.semantic_class) == ("default", "chat")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # The API model refuses the first three at parse time (the CRD's CEL rules mirror it).
        (
            {"rules": [rule("r", "small", regex="(unclosed")]},
            r"rules\.0\.match\n.*regex must compile",
        ),
        (
            {"rules": [rule("r", "small", semanticClass="nope")]},
            r"match\.semanticClass must name one of selection\.semantic\.classes",
        ),
        ({"selection": {"strategy": "semantic"}}, r"semantic needs .* semantic\.classes"),
        # This one parses; the selector refuses it for want of a predictor.
        ({"selection": {"strategy": "cost-quality"}}, r"selection\.costQuality"),
    ],
    ids=["bad-regex", "unknown-semantic-class", "semantic-without-classes", "no-predictor"],
)
def test_bad_configuration_names_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_selector(spec(**body))
