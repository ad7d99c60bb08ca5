"""Small statistics shared by the bias checks: bootstrap intervals, PMI, Gini, entropy, distances.

Bootstrap over cells. Every caption figure here (a share, a ratio, a PMI) depends only on
which of a few yes/no indicators each caption has (mentions a female term? the occupation?).
Resampling n captions with replacement then gives cell counts distributed exactly as
Multinomial(n, observed cell shares), so we draw those counts directly: the same percentile
bootstrap as resampling rows, in O(reps x cells) instead of O(reps x n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Z95 = (2.5, 97.5)

# Below these counts a figure is reported as "too few" instead of a number: a proportion
# over fewer than MIN_N captions (one caption reads as "100%"), a PMI from fewer than
# PMI_MIN_COUNT co-occurrences (one chance co-occurrence swings it by log(n), and zero makes
# it -inf). Stated on every page that shows these figures.
MIN_N = 10
PMI_MIN_COUNT = 5


def interval(values: np.ndarray) -> list[float | None]:
    """Percentile 95% interval of bootstrap values; an infinite or NaN end becomes None."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [None, None]
    lo, hi = np.percentile(values, Z95)
    return [float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None]


def bootstrap_cells(
    counts: Sequence[int] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    reps: int,
    rng: np.random.Generator,
) -> list[float | None]:
    """95% interval of `statistic` over multinomial resamples of `counts` (see module docstring).

    `statistic` takes an array (reps, cells) of counts and returns (reps,) values.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0 or reps <= 0:
        return [None, None]
    draws = rng.multinomial(n, counts / n, size=reps)
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval(statistic(draws))


def share(k: int, n: int) -> float | None:
    return k / n if n else None


def wilson(k: int, n: int, z: float = 1.959964) -> list[float | None]:
    """Wilson score 95% interval for k successes in n trials (Wilson 1927).

    Unlike a bootstrap or the normal approximation it does not collapse to a point at
    k = 0 or k = n: one caption out of one gives [20.7%, 100%], not [100%, 100%].
    """
    if n <= 0:
        return [None, None]
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact ends at k = 0 and k = n (rounding would put them a hair inside)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return [min(lo, p), max(hi, p)]


def proportion(k: int, n: int) -> dict[str, Any]:
    """A share with its Wilson interval and whether n is too small to read (`MIN_N`)."""
    return {"share": share(k, n), "ci95": wilson(k, n), "n": int(n), "too_few": n < MIN_N}


def pmi(n_xy: float, n_x: float, n_y: float, n: float) -> float | None:
    """Pointwise mutual information log(p(x,y) / (p(x) p(y))) in nats; None when undefined."""
    if n_xy <= 0 or n_x <= 0 or n_y <= 0 or n <= 0:
        return None
    return math.log(n_xy * n / (n_x * n_y))


def pmi_array(
    n_xy: np.ndarray, n_x: np.ndarray, n_y: np.ndarray, n: np.ndarray | float
) -> np.ndarray:
    """Vectorised PMI; -inf where x and y never co-occur, NaN where x or y never occurs."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(n_xy * n / (n_x * n_y))
    out = np.where((n_x > 0) & (n_y > 0), out, np.nan)
    return out


def gini(counts: Sequence[float] | np.ndarray) -> float | None:
    """Gini coefficient of non-negative counts: 0 when all equal, (n-1)/n when one has all."""
    x = np.sort(np.asarray(counts, dtype=float))
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return None
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.sum(ranks * x) / (n * total) - (n + 1) / n)


def gini_rows(draws: np.ndarray) -> np.ndarray:
    """Gini of each row of a (reps, n) count array, over the entries that are > 0 in that row.

    A resample that misses a domain has no rows from it, so that domain is not "present"
    in that resample; zeros are dropped to keep the statistic the same as on the data.
    """
    out = np.empty(draws.shape[0])
    for i, row in enumerate(draws):
        g = gini(row[row > 0])
        out[i] = np.nan if g is None else g
    return out


def normalised_entropy(p: Sequence[float] | np.ndarray, k: int | None = None) -> float:
    """Shannon entropy of distribution `p` divided by log(k) (k = number of categories): 0..1."""
    p = np.asarray(p, dtype=float)
    k = p.size if k is None else k
    total = p.sum()
    if k <= 1 or total <= 0:
        return 0.0
    p = p[p > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(k))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    p, q = _normalise(p), _normalise(q)
    return float(0.5 * np.abs(p - q).sum())


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0..1)."""
    p, q = _normalise(p), _normalise(q)
    m = 0.5 * (p + q)
    return float(0.5 * _kl(p, m) + 0.5 * _kl(q, m))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))


def _normalise(p: Any) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    s = p.sum()
    return p / s if s > 0 else p


def quantiles(
    values: np.ndarray, qs: Sequence[float] = (0, 0.05, 0.25, 0.5, 0.75, 0.95, 1)
) -> dict[str, float] | None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return {
        f"p{round(q * 100)}": float(v) for q, v in zip(qs, np.quantile(values, qs), strict=False)
    }


def histogram(values: np.ndarray, bins: Any = 30, log: bool = False) -> dict[str, list] | None:
    """Counts and bin edges (plain lists, for JSON); `log` spaces the bins logarithmically."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    if log and isinstance(bins, int):
        lo, hi = max(values.min(), 1e-9), max(values.max(), 1e-9)
        bins = (
            np.geomspace(lo, hi * 1.0001, bins + 1) if hi > lo else np.array([lo * 0.9, hi * 1.1])
        )
    counts, edges = np.histogram(values, bins=bins)
    return {"counts": counts.tolist(), "edges": [float(e) for e in edges]}
