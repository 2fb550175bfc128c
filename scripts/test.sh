#!/usr/bin/env bash
# Set up and run every check and every test tier (unit, integration, cluster).
# Extra arguments go to pytest (e.g. `-m unit` for the fast tier only).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/setup.sh")"
cd "$here"
export PATH="$venv/bin:$PATH"

echo "== lint: ruff"
ruff check .
ruff format --check .
echo "== types: mypy"
mypy modelfleet
echo "== layers: import-linter"
lint-imports
echo "== CRDs are up to date"
modelfleet crds --check
echo "== control plane for the cluster tier (built once into \$MODELFLEET_CACHE, then reused)"
start=$(date +%s)
bash e2e/controlplane/build.sh | tail -n 1
echo "control plane ready in $(($(date +%s) - start)) s"
echo "== real vLLM for the vllm tier (built once into \$MODELFLEET_CACHE, then reused)"
start=$(date +%s)
bash e2e/vllm/build.sh | tail -n 1
echo "vLLM ready in $(($(date +%s) - start)) s"
echo "== tests"
pytest -ra "$@"
