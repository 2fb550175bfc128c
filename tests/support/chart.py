"""The Helm chart (charts/modelfleet) rendered with the project's helm, for the chart tests.

``helm_binary()`` is the helm the control-plane build pins (``e2e/controlplane/build.sh``,
never whatever is on PATH); ``render()`` runs ``helm template`` and returns the documents.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from modelfleet.testing.cluster import ClusterError, locate_binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelfleet"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
#: The Kubernetes version the tests render for (the control plane's).
KUBE_VERSION = "1.35.4"
RAY_SERVICE_API = "ray.io/v1/RayService"
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor")


def helm_binary() -> Path:
    """The project's helm; raises ClusterError (with what to run) when it is not built."""
    return locate_binaries(build=False, client_only=True).helm


def helm(helm_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, check=False, timeout=120
    )


def template_args(
    values: tuple[Path, ...] = (),
    sets: tuple[str, ...] = (),
    api_versions: tuple[str, ...] = (),
    release: str = "mf",
    namespace: str = "modelfleet-system",
) -> list[str]:
    args = ["template", release, str(CHART), "-n", namespace, f"--kube-version={KUBE_VERSION}"]
    args += [f"--values={v}" for v in values]
    args += [f"--set={s}" for s in sets]
    args += [f"--api-versions={a}" for a in api_versions]
    return args


def render(helm_bin: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """``helm template`` of the chart; the rendered documents (fails with helm's stderr)."""
    proc = helm(helm_bin, *template_args(**kwargs))
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]


__all__ = [
    "CHART",
    "CI_VALUES",
    "KUBE_VERSION",
    "MONITORING_APIS",
    "RAY_SERVICE_API",
    "REPO",
    "ClusterError",
    "helm",
    "helm_binary",
    "render",
    "template_args",
]
