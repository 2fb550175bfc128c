"""The operator runs from the chart's rendered Deployment, with the chart's RBAC and nothing else.

The chart is installed; the operator container's args and env are read back from the
Deployment the API server holds; its secret volumes are materialised where they are mounted
(rewritten to a temporary directory); a token of the chart's ServiceAccount is requested
(TokenRequest) and put in a kubeconfig; then ``modelfleet <args>`` runs on this machine as
that ServiceAccount. Example 01's profiles and example 02's pool are applied and the operator
must reconcile them — the pool's Deployments created, its status written — without a single
"forbidden" answer: the least-privilege RBAC is sufficient for what the operator really does.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.chart import CHART

from modelfleet.testing.cluster import ClusterClient

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
RELEASE = "mf-op"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_kubeconfig(cluster: ClusterClient, token: str, path: Path) -> Path:
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


def example_objects(namespace: str) -> list[dict[str, Any]]:
    docs = []
    for folder in ("01-accelerators", "02-llama-8b-mixed"):
        for f in sorted((REPO / "examples" / folder).glob("*.yaml")):
            for d in yaml.safe_load_all(f.read_text()):
                if isinstance(d, dict):
                    if d["kind"] != "AcceleratorProfile":
                        d["metadata"]["namespace"] = namespace
                    docs.append(d)
    return docs


def wait_for(what: str, check: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("scope", ["namespaced", "cluster-wide"])
def test_operator_runs_from_the_chart_with_its_rbac(
    cluster: ClusterClient, namespace: str, tmp_path: Path, scope: str
) -> None:
    pytest.importorskip("modelfleet.operator.cli", reason="the operator is not merged yet")
    metrics, health = free_port(), free_port()
    scoped = [f"--set=operator.watchNamespaces={{{namespace}}}"] if scope == "namespaced" else []
    cluster.helm(
        "install", RELEASE, str(CHART), "-n", namespace, "--wait", "--timeout=3m",
        f"--set=operator.metricsPort={metrics}", f"--set=operator.healthPort={health}", *scoped,
    )  # fmt: skip
    profiles = []
    operator: subprocess.Popen[str] | None = None
    try:
        dep = json.loads(
            cluster.kubectl(
                "get", "deployment", f"{RELEASE}-modelfleet-operator", "-n", namespace, "-o", "json"
            ).stdout
        )
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        # Secret volumes where the container mounts them, under tmp_path.
        secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        rewrites: dict[str, str] = {}
        for m in container.get("volumeMounts", []):
            if m["name"] in secrets:
                spec = secrets[m["name"]]
                data = json.loads(
                    cluster.kubectl(
                        "get", "secret", spec["secretName"], "-n", namespace, "-o", "json"
                    ).stdout
                )["data"]
                local = tmp_path / m["name"]
                local.mkdir()
                for item in spec.get("items") or [{"key": k, "path": k} for k in data]:
                    (local / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
                rewrites[m["mountPath"]] = str(local)
        args = list(container["args"])
        for mount, local in rewrites.items():
            args = [a.replace(mount, local) for a in args]
        env = dict(os.environ)
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif (
                e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace"
            ):
                env[e["name"]] = namespace
        sa = pod["serviceAccountName"]
        token = cluster.kubectl("create", "token", sa, "-n", namespace).stdout.strip()
        kubeconfig = token_kubeconfig(cluster, token, tmp_path / "sa.kubeconfig")
        log = (tmp_path / "operator.log").open("w")
        operator = subprocess.Popen(
            [sys.executable, "-m", "modelfleet.cli", *args, f"--kubeconfig={kubeconfig}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True,
            cwd=tmp_path,
        )  # fmt: skip

        objects = example_objects(namespace)
        profiles = [o["metadata"]["name"] for o in objects if o["kind"] == "AcceleratorProfile"]
        cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(objects))
        pool = next(o for o in objects if o["kind"] == "ModelPool")
        variants = {v["name"] for v in pool["spec"]["variants"]}

        def children() -> set[str]:
            out = cluster.kubectl(
                "get", "deployments", "-n", namespace, "-l",
                f"modelfleet.io/pool={pool['metadata']['name']}", "-o", "json",
            ).stdout  # fmt: skip
            return {
                d["metadata"]["labels"]["modelfleet.io/variant"] for d in json.loads(out)["items"]
            }

        def status() -> dict[str, Any]:
            out = cluster.kubectl(
                "get", "modelpool", pool["metadata"]["name"], "-n", namespace, "-o", "json"
            ).stdout
            s: dict[str, Any] = json.loads(out).get("status") or {}
            return s if s.get("conditions") else {}

        wait_for("the pool's Deployments", lambda: children() == variants or None)
        assert wait_for("the pool's status", status)["conditions"]
        assert operator.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
        text = (tmp_path / "operator.log").read_text()
        assert "forbidden" not in text.lower(), text[-3000:]
        assert " 403" not in text, text[-3000:]
    finally:
        if operator is not None:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
                operator.wait()
        for name in profiles:
            cluster.kubectl("delete", "acceleratorprofile", name, "--ignore-not-found", check=False)
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
