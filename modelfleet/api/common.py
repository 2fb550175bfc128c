"""Shared building blocks of the ``modelfleet.io/v1alpha1`` API.

Every spec model derives from :class:`ApiModel`: camelCase on the wire, unknown fields refused
(a typo must never be silently dropped), and cross-field rules declared once as :class:`Rule`
values that are both evaluated in Python (offline ``modelfleet validate``) and emitted as CEL
``x-kubernetes-validations`` in the generated CRDs (the API server). Keeping the Python check and
the CEL text side by side on the model is what keeps the two from drifting; the cluster tier
checks that both name the same field for every invalid manifest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "modelfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: A Kubernetes object name (RFC 1123 subdomain, as used by most kinds).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
#: An RFC 1123 label (variant names become part of Deployment names).
LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: An RFC 1035 label: what a Service may be called. A ModelPool names its headless Service and
#: is the value of the pods' ``modelfleet.io/pool`` label, so pool names follow it (1..63 chars).
POOL_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: A label value (empty, or alphanumerics with ``-_.`` inside; at most 63 characters).
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A label key (a qualified name): an optional DNS-subdomain prefix and ``/``, then a name of
#: 1..63 alphanumerics with ``-_.`` inside. Node selectors, taint keys and resource names use it.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: An extended resource (a device plugin's): a domain prefix is required, e.g. nvidia.com/gpu.
EXTENDED_RESOURCE_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: An HTTP header name (RFC 9110 token).
HEADER_NAME_PATTERN = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"
#: An environment variable name as the API server accepts it in a container.
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
#: A key of a Secret's data.
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
#: A container image reference: [registry[:port]/]path[:tag][@sha256:digest], no whitespace.
IMAGE_PATTERN = (
    r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]+)?/)?"
    r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)


def full_match(pattern: str, value: str) -> bool:
    """``value`` matches the anchored ``pattern`` (``^...$``) as Go's RE2 matches it.

    The Python side of a CEL ``matches`` or an OpenAPI ``pattern``. ``re.fullmatch`` rather
    than ``re.search``: Python's ``$`` also matches before a final newline, RE2's does not.
    """
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


def cel_string(value: str) -> str:
    """``value`` as a CEL string literal (single-quoted, backslashes and quotes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, checked in Python and emitted as CEL.

    ``cel`` is evaluated by the API server with ``self`` bound to the object the rule is
    attached to (empty when the schema itself enforces the rule, e.g. a list of type set);
    ``check`` is the same predicate in Python on the parsed model. ``field`` is the path
    (relative to that object, camelCase, dotted) that the error names; it becomes the CEL
    ``fieldPath`` so both validators point at the same place.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str = ""

    def to_cel(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
        return out


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase aliases, unknown fields refused, rules run."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
        frozen=True,
        strict=True,
        json_schema_extra=lambda schema, cls: _schema_extra(schema, cls),
    )

    #: Cross-field rules of this model (see :class:`Rule`).
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).cel_rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "rule", rule.message, {"field": rule.field, "rule_message": rule.message}
                )
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, defaults included, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _schema_extra(schema: dict[str, Any], cls: type[Any]) -> None:
    """Add the model's CEL rules, and the defaults pydantic leaves out of the JSON schema.

    pydantic omits a ``default_factory`` value from the schema; for a list or a mapping (e.g.
    ``triggers`` defaulting to ``["drain"]``) the CRD must still carry it, or the API server
    would store an object without it and every reader would see a different default than the
    Python model's. (Nested objects get their fully defaulted value from the CRD generator.)
    """
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    cel = [r.to_cel() for r in rules if r.cel]
    if cel:
        schema["x-kubernetes-validations"] = cel
    properties = schema.get("properties", {})
    for name, info in cls.model_fields.items():
        factory = info.default_factory
        prop = properties.get(info.alias or name)
        if factory is None or prop is None or "default" in prop:
            continue
        value = factory()
        if isinstance(value, list | dict):
            prop["default"] = value


def unique(values: list[str]) -> bool:
    return len(values) == len(set(values))


class ObjectMeta(BaseModel):
    """The part of Kubernetes ``metadata`` modelfleet reads; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    namespace: str | None = Field(default=None, max_length=63, pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None


class PoolMeta(ObjectMeta):
    """``metadata`` of a kind whose name must be a DNS-1035 label (it names a Service and is a
    label value). The CRD restricts ``metadata.name`` the same way, as CRDs may."""

    name: str = Field(min_length=1, max_length=63, pattern=POOL_NAME_PATTERN)


class Condition(ApiModel):
    """A status condition, as in ``metav1.Condition``."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", max_length=1024, description="CamelCase reason, documented per type."
    )
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    observed_generation: int = Field(
        default=0, ge=0, description="metadata.generation the condition was computed from."
    )
    last_transition_time: datetime | None = Field(
        default=None, strict=False, description="When status last changed (RFC 3339)."
    )


class EnvVar(ApiModel):
    """An environment variable for the engine container (literal value only)."""

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=ENV_NAME_PATTERN,
        description="Variable name (letters, digits, '-', '.', '_'; not starting with a digit).",
    )
    value: str = Field(default="", max_length=4096, description="Literal value.")


class SecretKeyRef(ApiModel):
    """A key in a Secret in the object's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=NAME_PATTERN, description="Secret name."
    )
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key in it (letters, digits, '-', '.', '_'). Default token.",
    )


class Resource(BaseModel):
    """Envelope of a modelfleet object: apiVersion, kind, metadata, spec, status."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: Kind name, plural, short names, scope: set by each subclass.
    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    NAMESPACED: ClassVar[bool]

    api_version: Literal["modelfleet.io/v1alpha1"] = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta

    @model_validator(mode="after")
    def _check_kind(self) -> Resource:
        if self.kind != type(self).KIND:
            raise PydanticCustomError(
                "rule",
                "kind must be {expected}",
                {"field": "kind", "expected": type(self).KIND},
            )
        return self
