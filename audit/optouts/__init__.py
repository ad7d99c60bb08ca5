"""The consent stage: for every row, was it reserved from AI training, by which signal, and the consented subset.

Public API (each is one CLI command):

- `compute(ws_root, registry=[...], cache=DIR)` -> `audit optout WS`: writes `optout/signals.parquet`
  and `optout/decisions.parquet` (see `decide` for the precedence rules);
- `filter_dataset(ws_root, out)` -> `audit filter WS --out clean.parquet`: the consented subset in
  the input's own schema, a removal manifest and `optout/kept.parquet`;
- `crawl(ws_root, cache)` -> `audit optout crawl WS --cache DIR`: fills a crawl cache politely;
- `import_warc` / `export_warc` -> `audit optout import-warc` / `export-warc`;
- `sample_signals(sample_dir)`: rebuilds the bundled sample's registries and crawl cache.

Parsers of each signal (robots, headers, htmlmeta, tdmrep, embedded) are pure functions over bytes;
this package's other modules do the I/O around them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Bound here, before anything can import the submodule `crawl` and shadow the function.
from audit.optouts.cache import export_warc, import_warc, sample_signals
from audit.optouts.crawl import crawl
from audit.optouts.subset import filter_dataset

__all__ = [
    "compute",
    "optout_part",
    "crawl",
    "export_warc",
    "filter_dataset",
    "import_warc",
    "sample_signals",
]


def compute(
    ws_root: str | Path,
    registry: Sequence[str | Path] = (),
    cache: str | Path | None = None,
    agent: Sequence[str] = (),
    index_policy: bool = False,
    spawning: bool = False,
    spawning_endpoint: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Decide, for every row and use, whether its creator reserved it; returns the stage summary.

    `registry`: opt-out lists (text/CSV/parquet, see `registry`; a path that does not exist is an
    `AuditError`); `cache`: a crawl cache folder (without one, crawl-based signals are not
    consulted and the summary says so); `agent`: the user agents whose robots/X-Robots-Tag rules
    count (default: the AI-training agents and ours); `index_policy`: also count
    noindex/noimageindex/none as a reservation of AI training; `spawning`: also ask Spawning's
    do-not-train API (key in `SPAWNING_OPTS_KEY`; `spawning_endpoint` overrides the URL).
    `engine` runs the parts here ("local") or as Ray tasks ("ray", see `audit.engines`) with the
    same decisions (not with `spawning`, whose answers are fetched here for every part).

    >>> compute("indexes/sample", registry=["audit/data/sample/optout/registry-domains.txt"],
    ...         cache="audit/data/sample/optout/cache")  # doctest: +SKIP
    {'rows': 300, 'decisions': {'genai_training': {'allowed': 201, 'reserved': 81, ...}}, ...}
    """
    from audit import engines
    from audit.errors import AuditError
    from audit.optouts import decide
    from audit.optouts import outputs as files
    from audit.optouts import registry as registries
    from audit.optouts import spawning as spawn
    from audit.optouts.cache import CrawlCache
    from audit.optouts.signals import DEFAULT_AGENTS, SOURCES
    from audit.progress import track
    from audit.workspace import Output, Workspace, sha256_file

    started = time.monotonic()
    if spawning and engine != "local":
        raise AuditError(
            "--spawning runs with --engine local only (its answers are not shipped to workers yet)."
        )
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    for p in registry:
        if not Path(p).is_file():
            raise AuditError(
                f"--registry {p}: no such file. Check the path; nothing was written "
                "(a missing registry would otherwise pass every row it lists)."
            )
    # the registries and the cache are recorded (parameters, summary, each rule's location in
    # the tables) relative to the workspace, so it moves with them (`Workspace.relative`)
    regs = [registries.load(p, recorded_as=ws.relative(p)) for p in registry]
    store = CrawlCache.open(cache) if cache is not None else None
    cache_at = None if cache is None else ws.relative(cache)
    agents = tuple(agent) or DEFAULT_AGENTS
    params = {
        "registries": [
            {"path": r.path, "sha256": None if r.error else sha256_file(r.file), "error": r.error}
            for r in regs
        ],
        "cache": None
        if store is None
        else {"path": cache_at, "sha256": sha256_file(store.root / "responses.parquet")},
        "agents": list(agents),
        "index_policy": index_policy,
        "spawning": spawning_endpoint or spawn.DEFAULT_ENDPOINT if spawning else None,
    }
    run = ws.start_stage("optout", params, depends_on=["ingest"])
    if (
        run.record.get("status") == "done"
        and all(run.is_done(p.number) for p in parts)
        and (ws.root / "optout/decisions.parquet").exists()
    ):
        return run.record["summary"]
    ctx = decide.Context(regs, store, agents, index_policy, rules=registries.connect_rules(regs))
    # Ingest always writes a page_url column; whether the *input* had one is in its mapping.
    inputs = ws.manifest.get("inputs", [])
    ctx.has_page_column = (
        any("page_url" in (rec.get("columns") or {}) for rec in inputs)
        if any(rec.get("columns") for rec in inputs)
        else "page_url" in _schema_names(ws.path(parts[0].path))
    )
    if spawning:
        todo = [p for p in parts if not run.is_done(p.number)]
        wanted = [u for p in todo for u in ws.read_part(p, columns=["url"])["url"].to_pylist() if u]
        ctx.spawning = spawn.check(wanted, endpoint=spawning_endpoint or spawn.DEFAULT_ENDPOINT)
    settings = {
        "registry": [r.path for r in regs],
        "cache": cache_at,
        "agents": list(agents),
        "index_policy": index_policy,
        "has_page_column": ctx.has_page_column,
    }
    # in this process the parts use this context (with Spawning's answers); a Ray worker
    # builds its own from the same settings
    _CONTEXTS.clear()
    _CONTEXTS[_key(settings, ws)] = ctx
    todo = [p for p in parts if not run.is_done(p.number)]
    runner = engines.get(engine, ray_address)
    results = runner.map_parts("audit.optouts:optout_part", ws.root, todo, settings)
    for part, result in track(results, total=len(todo), description="opt-out signals"):
        run.record_part(part.number, result.outputs, **result.info)
    merged = files.merge_parts(ws, parts)
    counts = [(run.part_info(p.number) or {})["counts"] for p in parts]
    matched = files.matched_rules(ws)
    summary: dict[str, Any] = {
        "rows": sum(p.rows for p in parts),
        "decisions": _sum_nested([c["decisions"] for c in counts]),
        "signals": _sum_nested([c["signals"] for c in counts]),
        "coverage": _sum_nested([c.get("coverage", {}) for c in counts]),
        "coverage_notes": _first_notes([c.get("coverage_notes", {}) for c in counts]),
        "coverage_sources": {src: list(names) for src, names in SOURCES.items()},
        "errors": _sum_nested([{"_": c["errors"]} for c in counts]).get("_", {}),
        "registries": [
            {
                "path": r.path,
                "domains": len(r.domains),
                "urls": len(r.urls),
                "url_prefixes": len(r.prefixes),
                "hosts": len(r.hosts),
                "skipped": r.skipped,
                "error": r.error,
                **({} if r.error else registries.unmatched(r, matched)),
            }
            for r in regs
        ],
        "registry_errors": [r.error for r in regs if r.error],
        "cache": cache_at,
        "not_consulted": [] if store is not None else list(decide.CRAWL_SIGNALS),
        "spawning": ctx.spawning.summary() if ctx.spawning is not None else None,
        "agents": list(agents),
        "index_policy": index_policy,
        "seconds": round(time.monotonic() - started, 2),
    }
    summary["evaluable"] = [
        src for src, per in summary["coverage"].items() if per.get("evaluated", 0) > 0
    ]
    run.finish(summary, [Output(path, rows=n) for path, n in merged])
    return summary


# The context of the last settings seen, per process: an engine's worker decides many parts
# with the same registries and crawl cache, and loading them is most of the cost of a small part.
_CONTEXTS: dict[str, Any] = {}


def _key(settings: dict[str, Any], ws: Any) -> str:
    cache = ws.locate(settings["cache"])
    files = [
        *map(ws.locate, settings["registry"]),
        *([os.path.join(cache, "responses.parquet")] if cache else []),
    ]
    # a worker process outlives one run: a file changed since must not reuse the old context
    stamps = [(f, st.st_mtime_ns, st.st_size) for f in files if (st := _stat(f)) is not None]
    return json.dumps([settings, stamps], sort_keys=True)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def optout_part(
    ws_root: str,
    part: Any,
    registry: list[str],
    cache: str | None,
    agents: list[str],
    index_policy: bool,
    has_page_column: bool,
) -> Any:
    """Decide one metadata part and write its files (the per-part function engines run).
    `registry` and `cache` are as the workspace records them (`Workspace.relative`)."""
    from audit.engines.local import PartResult
    from audit.optouts import decide
    from audit.optouts import outputs as files
    from audit.optouts import registry as registries
    from audit.optouts.cache import CrawlCache
    from audit.workspace import Workspace

    settings = {
        "registry": registry,
        "cache": cache,
        "agents": agents,
        "index_policy": index_policy,
        "has_page_column": has_page_column,
    }
    ws = Workspace.open(ws_root)
    key = _key(settings, ws)
    if key not in _CONTEXTS:
        _CONTEXTS.clear()
        regs = [registries.load(ws.locate(p) or p, recorded_as=p) for p in registry]
        store = CrawlCache.open(ws.locate(cache) or cache) if cache is not None else None
        ctx = decide.Context(
            regs, store, tuple(agents), index_policy, rules=registries.connect_rules(regs)
        )
        ctx.has_page_column = has_page_column
        _CONTEXTS[key] = ctx
    table = ws.read_part(part)
    sig_rows, dec_rows, err_rows, cov_rows = decide.evaluate_part(_CONTEXTS[key], table)
    outputs = files.write_part(ws, part, sig_rows, dec_rows, err_rows, cov_rows)
    return PartResult(
        outputs, {"counts": files.part_counts(sig_rows, dec_rows, err_rows, cov_rows)}
    )


def _schema_names(path: Any) -> list[str]:
    """Column names from a parquet footer (local or on a URL workspace), not the whole file."""
    import pyarrow.parquet as pq

    from audit.workspace import open_file

    with open_file(path) as f:
        return list(pq.read_schema(f).names)


def _first_notes(items: list[dict[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
    """Per source and coverage state, the first reason any part recorded (an example for the report)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        for src, per in item.items():
            for state, why in per.items():
                out.setdefault(src, {}).setdefault(state, why)
    return out


def _sum_nested(items: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for item in items:
        for key, sub in item.items():
            dst = out.setdefault(key, {})
            for k, v in sub.items():
                dst[k] = dst.get(k, 0) + v
    return out
