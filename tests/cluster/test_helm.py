"""The chart on the real control plane: lint, install, uninstall; every render validated.

``helm install --wait`` of the default values and of the full example set (ci/05: profiles,
three pools, the routing policy) into a fresh namespace; the release's Deployments become
Available on the simulated nodes, its example objects pass the CRDs' validation, and
``helm uninstall`` removes every labelled object again. Every ci values file is also rendered
and sent to the API server with ``kubectl apply --dry-run=server``: the Kubernetes schemas
and the project's CRDs validate each object (kinds this cluster does not serve — KubeRay's
RayService, the Prometheus Operator's monitors — are rendered only where they exist, so they
do not appear here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.chart import CHART, CI_VALUES, KUBE_VERSION

from modelfleet.testing.cluster import ClusterClient

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHARTS = [d for d in [REPO / "charts" / "modelfleet"] if (d / "Chart.yaml").is_file()]
RELEASE = "mf-test"
EXAMPLE_SET = CHART / "ci" / "05-routing-policy-values.yaml"


def release_objects(cluster: ClusterClient, namespace: str) -> list[str]:
    """Names of objects labelled as belonging to the test release, in the namespace."""
    out = cluster.kubectl(
        "get", "all,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,"
        "modelpools,routingpolicies", "-n", namespace,
        "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return [f"{i['kind']}/{i['metadata']['name']}" for i in items]


def cluster_objects(cluster: ClusterClient) -> list[str]:
    out = cluster.kubectl(
        "get", "clusterroles,clusterrolebindings,acceleratorprofiles",
        "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json",
    ).stdout  # fmt: skip
    return [f"{i['kind']}/{i['metadata']['name']}" for i in json.loads(out)["items"]]


def install_and_uninstall(
    cluster: ClusterClient, namespace: str, chart: Path, *values: str
) -> list[str]:
    """Install (--wait), check the release, uninstall (--wait); returns what was installed."""
    cluster.helm("lint", str(chart), f"--kube-version={KUBE_VERSION}", *values)
    cluster.helm("install", RELEASE, str(chart), "-n", namespace, "--wait", "--timeout=3m", *values)
    status = json.loads(cluster.helm("status", RELEASE, "-n", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    installed = release_objects(cluster, namespace)
    assert installed, "the release created no labelled objects"
    deployments = json.loads(
        cluster.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout
    )["items"]
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments} == {
        "operator",
        "scheduler",
    }
    for d in deployments:
        assert d["status"].get("availableReplicas") == d["spec"]["replicas"], d["metadata"]
    installed += cluster_objects(cluster)
    cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout=2m")
    assert release_objects(cluster, namespace) == []
    assert cluster_objects(cluster) == []
    listed = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert listed == []
    return installed


# Conditional: while the chart does not exist the test is not even defined (zero cases).
if CHARTS:

    @pytest.mark.parametrize("chart", CHARTS, ids=[c.name for c in CHARTS])
    def test_helm_lint_install_uninstall(
        cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str, chart: Path
    ) -> None:
        installed = install_and_uninstall(cluster, namespace, chart)
        assert "Deployment/mf-test-modelfleet-operator" in installed
        assert "Secret/mf-test-modelfleet-control-token" in installed

    def test_helm_install_the_example_set(
        cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str
    ) -> None:
        """ci/05 installs profiles, pools and the policy; the CRDs accept every one."""
        installed = install_and_uninstall(cluster, namespace, CHART, f"--values={EXAMPLE_SET}")
        expected = yaml.safe_load(EXAMPLE_SET.read_text())["examples"]
        for kind, key in [
            ("ModelPool", "modelPools"),
            ("RoutingPolicy", "routingPolicies"),
            ("AcceleratorProfile", "acceleratorProfiles"),
        ]:
            names = {f"{kind}/{o['name']}" for o in expected[key]}
            assert names and names <= set(installed), (kind, installed)

    @pytest.mark.parametrize(
        "values", [None, *CI_VALUES], ids=["default", *(f.stem for f in CI_VALUES)]
    )
    def test_every_render_passes_server_side_validation(
        cluster: ClusterClient,
        installed_crds: list[dict[str, Any]],
        namespace: str,
        tmp_path: Path,
        values: Path | None,
    ) -> None:
        args = ["template", RELEASE, str(CHART), "-n", namespace, "--include-crds"]
        args.append(f"--kube-version={KUBE_VERSION}")
        if values is not None:
            args.append(f"--values={values}")
        # Watched namespaces must exist for their RoleBindings: use the test's namespace.
        args += (
            ["--set", f"operator.watchNamespaces={{{namespace}}}"]
            if values and "namespaced" in values.name
            else []
        )
        rendered = cluster.helm(*args).stdout
        docs = [d for d in yaml.safe_load_all(rendered) if isinstance(d, dict)]
        assert docs
        out = tmp_path / "rendered.yaml"
        out.write_text(rendered)
        result = cluster.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(out)
        ).stdout
        assert result.count("(server dry run)") == len(docs), result
