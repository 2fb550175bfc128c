"""README "Install on a cluster": its commands, as written, on the real control plane.

The console block of that section is read from README.md and every ``$`` line runs in order
(helm and kubectl are the project's binaries against the test cluster, from the repository
root). Between the lines the test checks what a person would look at: the release deployed
with the operator and the scheduler Available, the example pool listed, and nothing left
behind after the last line.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from modelfleet.testing.cluster import ClusterClient

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Install on a cluster", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", section, re.S)
    assert block, "no console block in README's Install on a cluster"
    return [shlex.split(line[2:]) for line in block.group(1).splitlines() if line.startswith("$ ")]


def test_readme_commands_are_helm_and_kubectl_lines() -> None:
    commands = readme_commands()
    assert [c[:2] for c in commands] == [
        ["helm", "install"],
        ["kubectl", "apply"],
        ["kubectl", "get"],
        ["kubectl", "delete"],
        ["helm", "uninstall"],
    ]


def test_readme_install_commands_work(
    cluster: ClusterClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    commands = readme_commands()
    release_ns = commands[0][commands[0].index("--namespace") + 1]
    outputs: list[str] = []
    try:
        for argv in commands:
            tool = cluster.helm if argv[0] == "helm" else cluster.kubectl
            outputs.append(tool(*argv[1:], timeout=300).stdout)
            if argv[:2] == ["helm", "install"]:
                deployments: list[dict[str, Any]] = json.loads(
                    cluster.kubectl("get", "deployments", "-n", release_ns, "-o", "json").stdout
                )["items"]
                available = {
                    d["metadata"]["labels"]["app.kubernetes.io/component"]
                    for d in deployments
                    if d["status"].get("availableReplicas") == d["spec"]["replicas"]
                }
                assert available == {"operator", "scheduler"}
        listed = outputs[2]
        assert "llama-8b" in listed, listed
        after = cluster.kubectl("get", "modelpools", "-n", "default", "-o", "json")
        assert "llama-8b" not in {i["metadata"]["name"] for i in json.loads(after.stdout)["items"]}
        assert json.loads(cluster.helm("list", "-n", release_ns, "-o", "json").stdout) == []
    finally:
        for argv in commands:
            if argv[:2] == ["kubectl", "delete"]:
                cluster.kubectl(*argv[1:], "--ignore-not-found", check=False)
        cluster.helm("uninstall", "modelfleet", "-n", release_ns, check=False)
        cluster.delete_namespace(release_ns)
