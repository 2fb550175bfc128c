"""Suite-wide settings: hypothesis profiles, and ``bench/`` modules importable from tests.

Training and evaluation code (``bench/selection_train.py``, ``bench/selection_metrics.py``, ...)
lives outside the runtime package; its tests import it by module name, as the bench scripts
themselves do (``python bench/x.py`` puts ``bench/`` first on ``sys.path``).


``HYPOTHESIS_PROFILE`` picks one; the default is ``ci`` when ``$CI`` is set, else ``dev``.

* ``dev``: random examples, failures saved in ``.hypothesis/`` and replayed first.
* ``ci``: derandomized (the same examples every run, so CI never fails by chance).
* ``mutation``: derandomized, no example database, no shrinking, a fifth of the examples
  (``bench/mutation.py``: every mutant is judged by the same examples, one mutant's failures
  are not replayed against the next, and a run of ~800 mutants stays under an hour).

Property tests scale their example counts from ``settings.default.max_examples`` (100, or 20
under ``mutation``) rather than fixing them, so the profile decides.

No deadline anywhere: two shared cores make per-example timing meaningless (speed is measured
in ``bench/``, not asserted in tests).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings

settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "mutation",
    max_examples=20,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure is enough: no shrinking
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))
