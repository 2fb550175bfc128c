"""Ask pip what ``pip install .[EXTRA]`` would install into an empty environment.

    .venv/bin/python scripts/check_extras.py                  # operator, scheduler, engine, base
    .venv/bin/python scripts/check_extras.py operator         # one extra

Runs ``pip install --dry-run --ignore-installed --report`` for each extra (resolving from the
package index, so it needs the network and takes a while) and fails if the operator's set
contains pyzmq, msgpack or ray, or the scheduler's contains kopf or kubernetes. The fast,
offline version of the same check runs in the test suite (``tests/unit/test_extras.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "operator": {"pyzmq", "msgpack", "ray"},
    "scheduler": {"kopf", "kubernetes"},
    "": {"aiohttp", "pyzmq", "msgpack", "ray", "kopf", "kubernetes"},
}


def resolve(extra: str) -> set[str]:
    target = f"{ROOT}[{extra}]" if extra else str(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), target],
            check=True,
        )  # fmt: skip
        data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower().replace("_", "-") for item in data["install"]}


def main(argv: list[str]) -> int:
    extras = argv or ["operator", "scheduler", "engine", ""]
    bad = 0
    for extra in extras:
        names = resolve(extra) - {"modelfleet"}
        wrong = names & FORBIDDEN.get(extra, set())
        label = f"[{extra}]" if extra else "(base)"
        print(f"{label}: {len(names)} distributions: {' '.join(sorted(names))}")
        if wrong:
            print(f"{label}: must not install {sorted(wrong)}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
