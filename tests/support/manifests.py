"""Minimal valid manifests of the three kinds (a fresh name each), with spec fields merged in."""

from __future__ import annotations

import uuid
from typing import Any

from modelfleet.api.common import API_VERSION

Manifest = dict[str, Any]


def _name() -> str:
    return f"prop-{uuid.uuid4().hex[:8]}"


def pool(**spec: Any) -> Manifest:
    base = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "servedModelName": "llama",
        "variants": [{"name": "a", "acceleratorProfile": "h100"}],
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelPool",
        "metadata": {"name": _name()},
        "spec": {**base, **spec},
    }


def policy(**spec: Any) -> Manifest:
    base = {"modelNames": ["llama"], "defaultTargets": [{"pool": "p"}]}
    return {
        "apiVersion": API_VERSION,
        "kind": "RoutingPolicy",
        "metadata": {"name": _name()},
        "spec": {**base, **spec},
    }


def profile(**spec: Any) -> Manifest:
    base = {"gpuProduct": "NVIDIA-H100-80GB-HBM3", "memoryGiB": 80, "costPerHour": 2.5}
    return {
        "apiVersion": API_VERSION,
        "kind": "AcceleratorProfile",
        "metadata": {"name": _name()},
        "spec": {**base, **spec},
    }
