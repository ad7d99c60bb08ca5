"""Registry join benchmark: 10,000,000 image URLs against 1,000,000 opt-out rules (half domain
rules, half URL rules), as `audit optout` runs it (duckdb, per 1M-row part), beside a Python
set-based join (normalise each URL in Python, look up the URL key and every host suffix in sets)
run on a 1M-row subset and extrapolated linearly. Both run in forked children one after the
other, so each reports its own peak RSS. Quick mode: 1M URLs, 100k rules, baseline on 100k.

Synthetic data, deterministic: hosts `img{0..6}.site{n}.com` over 2M sites, a quarter of the
sites listed as domain rules, every 20th URL listed as a URL rule, and 1% of the URLs spelt
with `%7E` (the Python normalisation path inside duckdb). Both joins must find the same
number of hits on the shared subset; the result records it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

SITES = 2_000_000


def _urls_sql(start: int, n: int) -> str:
    return f"""SELECT i AS row_id,
      'https://img' || (i % 7) || '.site' || (hash(i) % {SITES}) || '.com/p/' ||
      CASE WHEN i % 100 = 0 THEN '%7Euser/' ELSE '' END || i || '.jpg' AS url,
      NULL::VARCHAR AS page_url
    FROM range({start}, {start + n}) t(i)"""


def _rules(
    n_urls: int, n_rules: int
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(domain rules, URL rules) as `registry.Registry` holds them: (key, use, where)."""
    import duckdb

    con = duckdb.connect()
    half = n_rules // 2
    domains = [(f"site{k}.com", "ai_training", f"bench line {k}") for k in range(0, SITES, 4)][
        :half
    ]
    step = max(1, n_urls // half)
    rows = con.execute(
        f"SELECT url FROM ({_urls_sql(0, n_urls)}) WHERE row_id % {step} = 0 LIMIT {half}"
    ).fetchall()
    urls = [
        (u.split("://", 1)[1].replace("%7E", "~"), "ai_training", f"bench url {i}")
        for i, (u,) in enumerate(rows)
    ]
    return domains, urls


def _candidate(n_urls: int, n_rules: int, part: int, q: Any) -> None:
    import duckdb

    from audit.optouts import registry

    t0 = time.perf_counter()
    domains, urls = _rules(n_urls, n_rules)
    reg = registry.Registry("bench", domains, urls)
    con = registry.connect_rules([reg])
    load = time.perf_counter() - t0
    gen = duckdb.connect()
    hits = subset_hits = 0
    join = 0.0
    for start in range(0, n_urls, part):
        rows = gen.sql(_urls_sql(start, min(part, n_urls - start))).to_arrow_table()
        t1 = time.perf_counter()
        found = registry.match(con, rows)
        join += time.perf_counter() - t1
        ids = {h["row_id"] for h in found}
        hits += len(ids)
        if start == 0:
            subset_hits = len(ids)
    q.put(
        {
            "rules_load_s": round(load, 2),
            "join_s": round(join, 2),
            "rows": n_urls,
            "rows_per_s": round(n_urls / join),
            "rows_hit": hits,
            "first_part_hits": subset_hits,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    )


def _baseline(n_urls: int, n_rules: int, n_subset: int, q: Any) -> None:
    import duckdb

    from audit.optouts import registry

    domains, urls = _rules(n_urls, n_rules)
    domain_set = {d for d, _, _ in domains}
    url_set = {u for u, _, _ in urls}
    rows = duckdb.connect().execute(_urls_sql(0, n_subset)).fetchall()
    t0 = time.perf_counter()
    hits = 0
    for _, url, _ in rows:
        key = registry.url_key(url)
        if key is None:
            continue
        host = key.split("/", 1)[0]
        labels = host.split(".")
        if key in url_set or any(".".join(labels[i:]) in domain_set for i in range(len(labels))):
            hits += 1
    secs = time.perf_counter() - t0
    q.put(
        {
            "rows": n_subset,
            "join_s": round(secs, 2),
            "rows_per_s": round(n_subset / secs),
            "extrapolated_s": round(secs * n_urls / n_subset, 1),
            "rows_hit": hits,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    )


def _in_child(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:  # a child that died must not leave us waiting forever
        try:
            result = q.get(timeout=5)
            break
        except Exception:  # noqa: BLE001 - queue.Empty; check the child is still alive
            if not p.is_alive():
                raise RuntimeError(
                    f"benchmark child {target.__name__} exited with {p.exitcode}"
                ) from None
    p.join()
    return result


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    n_urls, n_rules, n_subset, part = (
        (1_000_000, 100_000, 100_000, 100_000)
        if quick
        else (10_000_000, 1_000_000, 1_000_000, 1_000_000)
    )
    cand = _in_child(_candidate, n_urls, n_rules, part)
    base = _in_child(_baseline, n_urls, n_rules, n_subset)
    result = {
        "urls": n_urls,
        "rules": n_rules,
        "quick": quick,
        "duckdb": cand,
        "python_sets": base,
        "speedup": round(base["extrapolated_s"] / max(cand["join_s"], 1e-9), 2),
        "same_hits_on_subset": cand["first_part_hits"] == base["rows_hit"]
        if n_subset == part
        else None,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "optout.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Opt-out registry join",
        "",
        f"{n_urls:,} URLs against {n_rules:,} rules (half domain, half URL).",
        "",
        "| join | rows | seconds | rows/s | rows hit | peak RSS MB |",
        "|---|---|---|---|---|---|",
        f"| duckdb (audit) | {n_urls:,} | {cand['join_s']} (+{cand['rules_load_s']} load) | "
        f"{cand['rows_per_s']:,} | {cand['rows_hit']:,} | {cand['peak_rss_mb']} |",
        f"| Python sets (baseline) | {n_subset:,} | {base['join_s']} (~{base['extrapolated_s']} for all) | "
        f"{base['rows_per_s']:,} | {base['rows_hit']:,} | {base['peak_rss_mb']} |",
        "",
        f"Speed-up (extrapolated baseline / duckdb join): {result['speedup']}x. Same hits on the shared "
        f"subset: {result['same_hits_on_subset']}.",
        "",
    ]
    (out_dir / "optout.md").write_text("\n".join(md))
    return result
