#!/usr/bin/env bash
# Regenerate the gRPC stubs of the scheduler's control API from modelfleet/control/control.proto.
# tests/unit/test_control_stubs.py fails when the committed stubs drift from the proto.
# Usage: bash scripts/gen-control.sh [OUT_DIR]   (default: the checkout itself)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$here}"
python="${PYTHON:-$here/.venv/bin/python}"
cd "$here"
"$python" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" \
  --grpc_python_out="$out" modelfleet/control/control.proto
