"""Ordered match rules: the first rule whose conditions all hold picks the candidate pools.

A rule (``RoutingPolicy.spec.rules[]``) matches when *every* condition it sets holds:

- ``headers``: each named header is present with exactly that value (names case-insensitive,
  values case-sensitive, as in the Gateway API's exact header match);
- ``minPromptTokens <= prompt_tokens <= maxPromptTokens`` (both inclusive);
- ``keywords``: at least one keyword occurs as a whole word, case-insensitively;
- ``regex``: the pattern is found anywhere in the prompt (``re.search``);
- ``semanticClass``: the semantic classifier assigned this class to the request.

Rules are compiled once (:class:`CompiledRule`) when the policy is built, so a bad regex is
refused at configuration time with the rule's name, never at request time. Precedence is the
list order; the first match wins and later rules are not evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from modelfleet.api.routingpolicy import PoolTarget, RoutingRule
from modelfleet.policy.selection.types import SelectionRequest


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its patterns compiled; ``targets`` keep the spec's order and weights."""

    name: str
    headers: tuple[tuple[str, str], ...]
    min_prompt_tokens: int
    max_prompt_tokens: int
    keywords: re.Pattern[str] | None
    regex: re.Pattern[str] | None
    semantic_class: str
    targets: tuple[PoolTarget, ...]

    @property
    def needs_class(self) -> bool:
        """Whether matching this rule needs the request's semantic class."""
        return bool(self.semantic_class)

    def matches(self, request: SelectionRequest, semantic_class: str) -> bool:
        """Whether every condition set on this rule holds for ``request``."""
        if not self.min_prompt_tokens <= request.prompt_tokens <= self.max_prompt_tokens:
            return False
        for name, value in self.headers:
            if _header(request, name) != value:
                return False
        if self.semantic_class and semantic_class != self.semantic_class:
            return False
        if self.keywords is not None and self.keywords.search(request.prompt) is None:
            return False
        return not (self.regex is not None and self.regex.search(request.prompt) is None)


def _header(request: SelectionRequest, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None:
        return value
    for k, v in request.headers.items():
        if k.lower() == name:
            return v
    return None


def compile_rule(rule: RoutingRule) -> CompiledRule:
    """Compile one rule; a bad regex raises ``ValueError`` naming the rule and the field."""
    m = rule.match
    regex: re.Pattern[str] | None = None
    if m.regex:
        try:
            regex = re.compile(m.regex)
        except re.error as exc:
            raise ValueError(f"rules[{rule.name}].match.regex: invalid pattern: {exc}") from exc
    words = [w for w in m.keywords if w.strip()]
    keywords = (
        re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
        if words
        else None
    )
    return CompiledRule(
        name=rule.name,
        headers=tuple((k.lower(), v) for k, v in m.headers.items()),
        min_prompt_tokens=m.min_prompt_tokens,
        max_prompt_tokens=m.max_prompt_tokens,
        keywords=keywords,
        regex=regex,
        semantic_class=m.semantic_class,
        targets=tuple(rule.targets),
    )


def first_match(
    rules: Sequence[CompiledRule], request: SelectionRequest, semantic_class: str = ""
) -> CompiledRule | None:
    """The first rule in order that matches, or ``None`` (use the default targets)."""
    for rule in rules:
        if rule.matches(request, semantic_class):
            return rule
    return None
