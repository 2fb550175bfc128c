"""AIQ geometry on hand-made hulls, cost-to-reach and the bootstrap helper."""

from __future__ import annotations

import numpy as np
import pytest

from selection_metrics import (
    aiq,
    bootstrap_ci,
    cheapest_reaching,
    hull_value,
    upper_hull,
)

pytestmark = pytest.mark.unit

# single models spanning cost [0, 10]; cheapest (0, 0.5), most expensive (10, 0.9)
SINGLES = [(0.0, 0.5), (10.0, 0.9), (5.0, 0.6)]


def test_empty_selector_is_the_cheapest_model_flat() -> None:
    # only the cheapest single model's point is added: flat at its quality
    assert aiq([], SINGLES) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("points", "want"),
    [
        ([(10.0, 0.9)], 0.7),  # chord from (0, .5) to (10, .9): mean .7
        ([(0.0, 0.9)], 0.9),  # best quality at the lowest cost: flat .9
        ([(5.0, 0.9)], (0.5 * 5 * (0.5 + 0.9) + 5 * 0.9) / 10),  # rise then flat
        ([(5.0, 0.9), (10.0, 0.8)], (0.5 * 5 * (0.5 + 0.9) + 5 * 0.9) / 10),  # drop ignored
        ([(5.0, 0.9), (2.5, 0.6)], (0.5 * 5 * (0.5 + 0.9) + 5 * 0.9) / 10),  # under chord
        ([(2.0, 0.8), (5.0, 0.9)], (2 * 0.65 + 3 * 0.85 + 5 * 0.9) / 10),  # two segments
        ([(20.0, 1.0)], (0.5 + 0.75) / 2),  # beyond c_max: cut at c_max, where q = .75
        ([(-5.0, 0.7)], 0.7),  # cheaper than every single model: flat at .7 from c_min
    ],
    ids=[
        "chord",
        "best-at-cmin",
        "rise-then-flat",
        "non-decreasing",
        "interior-dominated",
        "two-segments",
        "beyond-cmax",
        "below-cmin",
    ],
)
def test_aiq_geometry(points: list[tuple[float, float]], want: float) -> None:
    assert aiq(points, SINGLES) == pytest.approx(want)


def test_aiq_of_the_single_models_themselves() -> None:
    # hull of singles: (0,.5)-(10,.9) chord dominates (5,.6); AIQ = .7
    assert aiq(SINGLES, SINGLES) == pytest.approx(0.7)


def test_aiq_is_a_mean_quality_bounded_by_the_points() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = [(float(c), float(q)) for c, q in rng.random((10, 2)) * [10, 1]]
        a = aiq(pts, SINGLES)
        assert 0.0 <= a <= max(0.5, *(q for _, q in pts)) + 1e-12
        # adding a point never lowers AIQ
        assert aiq([*pts, (3.0, 0.95)], SINGLES) >= a - 1e-12


def test_upper_hull_is_sorted_concave_and_cut_at_its_maximum() -> None:
    h = upper_hull([(0, 0.5), (1, 0.55), (2, 0.8), (3, 0.82), (4, 0.7), (2, 0.1)])
    assert h == [(0, 0.5), (2, 0.8), (3, 0.82)]
    assert hull_value(h, 10) == pytest.approx(0.82)
    assert hull_value(h, 1) == pytest.approx(0.65)
    assert np.isnan(hull_value(h, -1))


@pytest.mark.parametrize(
    "bad",
    [
        {"points": [(0.0, 1.0)], "singles": []},
        {"points": [(0.0, 1.0)], "singles": [(1.0, 0.5), (1.0, 0.6)]},
        {"points": [(float("nan"), 1.0)], "singles": SINGLES},
    ],
    ids=["no-singles", "no-cost-range", "nan-point"],
)
def test_aiq_rejects_bad_input(bad: dict[str, list[tuple[float, float]]]) -> None:
    with pytest.raises(ValueError):
        aiq(bad["points"], bad["singles"])


def test_cheapest_reaching() -> None:
    pts = [(3.0, 0.8), (1.0, 0.7), (2.0, 0.85), (5.0, 0.9)]
    assert cheapest_reaching(pts, 0.8) == 2.0
    assert cheapest_reaching(pts, 0.7) == 1.0
    assert cheapest_reaching(pts, 0.95) == float("inf")


def test_bootstrap_ci_covers_the_mean_and_is_seeded() -> None:
    x = np.random.default_rng(1).random(500)
    ci1 = bootstrap_ci(lambda idx: float(x[idx].mean()), len(x), np.random.default_rng(5))
    ci2 = bootstrap_ci(lambda idx: float(x[idx].mean()), len(x), np.random.default_rng(5))
    assert ci1 == ci2
    assert ci1[0] < x.mean() < ci1[1] and ci1[1] - ci1[0] < 0.1
    with pytest.raises(ValueError):
        bootstrap_ci(lambda idx: 0.0, 0, np.random.default_rng(0))
