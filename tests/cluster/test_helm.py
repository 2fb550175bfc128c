"""helm lint, install and uninstall of the project's chart on the real control plane.

The chart (charts/modelfleet) arrives with its own issue. Until charts/modelfleet/Chart.yaml
exists, CHARTS is empty and the parametrized test has no cases: nothing is collected, nothing is
skipped. Once the chart lands the test runs with no change here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelfleet.testing.cluster import ClusterClient

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHARTS = [d for d in [REPO / "charts" / "modelfleet"] if (d / "Chart.yaml").is_file()]
RELEASE = "mf-test"


def release_objects(cluster: ClusterClient, namespace: str) -> list[str]:
    """Names of objects labelled as belonging to the test release, in the namespace."""
    out = cluster.kubectl(
        "get", "all,configmaps,secrets,serviceaccounts,roles,rolebindings", "-n", namespace,
        "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return [f"{i['kind']}/{i['metadata']['name']}" for i in items]


# Conditional: while the chart does not exist the test is not even defined (zero cases).
if CHARTS:

    @pytest.mark.parametrize("chart", CHARTS, ids=[c.name for c in CHARTS])
    def test_helm_lint_install_uninstall(
        cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str, chart: Path
    ) -> None:
        cluster.helm("lint", str(chart))
        cluster.helm("install", RELEASE, str(chart), "-n", namespace, "--wait", "--timeout=3m")
        status = json.loads(cluster.helm("status", RELEASE, "-n", namespace, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"
        assert release_objects(cluster, namespace), "the release created no labelled objects"
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout=2m")
        assert release_objects(cluster, namespace) == []
        listed = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
        assert listed == []
