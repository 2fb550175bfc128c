#!/usr/bin/env bash
# Run the modelfleet cluster tier (tests/cluster) against a kind cluster, for users with Docker.
# Not run in this project's CI (its machines have no Docker engine; CI uses e2e/controlplane).
#
#   e2e/kind/run.sh [pytest args...]      e.g. e2e/kind/run.sh -k invalid
#
# Needs: docker, kind, kubectl, helm on PATH, and the project installed in the Python
# that runs pytest (${PYTHON:-python3}). KEEP_CLUSTER=1 keeps the kind cluster afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
name=modelfleet-e2e
python=${PYTHON:-python3}
for tool in docker kind kubectl helm; do
	command -v "$tool" >/dev/null || { echo "run.sh: $tool is not on PATH" >&2; exit 1; }
done

work=$(mktemp -d)
cleanup() {
	[ "${KEEP_CLUSTER:-0}" = 1 ] || kind delete cluster --name "$name" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

kubeconfig="$work/kubeconfig"
if ! kind get clusters 2>/dev/null | grep -qx "$name"; then
	kind create cluster --config "$here/kind-config.yaml" --name "$name" --wait 120s
fi
kind get kubeconfig --name "$name" >"$kubeconfig"
"$python" "$here/prepare_nodes.py" "$(command -v kubectl)" "$kubeconfig"

# The tests run kubectl and helm from one directory: point it at the ones on PATH.
mkdir -p "$work/bin"
ln -s "$(command -v kubectl)" "$work/bin/kubectl"
ln -s "$(command -v helm)" "$work/bin/helm"

cd "$repo"
MODELFLEET_TEST_KUBECONFIG="$kubeconfig" MODELFLEET_CONTROLPLANE_BIN="$work/bin" \
	"$python" -m pytest -m cluster tests/cluster "$@"
