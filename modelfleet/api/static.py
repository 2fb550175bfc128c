"""StaticEndpoints: the engine instances of a fleet that no cluster discovers.

Not a CRD: a document of the scheduler's static fleet configuration (``modelfleet scheduler
--config FILE``), written next to the same AcceleratorProfile, ModelPool and RoutingPolicy
manifests a cluster would hold. It lists, per pool variant, the base URLs of running engines
(``modelfleet engine`` processes or vLLM servers), which in Kubernetes the scheduler finds as
the pods labelled ``modelfleet.io/pool`` and ``modelfleet.io/variant``. ``modelfleet validate``
checks it like the CRD kinds; ``--check-refs`` also checks that every pool and variant it names
exists.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field

from modelfleet.api.common import LABEL_PATTERN, NAME_PATTERN, ApiModel, Resource, Rule, unique

#: An http(s) base URL without a path (the engine's OpenAI API is at ``/v1/...`` under it).
URL_PATTERN = r"^https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?$"
#: A ZMQ endpoint a subscriber connects to (``tcp://host:port``, ``ipc://path``).
ZMQ_PATTERN = r"^(tcp://[A-Za-z0-9.\-\[\]:*]+:[0-9]{1,5}|ipc://.+)$"


class StaticEndpoint(ApiModel):
    """One engine instance of a pool variant."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=URL_PATTERN,
        description="Base URL of the engine's OpenAI API, e.g. http://127.0.0.1:8001.",
    )
    pool: str = Field(
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
        description="ModelPool (in this document's namespace) the engine serves.",
    )
    variant: str = Field(
        min_length=1, max_length=40, pattern=LABEL_PATTERN, description="Variant of that pool."
    )
    id: str = Field(
        default="",
        max_length=253,
        description=(
            "Endpoint id used in metrics and the control API. Default: the URL's host:port."
        ),
    )
    kv_events: str = Field(
        default="",
        max_length=2048,
        description=(
            "ZMQ endpoint of the engine's KV-cache events (tcp://host:port); 'auto' asks the "
            "engine's /kv_event_sources; empty = none (only read when a RoutingPolicy uses "
            "prefixSource kv-events)."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="",
            message="kvEvents must be empty, 'auto' or a ZMQ endpoint (tcp://host:port, ipc://path)",
            field="kvEvents",
            check=lambda e: e.kv_events in ("", "auto") or _zmq_ok(e.kv_events),
        ),
    )

    @property
    def endpoint_id(self) -> str:
        """The id, or the URL's ``host:port`` when none is given."""
        if self.id:
            return self.id
        return self.url.split("://", 1)[1].rstrip("/")


def _zmq_ok(text: str) -> bool:
    return re.match(ZMQ_PATTERN, text) is not None


class StaticEndpointsSpec(ApiModel):
    """The engines of a static fleet."""

    endpoints: list[StaticEndpoint] = Field(
        default_factory=list, max_length=4096, description="Engine instances."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="",
            message="endpoint ids (default: host:port of the URL) must be unique",
            field="endpoints",
            check=lambda s: unique([e.endpoint_id for e in s.endpoints]),
        ),
    )


class StaticEndpoints(Resource):
    """Engine instances of a static fleet (a configuration document, not a CRD)."""

    KIND: ClassVar[str] = "StaticEndpoints"
    PLURAL: ClassVar[str] = "staticendpoints"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ()
    NAMESPACED: ClassVar[bool] = True

    kind: Literal["StaticEndpoints"] = "StaticEndpoints"
    spec: StaticEndpointsSpec
