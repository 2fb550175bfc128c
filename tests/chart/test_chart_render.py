"""The Helm chart, rendered: lint, every ci values file, RBAC, security, modes, schema.

Runs the project's helm (``helm template``; no cluster). The cluster tier installs the same
chart on the real control plane (tests/cluster/test_helm.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.chart import (
    CHART,
    CI_VALUES,
    MONITORING_APIS,
    RAY_SERVICE_API,
    REPO,
    ClusterError,
    helm,
    helm_binary,
    render,
    template_args,
)

from modelfleet.api import KINDS
from modelfleet.api.crdgen import crd_filename, render_crd

pytestmark = pytest.mark.integration

EXAMPLE_KINDS = {"AcceleratorProfile", "ModelPool", "RoutingPolicy"}


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    try:
        return helm_binary()
    except ClusterError as err:  # CI builds it before the tests (scripts/test.sh)
        pytest.skip(f"helm is not built: {err}")


@pytest.fixture(scope="module")
def rendered(helm_bin: Path) -> Any:
    """``render`` with a cache: the same values are rendered once per module."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def get(**kwargs: Any) -> list[dict[str, Any]]:
        key = json.dumps(kwargs, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = render(helm_bin, **kwargs)
        return json.loads(json.dumps(cache[key]))

    return get


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object/name, pod spec) of every pod template: Deployments and RayService groups."""
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Deployment":
            yield name, d["spec"]["template"]["spec"]
        elif d["kind"] == "RayService":
            cluster = d["spec"]["rayClusterConfig"]
            yield f"{name}/head", cluster["headGroupSpec"]["template"]["spec"]
            for g in cluster["workerGroupSpecs"]:
                yield f"{name}/{g['groupName']}", g["template"]["spec"]


ALL_RENDERS = [
    pytest.param({}, id="default"),
    pytest.param({"api_versions": (RAY_SERVICE_API, *MONITORING_APIS)}, id="default-kuberay-prom"),
    *[
        pytest.param(
            {"values": (f,), "api_versions": (RAY_SERVICE_API, *MONITORING_APIS)}, id=f.stem
        )
        for f in CI_VALUES
    ],
    *[pytest.param({"values": (f,)}, id=f"{f.stem}-plain") for f in CI_VALUES],
]


# -- lint and ci values -------------------------------------------------------------------


@pytest.mark.parametrize(
    "values", [None, *CI_VALUES], ids=["default", *[f.stem for f in CI_VALUES]]
)
def test_helm_lint_strict(helm_bin: Path, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version=1.35.4"]
    if values is not None:
        args.append(f"--values={values}")
    proc = helm(helm_bin, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def test_ci_values_cover_every_example_and_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chart_ci_values.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    examples = sorted(p.name for p in (REPO / "examples").iterdir() if list(p.glob("*.yaml")))
    assert examples, "no examples found"
    assert {f"{e}-values.yaml" for e in examples} <= {f.name for f in CI_VALUES}


@pytest.mark.parametrize(
    "values", [f for f in CI_VALUES if f.name[:2].isdigit()], ids=lambda f: f.stem
)
def test_ci_values_render_the_example_objects_unchanged(helm_bin: Path, values: Path) -> None:
    """Every object of the example folder is rendered with its spec as in examples/."""
    docs = render(helm_bin, values=(values,))
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in EXAMPLE_KINDS}
    folder = REPO / "examples" / values.name.removesuffix("-values.yaml")
    own = [
        d
        for f in sorted(folder.glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if isinstance(d, dict) and d.get("kind") in EXAMPLE_KINDS
    ]
    assert own
    for o in own:
        got = rendered[(o["kind"], o["metadata"]["name"])]
        assert got["spec"] == o["spec"]
        if o["kind"] != "AcceleratorProfile":  # namespaced: the release's namespace
            assert got["metadata"]["namespace"] == "modelfleet-system"
    # Every profile a rendered pool names is rendered too (the set installs consistently).
    profiles = {n for k, n in rendered if k == "AcceleratorProfile"}
    for (kind, _), d in rendered.items():
        if kind == "ModelPool":
            assert {v["acceleratorProfile"] for v in d["spec"]["variants"]} <= profiles


# -- CRDs ---------------------------------------------------------------------------------


def test_chart_crds_are_the_generated_crds() -> None:
    """charts/modelfleet/crds/ holds exactly crds/ (both equal a fresh generation)."""
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert chart == {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    assert chart == {crd_filename(k): render_crd(k) for k in KINDS}


def test_crds_check_flag_covers_the_chart_copy(tmp_path: Path) -> None:
    from modelfleet.cli import main

    out, chart_out = tmp_path / "crds", tmp_path / "chart-crds"
    for d in (out, chart_out):
        d.mkdir()
    assert main(["crds", "--out", str(out), "--chart-out", str(chart_out)]) == 0
    assert main(["crds", "--check", "--out", str(out), "--chart-out", str(chart_out)]) == 0
    first = sorted(chart_out.glob("*.yaml"))[0]
    first.write_text(first.read_text() + "# edited\n")
    assert main(["crds", "--check", "--out", str(out), "--chart-out", str(chart_out)]) == 1


# -- RBAC ---------------------------------------------------------------------------------

#: What the operator may do: (apiGroup, resource) -> verbs (see templates/operator-rbac.yaml).
OPERATOR_RULES = {
    ("modelfleet.io", "modelpools"): {"get", "list", "watch", "patch"},
    ("modelfleet.io", "routingpolicies"): {"get", "list", "watch", "patch"},
    ("modelfleet.io", "acceleratorprofiles"): {"get", "list", "watch", "patch"},
    ("modelfleet.io", "modelpools/status"): {"get", "patch"},
    ("modelfleet.io", "routingpolicies/status"): {"get", "patch"},
    ("modelfleet.io", "acceleratorprofiles/status"): {"get", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"create", "patch"},
    ("policy", "poddisruptionbudgets"): {"create", "patch"},
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "events"): {"create"},
    ("", "nodes"): {"list"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    # kopf observes namespaces when given a list of them (operator.watchNamespaces only).
    ("", "namespaces"): {"list", "watch"},
}
SCHEDULER_RULES = {
    ("modelfleet.io", "modelpools"): {"get", "list", "watch"},
    ("modelfleet.io", "routingpolicies"): {"get", "list", "watch"},
    ("modelfleet.io", "acceleratorprofiles"): {"get", "list", "watch"},
    ("", "pods"): {"get", "list", "watch"},
}


def granted(docs: list[dict[str, Any]], component: str) -> dict[tuple[str, str], set[str]]:
    """(group, resource) -> verbs of every Role/ClusterRole of one component."""
    out: dict[tuple[str, str], set[str]] = {}
    for d in docs:
        labels = d["metadata"].get("labels", {})
        if (
            d["kind"] in ("Role", "ClusterRole")
            and labels.get("app.kubernetes.io/component") == component
        ):
            for rule in d["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        out.setdefault((g, r), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("kwargs", ALL_RENDERS)
def test_rbac_has_no_wildcards_and_only_managed_resources(
    rendered: Any, kwargs: dict[str, Any]
) -> None:
    docs = rendered(**kwargs)
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no nonResourceURLs
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{role['metadata']['name']}: wildcard in {key}"
            assert "resourceNames" not in rule
    op = granted(docs, "operator")
    for key, verbs in op.items():
        assert key in OPERATOR_RULES, f"operator granted {key} it does not manage"
        assert verbs <= OPERATOR_RULES[key], (
            f"operator granted {verbs - OPERATOR_RULES[key]} on {key}"
        )
    sched = granted(docs, "scheduler")
    assert sched == SCHEDULER_RULES
    for key in ("secrets", "configmaps"):  # never readable by either component
        assert ("", key) not in op and ("", key) not in sched
    # Bindings bind only the chart's own service accounts.
    for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        for s in b["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["namespace"] == "modelfleet-system"


def test_operator_rbac_covers_what_it_needs(helm_bin: Path) -> None:
    """The default render grants every rule of the table (leases with 2 replicas), and the
    namespaced render binds the pool rules only in the watched namespaces."""
    op = granted(render(helm_bin, sets=("operator.replicas=2",)), "operator")
    assert op == {k: v for k, v in OPERATOR_RULES.items() if k != ("", "namespaces")}
    docs = render(helm_bin, values=(CHART / "ci" / "namespaced-values.yaml",))
    assert granted(docs, "operator") == OPERATOR_RULES
    bindings = {
        (d["kind"], d["metadata"].get("namespace"), d["roleRef"]["name"])
        for d in docs
        if "roleRef" in d
    }
    assert ("RoleBinding", "team-a", "mf-modelfleet-operator-pools") in bindings
    assert ("RoleBinding", "team-b", "mf-modelfleet-operator-pools") in bindings
    assert ("ClusterRoleBinding", None, "mf-modelfleet-operator-pools") not in bindings
    assert ("ClusterRoleBinding", None, "mf-modelfleet-operator-cluster") in bindings


def test_operator_rbac_covers_every_kind_its_code_calls() -> None:
    """Every collection modelfleet.operator.kube talks to is granted (once the operator is
    merged; its module lists the paths)."""
    kube = pytest.importorskip("modelfleet.operator.kube", reason="the operator is not merged yet")
    for kind, path in kube._PATHS.items():
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        resource = parts[-1]
        assert (group, resource) in OPERATOR_RULES, f"{kind}: {group}/{resource} not granted"


# -- pods: security, resources, services, PDBs ----------------------------------------------


@pytest.mark.parametrize("kwargs", ALL_RENDERS)
def test_every_container_is_restricted_and_requests_resources(
    rendered: Any, kwargs: dict[str, Any]
) -> None:
    docs = rendered(**kwargs)
    specs = list(pod_specs(docs))
    assert specs
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            requests = c["resources"]["requests"]
            assert requests.get("cpu") and requests.get("memory"), name
            assert c["resources"]["limits"].get("memory"), name
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp"


@pytest.mark.parametrize("kwargs", ALL_RENDERS)
def test_services_and_pdbs_select_the_chart_pods(rendered: Any, kwargs: dict[str, Any]) -> None:
    docs = rendered(**kwargs)
    pods: list[tuple[dict[str, str], set[str]]] = []
    for d in docs:
        if d["kind"] == "Deployment":
            t = d["spec"]["template"]
            ports = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            pods.append((t["metadata"]["labels"], ports))
            assert d["spec"]["selector"]["matchLabels"].items() <= t["metadata"]["labels"].items()
        elif d["kind"] == "RayService":
            c = d["spec"]["rayClusterConfig"]
            for t in [
                c["headGroupSpec"]["template"],
                *(g["template"] for g in c["workerGroupSpecs"]),
            ]:
                ports = {p["name"] for x in t["spec"]["containers"] for p in x.get("ports", [])}
                pods.append((t["metadata"]["labels"], ports))

    def matches(selector: dict[str, str]) -> list[set[str]]:
        return [ports for labels, ports in pods if selector.items() <= labels.items()]

    services = by_kind(docs, "Service")
    assert len(services) == 2
    for svc in services:
        selected = matches(svc["spec"]["selector"])
        assert selected, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            assert all(port["targetPort"] in ports for ports in selected), port
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert len(pdbs) == 2
    for pdb in pdbs:
        assert matches(pdb["spec"]["selector"]["matchLabels"]), pdb["metadata"]["name"]


# -- scheduler mode, monitors, dashboards ---------------------------------------------------


def scheduler_kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {
        d["kind"]
        for d in docs
        if d["kind"] in ("Deployment", "RayService")
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "scheduler"
    }


@pytest.mark.parametrize(
    ("mode", "kuberay", "expected"),
    [
        ("deployment", False, "Deployment"),
        ("deployment", True, "Deployment"),
        ("auto", False, "Deployment"),
        ("auto", True, "RayService"),
        ("rayservice", True, "RayService"),
    ],
)
def test_scheduler_runs_as_rayservice_only_where_kuberay_is_and_allowed(
    helm_bin: Path, mode: str, kuberay: bool, expected: str
) -> None:
    docs = render(
        helm_bin,
        sets=(f"scheduler.mode={mode}",),
        api_versions=(RAY_SERVICE_API,) if kuberay else (),
    )
    assert scheduler_kinds(docs) == {expected}
    if expected == "RayService":
        (rs,) = by_kind(docs, "RayService")
        serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
        (app,) = serve["applications"]
        assert "--kubernetes" in app["args"]["argv"]
        assert "--replicas=2" in app["args"]["argv"]


def test_rayservice_mode_without_kuberay_is_refused(helm_bin: Path) -> None:
    proc = helm(helm_bin, *template_args(sets=("scheduler.mode=rayservice",)))
    assert proc.returncode != 0
    assert "does not serve ray.io/v1 RayService" in proc.stderr


@pytest.mark.parametrize(
    ("apis", "enabled", "expected"),
    [
        ((), True, set()),
        (MONITORING_APIS, True, {"ServiceMonitor", "PodMonitor"}),
        (MONITORING_APIS, False, set()),
    ],
    ids=["no-crds", "crds", "disabled"],
)
def test_monitors_only_where_prometheus_operator_is(
    helm_bin: Path, apis: tuple[str, ...], enabled: bool, expected: set[str]
) -> None:
    docs = render(helm_bin, sets=(f"monitoring.enabled={str(enabled).lower()}",), api_versions=apis)
    kinds = {d["kind"] for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")}
    assert kinds == expected
    if expected:
        (pm,) = by_kind(docs, "PodMonitor")
        # The engine pods' labels as the operator sets them, and vLLM's port name.
        assert pm["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/component": "engine",
            "app.kubernetes.io/managed-by": "modelfleet-operator",
        }
        assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"
        assert len(by_kind(docs, "ServiceMonitor")) == 2


# -- values schema --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("scheduler.mode=rayserve",), "at '/scheduler/mode': value must be one of"),
        (("operator.replicas=0",), "at '/operator/replicas': minimum: got 0, want 1"),
        (("operator.resyncSecs=3",), "additional properties 'resyncSecs' not allowed"),
        (("scheduler.httpPort=70000",), "at '/scheduler/httpPort': maximum"),
        (("operator.image.digest=latest",), "at '/operator/image/digest'"),
        (("operator.watchNamespaces[0]=Team_A",), "at '/operator/watchNamespaces/0'"),
        (("monitoring.interval=15",), "at '/monitoring/interval'"),
        (("scheduler.extraArgs[0]=oops",), "at '/scheduler/extraArgs/0'"),
        (
            ("examples.modelPools[0].name=x",),
            "at '/examples/modelPools/0': missing property 'spec'",
        ),
        (("scheduler.resources=null",), "at '/scheduler"),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else None,
)
def test_bad_values_are_refused_naming_the_key(
    helm_bin: Path, sets: tuple[str, ...], message: str
) -> None:
    proc = helm(helm_bin, *template_args(sets=sets))
    assert proc.returncode != 0, f"accepted {sets}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_bad_values_file_is_refused(helm_bin: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("operator:\n  replicas: two\nscheduler:\n  mode: ray\n")
    proc = helm(helm_bin, *template_args(values=(bad,)))
    assert proc.returncode != 0
    assert "at '/operator/replicas': got string, want integer" in proc.stderr
    assert "at '/scheduler/mode'" in proc.stderr


# -- the rendered flags are the components' flags -----------------------------------------


def container_args(docs: list[dict[str, Any]], component: str) -> list[str]:
    (dep,) = [
        d
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


@pytest.mark.parametrize("kwargs", ALL_RENDERS)
def test_operator_args_parse_with_the_operator_cli(rendered: Any, kwargs: dict[str, Any]) -> None:
    cli = pytest.importorskip("modelfleet.operator.cli", reason="the operator is not merged yet")
    import argparse

    args = container_args(rendered(**kwargs), "operator")
    assert args[0] == "operator"
    parser = argparse.ArgumentParser(exit_on_error=False)
    cli.add_arguments(parser)
    parser.parse_args(args[1:])


def test_dashboards_ship_as_labelled_configmaps(helm_bin: Path) -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files
    docs = render(helm_bin)
    maps = {
        k: json.loads(v)
        for d in by_kind(docs, "ConfigMap")
        if d["metadata"]["labels"].get("grafana_dashboard") == "1"
        for k, v in d["data"].items()
    }
    assert maps == {f.name: json.loads(f.read_text()) for f in files}
    assert not [
        d for d in by_kind(render(helm_bin, sets=("dashboards.enabled=false",)), "ConfigMap")
    ]
