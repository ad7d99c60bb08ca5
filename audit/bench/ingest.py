"""Benchmark: streaming `audit ingest` against a plain pyarrow read-and-write, side by side.

A synthetic laion2B-schema parquet (1,000,000 rows; 100,000 with `quick`) is ingested in a
child process; the baseline child reads the same file batch by batch with pyarrow and
writes it back with a `ParquetWriter` (the least any tool that rewrites metadata must do). Each child reports its own peak RSS (`ru_maxrss` of
`getrusage(RUSAGE_SELF)` at exit, i.e. what the parent would see as RUSAGE_CHILDREN for
that child alone). Ingest must stay under 1 GB whatever the input size.

    python -c "from pathlib import Path; from audit.bench import ingest; print(ingest.run(Path('reports/bench'), quick=True))"
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from audit.workspace import atomic_write_json, atomic_write_text

PEAK_LIMIT_MB = 1024
SPEED_GOAL = 0.9

_CHILD = r"""
import json, resource, sys, time
kind, src, out = sys.argv[1:4]
t = time.perf_counter()
if kind == "ingest":
    from audit import metadata
    rows = metadata.ingest(out, [src])["rows"]
else:
    # the plain way to read and write the same metadata with pyarrow: batch by batch
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(src)
    with pq.ParquetWriter(out, pf.schema_arrow) as w:
        for batch in pf.iter_batches():
            w.write_batch(batch)
    rows = pf.metadata.num_rows
seconds = time.perf_counter() - t
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": rows, "seconds": seconds, "cpu_seconds": use.ru_utime + use.ru_stime,
                  "peak_rss_mb": use.ru_maxrss / 1024}))
"""


def make_laion2b(path: Path, rows: int, batch: int = 100_000, seed: int = 0) -> None:
    """A laion2B-schema parquet with realistic-length URLs (~90 chars) and captions (~40-160)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = (
        "photo",
        "vintage",
        "red",
        "dress",
        "beach",
        "sunset",
        "modern",
        "kitchen",
        "design",
        "dog",
        "cat",
        "wedding",
        "floral",
        "print",
        "canvas",
        "wall",
        "art",
        "mountain",
        "lake",
        "city",
        "night",
        "street",
        "coffee",
        "table",
        "wooden",
        "ring",
        "gold",
        "silver",
        "shoes",
        "men",
    )
    hosts = (
        "i.pinimg.com",
        "images.example-shop.com",
        "cdn.shopify.com",
        "media.blogcdn.net",
        "img.news.org",
    )
    writer = None
    try:
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            ids = np.arange(start, start + n)
            lens = rng.integers(6, 26, n)
            picks = rng.integers(0, len(words), (n, 26))
            captions = [" ".join(words[j] for j in picks[i, : lens[i]]) for i in range(n)]
            urls = [
                f"https://{hosts[i % 5]}/originals/{i * 2654435761 % 10**9:09d}/"
                f"{words[i % 30]}-{words[(i // 30) % 30]}-{i:x}.jpg"
                for i in ids
            ]
            table = pa.table(
                {
                    "URL": urls,
                    "TEXT": captions,
                    "WIDTH": rng.integers(200, 2000, n),
                    "HEIGHT": rng.integers(200, 2000, n),
                    "similarity": rng.random(n),
                    "punsafe": rng.random(n) * 0.2,
                    "pwatermark": rng.random(n) * 0.8,
                    "hash": rng.integers(-(2**62), 2**62, n),
                    "AESTHETIC_SCORE": rng.random(n) * 4 + 3,
                    "LANGUAGE": np.array(["en", "de", "fr", "es", "ja"])[ids % 5],
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _child(kind: str, src: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "AUDIT_NO_PROGRESS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(src), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(
    out_dir: Path, quick: bool = False, rows: int | None = None, rounds: int = 3
) -> dict[str, Any]:
    """Run both sides `rounds` times, alternating, keep each side's best; write ingest.json/.md.

    Ingest's peak memory is also measured on an input half the size: streaming means the two
    peaks are about equal (flat in the input size). Half, not less: ingest holds up to
    `metadata.WRITERS` parts being written plus the one being read, so an input of fewer
    parts than that never reaches the steady state and would flatter the smaller run.
    """
    rows = rows or (100_000 if quick else 1_000_000)
    small_rows = rows // 2
    tmp = Path(tempfile.mkdtemp(prefix="audit-bench-ingest-"))
    try:
        src, small = tmp / "laion2b.parquet", tmp / "laion2b-small.parquet"
        t = time.perf_counter()
        make_laion2b(src, rows)
        make_laion2b(small, small_rows, seed=1)
        gen_s = time.perf_counter() - t
        cands, bases = [], []
        for i in range(rounds):  # alternating, so both sides see the same load on average
            cands.append(_child("ingest", src, tmp / f"ws{i}"))
            bases.append(_child("pyarrow", src, tmp / f"pyarrow{i}.parquet"))
            shutil.rmtree(tmp / f"ws{i}", ignore_errors=True)
        small_peak = _child("ingest", small, tmp / "ws-small")["peak_rss_mb"]
        input_mb = src.stat().st_size / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cand = min(cands, key=lambda r: r["seconds"])
    base = min(bases, key=lambda r: r["seconds"])
    for r in (cand, base):
        r["rows_per_s"] = r["rows"] / r["seconds"]
    result = {
        "name": "ingest",
        "quick": quick,
        "rows": rows,
        "rounds": rounds,
        "input_mb": round(input_mb, 1),
        "generate_seconds": round(gen_s, 2),
        "candidate": {"what": "audit ingest (streaming, metadata-only laion2B)", **_round(cand)},
        "baseline": {
            "what": "pyarrow ParquetFile.iter_batches + ParquetWriter (same file)",
            **_round(base),
        },
        "all_seconds": {
            "ingest": [round(r["seconds"], 2) for r in cands],
            "pyarrow": [round(r["seconds"], 2) for r in bases],
        },
        "speed_ratio": round(cand["rows_per_s"] / base["rows_per_s"], 3),
        # under load (2 cores shared) wall time swings by 2x between identical runs; the CPU
        # time each side spent is steadier, though ingest's writer thread runs beside its reader
        "median_speed_ratio": round(
            median(b["seconds"] for b in bases) / median(c["seconds"] for c in cands), 3
        ),
        "cpu_ratio": round(
            min(b["cpu_seconds"] for b in bases) / min(c["cpu_seconds"] for c in cands), 3
        ),
        "speed_goal": SPEED_GOAL,
        "peak_ratio": round(cand["peak_rss_mb"] / base["peak_rss_mb"], 3),
        "peak_small_input_mb": round(small_peak, 1),
        "small_rows": small_rows,
        "peak_growth": round(cand["peak_rss_mb"] / small_peak, 3),
        "peak_limit_mb": PEAK_LIMIT_MB,
        "peak_ok": cand["peak_rss_mb"] < PEAK_LIMIT_MB,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "ingest.json", result)
    c, b = result["candidate"], result["baseline"]
    atomic_write_text(
        out_dir / "ingest.md",
        "\n".join(
            [
                f"# Ingest benchmark ({rows:,} rows, {result['input_mb']} MB laion2B parquet{', quick' if quick else ''})",
                "",
                f"Best of {rounds} alternating runs per side, each in its own process (imports included).",
                "",
                "| | rows/s | seconds | peak RSS (MB) |",
                "|---|---:|---:|---:|",
                f"| {c['what']} | {c['rows_per_s']:,.0f} | {c['seconds']} | {c['peak_rss_mb']} |",
                f"| {b['what']} | {b['rows_per_s']:,.0f} | {b['seconds']} | {b['peak_rss_mb']} |",
                "",
                f"Speed ratio (ingest / pyarrow): {result['speed_ratio']} best of each, "
                f"{result['median_speed_ratio']} median of each (goal {SPEED_GOAL}); CPU time ratio "
                f"(pyarrow / ingest): {result['cpu_ratio']}. "
                f"Ingest peak RSS {c['peak_rss_mb']} MB at {rows:,} rows, {result['peak_small_input_mb']} MB "
                f"at {small_rows:,} rows (x{result['peak_growth']} for 2x the input); "
                f"under {PEAK_LIMIT_MB} MB: {'yes' if result['peak_ok'] else 'NO'}.",
                "Ingest does more than the baseline: casts to the canonical schema (32 columns), provenance "
                "columns, the duplicate-key check, a manifest with the sha256 of every input and output; "
                "its part writes overlap its reads (one background writer thread).",
                "",
            ]
        ),
    )
    return result


def _round(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": r["rows"],
        "seconds": round(r["seconds"], 2),
        "cpu_seconds": round(r["cpu_seconds"], 2),
        "rows_per_s": round(r["rows_per_s"]),
        "peak_rss_mb": round(r["peak_rss_mb"], 1),
    }
