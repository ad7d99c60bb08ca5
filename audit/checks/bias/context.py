"""Opt-out and duplication context, read through the workspace's duckdb views.

Opt-outs (`optout` view, from `audit optout`): per use, how many rows each decision covers,
and from which registrable domains the rows that are not `allowed` come. Duplicates
(`duplicates` view, from `audit dedup`): how many rows sit in clusters, how many would go if
one per cluster were kept, and how concentrated that is (largest clusters, Gini over sizes,
domains of duplicated rows).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from audit.checks.bias import stats
from audit.checks.bias.sources import host, registrable_domain


def _domain(url: str | None) -> str:
    h = host(url)
    return registrable_domain(h) if h else "(malformed)"


def optout(con: Any, views: set[str], stages: dict[str, Any], top: int = 10) -> dict[str, Any]:
    if "optout" not in views:
        return {
            "present": False,
            "note": "not run: no optout/decisions.parquet (run `audit optout`)",
        }
    rows = con.execute(
        "SELECT use, decision, count(*) FROM optout GROUP BY use, decision ORDER BY use, decision"
    ).fetchall()
    by_use: dict[str, dict[str, int]] = {}
    for use, decision, k in rows:
        by_use.setdefault(use, {})[decision] = int(k)
    domains: dict[str, list[dict[str, Any]]] = {}
    for use in by_use:
        urls = con.execute(
            "SELECT m.url FROM optout o JOIN metadata m USING (row_id) "
            "WHERE o.use = ? AND o.decision <> 'allowed'",
            [use],
        ).fetchall()
        counts = Counter(_domain(u) for (u,) in urls)
        domains[use] = [{"domain": d, "rows": k} for d, k in counts.most_common(top)]
    filt = stages.get("filter") or {}
    return {
        "present": True,
        "decisions_by_use": by_use,
        "not_allowed_by_domain": domains,
        "optout_summary": (stages.get("optout") or {}).get("summary"),
        "filter": {"params": filt.get("params"), "summary": filt.get("summary")} if filt else None,
    }


def duplicates(
    con: Any, views: set[str], reps: int, rng: np.random.Generator, top: int = 10
) -> dict[str, Any]:
    if "duplicates" not in views:
        return {"present": False, "note": "not run: no duplicates.parquet (run `audit dedup`)"}
    rows = con.execute(
        "SELECT d.cluster_id, d.kind, m.url FROM duplicates d JOIN metadata m USING (row_id) "
        "WHERE d.cluster_size > 1"
    ).fetchall()
    total = con.execute("SELECT count(*) FROM metadata").fetchall()[0][0]
    sizes = Counter(c for c, _, _ in rows)
    kinds = Counter(k for _, k, _ in rows)
    domains = Counter(_domain(u) for _, _, u in rows)
    size_arr = np.array(sorted(sizes.values(), reverse=True), dtype=np.int64)
    in_clusters = int(size_arr.sum())
    removable = in_clusters - len(size_arr)
    out: dict[str, Any] = {
        "present": True,
        "rows": int(total),
        "rows_in_clusters": in_clusters,
        "clusters": len(size_arr),
        "removable_if_one_kept": removable,
        "removable_share": removable / total if total else None,
        "by_kind": dict(kinds),
        "largest_clusters": size_arr[:top].tolist(),
        "top10_clusters_share_of_duplicated_rows": float(size_arr[:10].sum() / in_clusters)
        if in_clusters
        else None,
        "gini_cluster_sizes": stats.gini(size_arr),
        "domains_of_duplicated_rows": [
            {"domain": d, "rows": k} for d, k in domains.most_common(top)
        ],
    }
    if total:
        out["removable_share_ci95"] = stats.wilson(removable, total)
    return out
