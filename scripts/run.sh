#!/usr/bin/env bash
# Set up, then run the main job on the embedded default: a local fleet of simulated vLLM
# engines (2 H100, 2 A100, 2 L40S) serving a generated shared-prefix multi-turn workload,
# placed by the modelfleet profile and by every baseline, in virtual time. No cluster needed.
# Extra arguments go to `modelfleet simulate` (see `modelfleet simulate --help`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/setup.sh")"
cd "$here"
"$venv/bin/modelfleet" validate --check-refs examples/
"$venv/bin/modelfleet" simulate "$@"
