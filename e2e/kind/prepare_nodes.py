"""Make kind's worker nodes look like the simulated GPU nodes of the local control plane.

Workers are matched, in name order, with ``DEFAULT_NODES`` (H100, A100, L40S, L4, CPU). Each
gets that spec's labels and taints (``kubectl label/taint --overwrite``) and its
``nvidia.com/gpu`` capacity through a status patch, the documented way to advertise an extended
resource without a device plugin. No GPU exists: pods are scheduled, not accelerated.

Usage: python e2e/kind/prepare_nodes.py KUBECTL KUBECONFIG
"""

from __future__ import annotations

import json
import subprocess
import sys

from modelfleet.testing.cluster_nodes import DEFAULT_NODES


def main(kubectl: str, kubeconfig: str) -> int:
    def run(*args: str) -> str:
        argv = [kubectl, f"--kubeconfig={kubeconfig}", *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    nodes = json.loads(run("get", "nodes", "-o", "json"))["items"]
    workers = sorted(
        n["metadata"]["name"]
        for n in nodes
        if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
    )
    if len(workers) < len(DEFAULT_NODES):
        print(f"need {len(DEFAULT_NODES)} workers, kind has {len(workers)}", file=sys.stderr)
        return 1
    for worker, spec in zip(workers, DEFAULT_NODES, strict=False):
        manifest = spec.manifest()
        labels = {
            k: v
            for k, v in manifest["metadata"]["labels"].items()
            if k not in ("kubernetes.io/hostname", "type")
        }
        run("label", "node", worker, "--overwrite", *(f"{k}={v}" for k, v in labels.items()))
        for t in manifest["spec"].get("taints", []):
            value = f"={t['value']}" if t.get("value") else ""
            run("taint", "node", worker, f"{t['key']}{value}:{t['effect']}", "--overwrite")
        if spec.gpus:
            patch = {"status": {"capacity": {spec.resource_name: str(spec.gpus)}}}
            run(
                "patch",
                "node",
                worker,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps(patch),
            )
        print(f"{worker}: {spec.gpu_product or 'cpu'} x{spec.gpus}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
