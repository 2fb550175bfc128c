"""Suite-wide setup: the offline modules of ``bench/`` are importable from tests.

Training and evaluation code (``bench/selection_train.py``, ``bench/selection_metrics.py``, ...)
lives outside the runtime package; its tests import it by module name, as the bench scripts
themselves do (``python bench/x.py`` puts ``bench/`` first on ``sys.path``).
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))
