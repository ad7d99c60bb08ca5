"""Known answers for the statistics behind the bias reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.checks.bias import stats


def test_pmi_hand_computed():
    # 10 captions; x in 3, y in 5, both in 3: p(x,y)/(p(x)p(y)) = 0.3 / (0.3 * 0.5) = 2
    assert stats.pmi(3, 3, 5, 10) == pytest.approx(math.log(2))
    # independent: 2 of 10 with both, x in 4, y in 5 -> 0.2 / (0.4 * 0.5) = 1
    assert stats.pmi(2, 4, 5, 10) == pytest.approx(0.0)
    assert stats.pmi(0, 4, 5, 10) is None  # never together: undefined, not a number
    arr = stats.pmi_array(
        np.array([3.0, 0.0, 1.0]), np.array([3.0, 4.0, 0.0]), np.array([5.0, 5.0, 5.0]), 10
    )
    assert arr[0] == pytest.approx(math.log(2)) and arr[1] == -np.inf and np.isnan(arr[2])


def _mad_gini(x: np.ndarray) -> float:
    """Gini by its definition: mean absolute difference / (2 * mean)."""
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean()))


def test_gini_known_values():
    assert stats.gini([5, 5, 5, 5]) == pytest.approx(0.0)
    for n in (2, 4, 10):
        assert stats.gini([0] * (n - 1) + [7]) == pytest.approx((n - 1) / n)
    assert stats.gini([1, 2, 3, 4]) == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    x = rng.integers(1, 100, 50).astype(float)
    assert stats.gini(x) == pytest.approx(_mad_gini(x))
    assert stats.gini([]) is None


def test_bootstrap_interval_contains_estimate_shrinks_and_is_seeded():
    def width(n: int, seed: int = 0) -> tuple[list, float]:
        k = int(0.3 * n)
        ci = stats.bootstrap_cells(
            [k, n - k], lambda d: d[:, 0] / n, 1000, np.random.default_rng(seed)
        )
        assert ci[0] <= k / n <= ci[1]
        return ci, ci[1] - ci[0]

    (_, w_small), (_, w_big) = width(100), width(10_000)
    assert w_big < w_small / 5  # ~ 1/sqrt(n): 10x narrower for 100x the captions
    assert width(500, seed=3)[0] == width(500, seed=3)[0]
    assert width(500, seed=3)[0] != width(500, seed=4)[0]


def test_cell_bootstrap_matches_resampling_rows():
    """Multinomial cell counts give the same interval as resampling the rows themselves."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 4, 400)  # 4 cells: none / female / male / both
    cells = np.bincount(rows, minlength=4)

    def ratio(d: np.ndarray) -> np.ndarray:
        return (d[:, 1] + d[:, 3]) / (d[:, 2] + d[:, 3])

    fast = stats.bootstrap_cells(cells, ratio, 4000, np.random.default_rng(1))
    idx = np.random.default_rng(2).integers(0, rows.size, (4000, rows.size))
    slow_counts = np.stack([np.bincount(r, minlength=4) for r in rows[idx]])
    slow = stats.interval(ratio(slow_counts))
    assert fast[0] == pytest.approx(slow[0], abs=0.04) and fast[1] == pytest.approx(
        slow[1], abs=0.04
    )


def test_entropy_and_distances():
    assert stats.normalised_entropy([5, 5, 5, 5]) == pytest.approx(1.0)
    assert stats.normalised_entropy([9, 0, 0]) == pytest.approx(0.0)
    assert stats.normalised_entropy([1, 1, 0, 0], k=4) == pytest.approx(0.5)
    p, q = np.array([4, 0]), np.array([0, 2])
    assert stats.total_variation(p, q) == pytest.approx(1.0)
    assert stats.jensen_shannon(p, q) == pytest.approx(1.0)
    assert stats.total_variation(np.array([1, 3]), np.array([2, 6])) == pytest.approx(0.0)
    assert stats.jensen_shannon(np.array([1, 3]), np.array([2, 6])) == pytest.approx(0.0)
    assert stats.total_variation(np.array([1, 1]), np.array([1, 0])) == pytest.approx(0.5)


def test_vectorised_rows_match_scalar_versions():
    from audit.checks.bias import generated as bg

    rng = np.random.default_rng(0)
    p, q = rng.integers(0, 5, (20, 4)) + 1, rng.integers(0, 5, (20, 4))
    q[:, 0] += 1
    assert np.allclose(
        bg._tv_rows(p, q), [stats.total_variation(a, b) for a, b in zip(p, q, strict=True)]
    )
    assert np.allclose(
        bg._js_rows(p, q), [stats.jensen_shannon(a, b) for a, b in zip(p, q, strict=True)]
    )
    assert np.allclose(bg._entropy_rows(p, 4), [stats.normalised_entropy(a, 4) for a in p])
