"""Train the default model-selection quality predictor and write the shipped artefact.

    .venv/bin/python bench/train_selector.py            # writes the artefact
    .venv/bin/python bench/train_selector.py --check    # retrains, compares with the shipped one

Fits ``fit_linear`` of ``bench/selection_train.py`` (hashed TF-IDF features, kernel
ridge, closed form) on the RouterBench train split only (``bench/data/routerbench``, 2,205
prompts after cleaning) and saves it to
``modelfleet/policy/selection/artefacts/routerbench-linear.npz``. The fit is deterministic; the
``.npz`` bytes are not (zip timestamps), so ``--check`` compares the arrays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from modelfleet.policy.selection.predictor import (
    builtin_artefact_path,
    load_predictor,
    save_predictor,
)
from selection_train import DEFAULT_ALPHA, DEFAULT_DIM, train_default

DATA = Path(__file__).resolve().parent / "data" / "routerbench"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="RouterBench CSV directory")
    ap.add_argument("--out", type=Path, default=builtin_artefact_path(), help="artefact path")
    ap.add_argument(
        "--check", action="store_true", help="compare a fresh fit with --out, write nothing"
    )
    args = ap.parse_args(argv)
    fresh = train_default(args.data)
    if args.check:
        shipped = load_predictor(args.out)
        ok = shipped.models == fresh.models and shipped.tfidf.dim == fresh.tfidf.dim
        for name in ("w_quality", "b_quality", "w_logcost", "b_logcost"):
            a, b = getattr(shipped, name), getattr(fresh, name)
            # the artefact stores weights as float16: compare at that precision
            ok = ok and bool(np.allclose(a, b, rtol=2e-3, atol=2e-4))
        print("artefact matches a fresh fit" if ok else "artefact DIFFERS from a fresh fit")
        return 0 if ok else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_predictor(fresh, args.out)
    size = args.out.stat().st_size
    print(
        f"wrote {args.out} ({size / 1024:.0f} KiB): {len(fresh.models)} models, "
        f"dim {DEFAULT_DIM}, alpha {DEFAULT_ALPHA}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
