"""The dataset bias report: what the captions say, where the data comes from, what it looks like.

`compute` reads the workspace once, part by part, and writes every figure with its 95%
bootstrap interval to `WS/bias/bias.json` (stage "bias"), then renders the report pages and a
model-card fragment under `report_dir`. Modules of this package, one per question:

- `captions`: gendered / identity / occupation terms from the lists in `audit/data/wordlists/`,
  co-occurrence counts, shares and PMI;
- `sources`: hosts, registrable domains (Public Suffix List), ccTLD -> country, concentration, licences;
- `language`: offline language identification, agreement with a `language` column;
- `properties`: image size / aspect, LAION score columns, CLIP image-caption similarity;
- `probes`: perceived-attribute CLIP zero-shot probes (trained weights only);
- `context`: opt-out removals and duplicate clusters, when those stages have run;
- `stats`, `wordlists`: the helpers they share.

Example:
    >>> from audit.checks import bias
    >>> summary = bias.compute("indexes/sample", report_dir="reports/sample/bias")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from audit.checks.bias import (
    captions,
    context,
    language,
    probes,
    properties,
    sources,
    stats,
    wordlists,
)
from audit.errors import AuditError
from audit.progress import track
from audit.workspace import Output, Workspace, atomic_write_json

__all__ = [
    "compute",
    "stats",
    "wordlists",
    "captions",
    "sources",
    "language",
    "properties",
    "probes",
    "context",
]

OUTPUT = "bias/bias.json"

LIMITS = [
    "Word counts measure how captions (mostly web alt text) describe images, not who is shown or how they identify.",
    "The word lists are English and short; other languages and synonyms are not counted (see the language section for how much text is not English).",
    "A term is counted wherever it appears, including in names, brands and unrelated senses ('model', 'judge', 'he' in a product code).",
    "Intervals cover sampling noise only, not list choice or caption noise: Wilson score intervals for shares, percentile bootstrap intervals for ratios, PMI and concentration.",
    f"Shares over fewer than {stats.MIN_N} captions are reported as too few to read, and PMI from fewer than {stats.PMI_MIN_COUNT} co-occurrences is omitted.",
    "A TLD says where a domain was registered, not where images were made or who made them; generic TLDs (.com) carry no country.",
    "Language identification is unreliable on captions of one or two words.",
]


def compute(
    ws_root: str | os.PathLike[str],
    report_dir: str | os.PathLike[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    encode_texts: Callable[[list[str]], np.ndarray] | None = None,
    max_language_rows: int = 200_000,
) -> dict[str, Any]:
    """Compute the dataset bias figures, write `WS/bias/bias.json` and the report pages.

    `encode_texts` is the text encoder of the model that made `embeddings/` (e.g.
    `audit.embeddings.load_model(...).embed_texts`); the perceived-attribute probes run only when
    it is given and the embeddings are from trained weights. `report_dir` defaults to
    `reports/<dataset>/bias`.

    Example: `audit bias indexes/sample --bootstrap 1000 --seed 0`
    """
    if bootstrap < 0:
        raise AuditError(
            f"--bootstrap must be >= 0 (got {bootstrap}); 1000 is usual, 0 skips intervals."
        )
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    from audit.reports import default_dir

    report_dir = Path(report_dir) if report_dir is not None else default_dir(ws) / "bias"
    run = ws.start_stage(
        "bias",
        {"bootstrap": bootstrap, "seed": seed, "max_language_rows": max_language_rows},
        depends_on=["ingest"],
    )
    rng = np.random.default_rng(seed)
    figures = _figures(ws, parts, bootstrap, rng, encode_texts, max_language_rows)
    atomic_write_json(ws.path(OUTPUT), figures)
    from audit.reports import bias as report

    pages = report.write_dataset_report(figures, report_dir)
    summary = {
        "workspace": str(ws.root),
        "rows": figures["rows"],
        "captions": figures["captions"]["captions"],
        "female_to_male_ratio": figures["captions"]["gender"]["female_to_male_ratio"]["value"],
        "domains": figures["sources"]["domains"],
        "top10_domain_share": figures["sources"]["concentration"]
        .get("top10_share", {})
        .get("value"),
        "probes": "skipped" if "skipped" in figures["probes"] else "run",
        "report_dir": str(report_dir),
        "pages": [str(p) for p in pages],
    }
    run.finish(summary, [Output(OUTPUT)])
    return summary


def _figures(
    ws: Workspace,
    parts: list[Any],
    reps: int,
    rng: np.random.Generator,
    encode_texts: Callable[[list[str]], np.ndarray] | None,
    max_language_rows: int,
) -> dict[str, Any]:
    import pyarrow.parquet as pq

    caps = captions.CaptionCounter()
    srcs = sources.SourceCounter()
    lang = language.LanguageCounter(sum(p.rows for p in parts), max_language_rows)
    for part in track(parts, len(parts), "bias: captions and sources"):
        path = ws.path(part.path)
        names = set(pq.read_schema(path).names)
        cols = [c for c in ("caption", "url", "license", "language") if c in names]
        data = pq.read_table(path, columns=cols).to_pydict()
        text = data.get("caption", [None] * part.rows)
        caps.add(text)
        srcs.add(data.get("url", [None] * part.rows), data.get("license"))
        lang.add(text, data.get("language") if _any(data.get("language")) else None)
    con = ws.connect()
    views = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    info = probes.model_info(ws.root)
    embeddings = (
        _image_embeddings(ws, parts) if info and info.get("trained") and encode_texts else []
    )
    return {
        "dataset": ws.dataset,
        "workspace": str(ws.root),
        "rows": sum(p.rows for p in parts),
        "bootstrap": {
            "reps": reps,
            "method": "percentile, resampling captions/rows (multinomial cell counts)",
            "proportions": "Wilson score interval",
            "min_n": stats.MIN_N,
            "pmi_min_count": stats.PMI_MIN_COUNT,
            "seed_note": "seeded: the same --seed gives the same intervals",
        },
        "wordlists": wordlists.describe(),
        "captions": caps.result(reps, rng),
        "sources": srcs.result(reps, rng),
        "language": lang.result(reps, rng),
        "images": properties.compute(con, views, reps, rng),
        "probes": probes.run(embeddings, encode_texts, info, reps, rng),
        "optout": context.optout(con, views, ws.manifest.get("stages", {})),
        "duplicates": context.duplicates(con, views, reps, rng),
        "limits": LIMITS,
    }


def _any(values: list[Any] | None) -> bool:
    return values is not None and any(v not in (None, "") for v in values)


def _image_embeddings(ws: Workspace, parts: list[Any]) -> list[np.ndarray]:
    out = []
    for part in parts:
        path = ws.path(f"embeddings/img-{part.stem}.npy")
        if path.exists():
            out.append(np.load(path, allow_pickle=False))
    return out
