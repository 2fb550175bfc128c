"""CI smoke subset of the mutation benchmark: mutmut on a capped set of mutants.

Runs ``bench/mutation.py --label smoke`` on the simulator's percentile, imbalance and SLO
functions (a few dozen mutants, in a scratch copy of the repository) and fails if one of them
survives without being listed as equivalent. The full run is a benchmark
(``bench/results/mutation.md``), too long for CI on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mutation

REPO = Path(__file__).resolve().parents[2]
MUTANTS = [
    "modelfleet.sim.metrics.x_percentile*",
    "modelfleet.sim.metrics.x_load_imbalance*",
    "modelfleet.sim.metrics.x__percentile_with_inf*",
    "modelfleet.sim.metrics.xǁRequestRecordǁmet_slo*",
]


def test_mutation_smoke_subset_is_killed(tmp_path: Path) -> None:
    args = [sys.executable, str(REPO / "bench" / "mutation.py"), "--module", "sim-metrics"]
    args += ["--label", "smoke", "--workdir", str(tmp_path)]
    for glob in MUTANTS:
        args += ["--mutants", glob]
    proc = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=280, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 open survivors" in proc.stdout
