"""Suite-wide setup: the offline modules of ``bench/`` and the test-side fakes of
``tests/support/`` are importable from tests.

Training and evaluation code (``bench/selection_train.py``, ``bench/selection_metrics.py``, ...)
lives outside the runtime package; its tests import it by module name, as the bench scripts
themselves do (``python bench/x.py`` puts ``bench/`` first on ``sys.path``). ``tests/support``
holds hand-written fakes several test folders share (the scheduler's control service).
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
SUPPORT = Path(__file__).resolve().parent / "support"
for _path in (BENCH, SUPPORT):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))
