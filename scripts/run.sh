#!/usr/bin/env bash
# Set up and run the main job on the embedded default.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/setup.sh")"
cd "$here"
"$venv/bin/modelfleet" validate --check-refs examples/
