"""Image properties: pixel size and aspect ratio, and LAION's score columns when present.

Sizes come from the decoded header (`image_width`/`image_height`, written by ingest) and fall
back to the declared `width`/`height`. Where both exist they are compared (`declared_sizes`):
declared sizes are taken from the web page or the source parquet and can be wrong; LAION's
original parquet is reported to have WIDTH and HEIGHT swapped. Score columns (`punsafe`, `pwatermark`, `aesthetic`,
`similarity`, and `clip_similarity` from `audit embed`) are summarised only when they hold
values. The "share above" cuts in `THRESHOLDS` are reference points, not filters: 0.5 for
the two detector probabilities, 6 for the aesthetic predictor (a LAION-Aesthetics subset cut)
and 0.28 for ViT-B/32 caption-image similarity (LAION-5B's English cut; meaningless for an
untrained model).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audit.checks.bias import stats

SCORES = ("punsafe", "pwatermark", "aesthetic", "similarity")
THRESHOLDS = {
    "punsafe": 0.5,
    "pwatermark": 0.5,
    "aesthetic": 6.0,
    "similarity": 0.28,
    "clip_similarity": 0.28,
}


def _column(con: Any, sql: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = con.sql(sql).to_arrow_table()
    col = table.column(0)
    return pc.fill_null(pc.cast(col, pa.float64()), float("nan")).to_numpy(zero_copy_only=False)


def declared_sizes(con: Any, tolerance: int = 1) -> dict[str, Any]:
    """Declared width/height against the decoded image: how many contradict, how many swapped.

    A declared size agrees when each side is within `tolerance` pixels of the decoded one
    (resizers round); it is swapped when it disagrees but matches with width and height
    exchanged (and the image is not square).
    """
    t = tolerance
    compared, contradict, swapped = con.sql(
        f"""
        SELECT count(*),
               count(*) FILTER (WHERE NOT (abs(width - image_width) <= {t}
                                       AND abs(height - image_height) <= {t})),
               count(*) FILTER (WHERE NOT (abs(width - image_width) <= {t}
                                           AND abs(height - image_height) <= {t})
                                AND abs(width - image_height) <= {t}
                                AND abs(height - image_width) <= {t})
        FROM metadata
        WHERE width IS NOT NULL AND height IS NOT NULL
          AND image_width IS NOT NULL AND image_height IS NOT NULL
        """
    ).fetchall()[0]
    return {
        "compared": int(compared),
        "contradict": int(contradict),
        "contradict_share": contradict / compared if compared else None,
        "swapped": int(swapped),
        "swapped_share_of_contradicting": swapped / contradict if contradict else None,
        "tolerance_px": tolerance,
    }


def compute(con: Any, views: set[str], reps: int, rng: np.random.Generator) -> dict[str, Any]:
    """Distributions over the `metadata` view (and `clip_scores` when present)."""
    w = _column(con, "SELECT coalesce(image_width, width) FROM metadata")
    h = _column(con, "SELECT coalesce(image_height, height) FROM metadata")
    ok = np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0)
    w, h = w[ok], h[ok]
    aspect = w / h
    n = int(ok.sum())
    out: dict[str, Any] = {"rows_with_size": n, "rows_without_size": int((~ok).sum())}
    out["declared_sizes"] = declared_sizes(con)
    if n:
        shares = {
            "landscape (w/h > 1.05)": int((aspect > 1.05).sum()),
            "portrait (w/h < 0.95)": int((aspect < 0.95).sum()),
            "square-ish": int(((aspect >= 0.95) & (aspect <= 1.05)).sum()),
            "small (shorter side < 256 px)": int((np.minimum(w, h) < 256).sum()),
        }
        out.update(
            width=stats.quantiles(w),
            height=stats.quantiles(h),
            aspect=stats.quantiles(aspect),
            megapixels=stats.quantiles(w * h / 1e6),
            width_hist=stats.histogram(w, 30, log=True),
            height_hist=stats.histogram(h, 30, log=True),
            aspect_hist=stats.histogram(np.clip(aspect, 0.2, 5), np.geomspace(0.2, 5, 31)),
            shapes={
                k: {
                    "rows": v,
                    "share": v / n,
                    "ci95": stats.wilson(v, n),
                }
                for k, v in shares.items()
            },
        )
    scores: dict[str, Any] = {}
    for name in SCORES:
        scores[name] = _score(
            _column(con, f"SELECT {name} FROM metadata"), THRESHOLDS[name], reps, rng
        )
    if "clip_scores" in views:
        scores["clip_similarity"] = _score(
            _column(con, "SELECT clip_similarity FROM clip_scores"),
            THRESHOLDS["clip_similarity"],
            reps,
            rng,
        )
    out["scores"] = {k: v for k, v in scores.items() if v is not None}
    out["scores_absent"] = [k for k, v in scores.items() if v is None]
    return out


def _score(
    values: np.ndarray, threshold: float, reps: int, rng: np.random.Generator
) -> dict[str, Any] | None:
    values = values[np.isfinite(values)]
    n = int(values.size)
    if n == 0:
        return None
    above = int((values > threshold).sum())
    lo, hi = float(min(0.0, values.min())), float(max(1.0, values.max()))
    return {
        "rows": n,
        "quantiles": stats.quantiles(values),
        "mean": float(values.mean()),
        "above": {
            "threshold": threshold,
            "rows": above,
            "share": above / n,
            "ci95": stats.wilson(above, n),
        },
        "hist": stats.histogram(values, np.linspace(lo, hi, 31)),
    }
