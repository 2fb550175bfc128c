"""How a model selector is judged: AIQ (RouterBench), cost to reach a quality, bootstrap CIs.

A selector with a cost/quality knob (λ) traces a set of operating points ``(mean cost per
query, mean quality)``. RouterBench's *Average Improvement in Quality* (AIQ) summarises the set:

1. add the cheapest single model's point (any selector can always route everything there);
2. take the upper convex hull of the points — any two operating points can be mixed at random,
   so every point on a segment between them is reachable;
3. make it non-decreasing: past the hull's best quality, spending more buys nothing, so the
   curve stays flat at that quality (and stays flat beyond the last point);
4. integrate the curve over the cost range spanned by the single models ``[c_min, c_max]`` and
   divide by ``c_max - c_min``.

The result is a quality (same unit as the points), comparable across selectors evaluated on
the same queries and models. Points cheaper than ``c_min`` take part in the hull but the
integral starts at ``c_min``.

Everything here is pure (numpy arrays in, floats out) so that the tests can check the metric's
geometry on hand-made hulls. Offline evaluation only (``bench/model_selection.py``), so it lives
in ``bench/``, outside the runtime package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

Point = tuple[float, float]


def upper_hull(points: Sequence[Point]) -> list[Point]:
    """Non-decreasing upper convex hull of ``(cost, quality)`` points, sorted by cost.

    Monotone-chain upper hull, then truncated after its highest point (the part of an upper
    hull beyond its maximum only descends). Duplicate costs keep the best quality.
    """
    if not points:
        raise ValueError("upper_hull needs at least one point")
    best: dict[float, float] = {}
    for c, q in points:
        if not (np.isfinite(c) and np.isfinite(q)):
            raise ValueError(f"points must be finite, got ({c}, {q})")
        best[c] = max(q, best.get(c, -np.inf))
    pts = sorted(best.items())
    hull: list[Point] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point unless it lies strictly above the chord
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    top = max(range(len(hull)), key=lambda i: hull[i][1])
    return hull[: top + 1]


def hull_value(hull: Sequence[Point], cost: float) -> float:
    """Quality of the hull at ``cost``: linear between points, flat after the last one.

    Before the first point the hull has no operating point; this returns the first point's
    quality only if ``cost`` equals it, else ``nan`` (callers integrate from a point on it).
    """
    xs = np.array([c for c, _ in hull])
    ys = np.array([q for _, q in hull])
    if cost < xs[0]:
        return float("nan")
    return float(np.interp(cost, xs, ys, right=ys[-1]))


def aiq(points: Sequence[Point], single_models: Sequence[Point]) -> float:
    """AIQ of a selector's operating points against the single models' points.

    ``single_models`` fixes the integration range ``[c_min, c_max]`` and contributes only its
    cheapest point to the hull (RouterBench's construction). Exact integral of the piecewise
    linear curve (no sampling).
    """
    if not single_models:
        raise ValueError("aiq needs the single models' points")
    c_min = min(c for c, _ in single_models)
    c_max = max(c for c, _ in single_models)
    if not c_max > c_min:
        raise ValueError("single models must span a cost range (c_max > c_min)")
    cheapest = min(single_models, key=lambda p: (p[0], -p[1]))
    hull = upper_hull([*points, cheapest])
    # breakpoints of the curve inside [c_min, c_max]
    xs = [c_min] + [c for c, _ in hull if c_min < c < c_max] + [c_max]
    ys = [hull_value(hull, x) for x in xs]
    area = 0.0
    for (x0, y0), (x1, y1) in zip(
        zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False
    ):
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / (c_max - c_min)


def cheapest_reaching(points: Sequence[Point], quality: float) -> float:
    """Lowest cost of an actual operating point with quality >= ``quality`` (``inf`` if none)."""
    costs = [c for c, q in points if q >= quality - 1e-12]
    return min(costs) if costs else float("inf")


def bootstrap_ci(
    stat: Callable[[npt.NDArray[np.int64]], float],
    n: int,
    rng: np.random.Generator,
    reps: int = 200,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``reps`` resamples of ``n`` rows.

    ``stat`` receives the resampled row indices (with replacement) and recomputes the figure
    on them; non-finite values (e.g. a quality never reached) are kept out of the percentiles.
    """
    if n < 1 or reps < 2 or not 0 < level < 1:
        raise ValueError("bootstrap_ci needs n >= 1, reps >= 2 and 0 < level < 1")
    vals = np.array([stat(rng.integers(0, n, size=n)) for _ in range(reps)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)
