"""Suite-wide settings: hypothesis profiles.

``HYPOTHESIS_PROFILE`` picks one; the default is ``ci`` when ``$CI`` is set, else ``dev``.

* ``dev``: random examples, failures saved in ``.hypothesis/`` and replayed first.
* ``ci``: derandomized (the same examples every run, so CI never fails by chance).
* ``mutation``: derandomized, no example database (``bench/mutation.py``: every mutant is
  judged by the same examples, and one mutant's failures are not replayed against the next).

No deadline anywhere: two shared cores make per-example timing meaningless (speed is measured
in ``bench/``, not asserted in tests).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "mutation",
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
