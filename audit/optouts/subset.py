"""`audit filter`: the consented subset, written back in the input's own schema.

Rows kept: those whose decision for `use` is `allowed`, plus the states named in `keep`
(`unchecked`, `not_evaluable`: an explicit choice to accept rows we could not verify).
`reserved` rows are never kept. `allowed` already means that no evaluated signal reserves the
row and that every source that should have been consulted was (see `decide`); sources that do
not exist for a row (no page URL, no image bytes yet) do not block it, unless named in
`require` (`page`, `embedded`, `headers`, `robots`, `ai_txt`, `tdmrep`, `registry`, `spawning`,
or `crawl` for the four crawl sources): then a row is kept only when each of them was
evaluated for it (`optout/coverage.parquet`). `exclude` names informational uses
(`search_indexing`, `ai_inference`) whose reservation removes a row too. Three files come out:

- `out` (parquet): the kept rows *as they were in the input*. For an input that was a parquet
  file (LAION metadata, an img2dataset shard's parquet), the rows are taken from that file by
  `source_row`, so names, order and types of its columns are exactly the input's; each taken
  row's URL is checked against the workspace's. Rows that cannot be taken that way (tar or
  folder inputs, a moved input file, a URL that does not agree) are rebuilt from the workspace
  with the input's column names (manifest `inputs[i]["columns"]`, canonical -> source) and cast
  to the input's types. Inputs with different schemas are unified (missing columns null).
- `<out stem>.removed.json`: what was removed and why: counts per decision state, per deciding
  signal, per domain (top 100), plus what the optout stage consulted.
- `optout/kept.parquet` in the workspace (`row_id` int64) and a `filter` stage record, so
  training can select the consented rows by `row_id`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.schema import COMPUTED as _COMPUTED
from audit.workspace import Output, Workspace, atomic_path, atomic_write_json, atomic_write_parquet

KEEPABLE = ("unchecked", "not_evaluable")
CRAWL = ("headers", "robots", "ai_txt", "tdmrep")


def required_sources(require: Sequence[str]) -> list[str]:
    """The coverage columns `require` names (comma lists allowed, `crawl` = the crawl sources)."""
    from audit.optouts.signals import SOURCES

    names = [n.strip().replace("ai.txt", "ai_txt") for r in require for n in str(r).split(",")]
    out: list[str] = []
    for name in filter(None, names):
        expanded = CRAWL if name == "crawl" else (name,)
        for src in expanded:
            if src not in SOURCES:
                raise AuditError(
                    f"--require {name!r} is not a source; choose from "
                    f"{', '.join(SOURCES)} or crawl."
                )
            if src not in out:
                out.append(src)
    return out


def filter_dataset(
    ws_root: str | Path,
    out: str | Path,
    use: str = "genai_training",
    keep: Sequence[str] = (),
    require: Sequence[str] = (),
    exclude: Sequence[str] = (),
    exclude_synthetic: bool = False,
    format: str = "parquet",
    samples_per_shard: int = 10_000,
) -> dict[str, Any]:
    """Write the rows consented for `use` to `out`; returns the removal summary.

    `format` "parquet" writes the input's own schema to the file `out`; "webdataset" and
    "img2dataset-parquet" write training shards into the folder `out` (`audit.optouts.shards`).
    `exclude_synthetic`: also drop the rows `audit provenance` found marked as generated.

    >>> filter_dataset("indexes/sample", "clean.parquet", use="genai_training")  # doctest: +SKIP
    {'kept': 201, 'removed': 99, 'by_decision': {'reserved': 87, 'unchecked': 12}, ...}
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from audit.optouts.signals import INFO_USES, USES

    started = time.monotonic()
    if use not in USES:
        raise AuditError(f"--use {use!r} is not a use; choose one of {', '.join(USES)}.")
    bad_ex = [u for u in exclude if u not in INFO_USES]
    if bad_ex:
        raise AuditError(
            f"--exclude {', '.join(bad_ex)}: only {', '.join(INFO_USES)} can be excluded "
            "on top of --use."
        )
    required = required_sources(require)
    bad = [k for k in keep if k not in KEEPABLE]
    if bad:
        raise AuditError(
            f"--keep {', '.join(bad)}: only {' and '.join(KEEPABLE)} rows can be kept "
            "on top of allowed ones (reserved rows are never kept)."
        )
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    if (ws.stage("optout") or {}).get("status") != "done":
        raise AuditError(f"no opt-out decisions in {ws.root}. Run first: audit optout {ws.root}")
    out = Path(out)
    if format == "parquet" and out.suffix != ".parquet":
        raise AuditError(f"--out {out} must end in .parquet")
    states = ("allowed", *sorted(set(keep)))
    params: dict[str, Any] = {"out": ws.relative(out), "use": use, "keep": list(states[1:])}
    if required or exclude:
        params |= {"require": required, "exclude": sorted(set(exclude))}
    if exclude_synthetic:
        params["exclude_synthetic"] = True
    run = ws.start_stage(
        "filter", params, depends_on=["optout", *(["provenance"] if exclude_synthetic else [])]
    )

    con = ws.connect()
    if required and "optout_coverage" not in _views(con):
        raise AuditError(
            f"--require needs optout/coverage.parquet, which this workspace's optout run did not "
            f"write. Run again: audit optout {ws.root}"
        )
    con.execute(_decision_sql(required, sorted(set(exclude))), [use, *sorted(set(exclude))])
    kept_ids = np.asarray(
        con.execute(
            f"SELECT row_id FROM d WHERE decision IN ({', '.join('?' * len(states))}) ORDER BY row_id",
            list(states),
        ).fetchnumpy()["row_id"],
        dtype=np.int64,
    )
    removal = _removal_counts(con, states)
    if exclude_synthetic:  # rows marked as generated (view `synthetic`, stage provenance)
        marked = con.execute("SELECT row_id FROM synthetic WHERE synthetic").fetchnumpy()["row_id"]
        dropped = np.isin(kept_ids, marked)
        removal["synthetic_removed"] = int(dropped.sum())
        kept_ids = kept_ids[~dropped]

    # keyed by the stored path, as `source_file` names it; the file itself located here
    inputs = {
        rec["path"]: {**rec, "path": ws.locate(rec["path"])}
        for rec in ws.manifest.get("inputs", [])
    }
    target = _target_schema(inputs)
    how = {"taken_from_input": 0, "rebuilt_from_workspace": 0}
    tables = []
    for part in parts:
        mask = np.isin(np.arange(part.row_offset, part.row_offset + part.rows), kept_ids)
        if not mask.any():
            continue
        meta = ws.read_part(part).filter(pa.array(mask))
        for source in meta.column("source_file").unique().to_pylist():
            rows = (
                meta.filter(pc.equal(meta.column("source_file"), source))
                if source is not None
                else meta.filter(pc.is_null(meta.column("source_file")))
            )
            for table, method in _source_rows(rows, inputs.get(source)):
                how[method] += table.num_rows
                tables.append(table)
    schema = target or (
        pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
        if tables
        else pa.schema([("url", pa.string()), ("caption", pa.string())])
    )
    written = None
    if format == "parquet":
        with atomic_path(out) as tmp:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for t in tables:
                    writer.write_table(_conform(t, schema))
    else:
        from audit.optouts import shards

        written = shards.write(ws, kept_ids, out, format, samples_per_shard)
    atomic_write_parquet(
        ws.path("optout/kept.parquet"), pa.table({"row_id": pa.array(kept_ids, pa.int64())})
    )
    optout = ws.stage("optout") or {}
    summary = {
        "out": str(out),
        "use": use,
        "kept_states": list(states),
        "rows": ws.num_rows,
        "kept": int(len(kept_ids)),
        "removed": ws.num_rows - int(len(kept_ids)),
        **removal,
        "required": required,
        "excluded_uses": sorted(set(exclude)),
        "schema": "input" if target is not None else "canonical names (no parquet input)",
        "rows_written": how,
        "shards": written,
        "optout_consulted": {
            k: optout.get("summary", {}).get(k)
            for k in ("registries", "cache", "not_consulted", "agents", "coverage", "evaluable")
        },
        "seconds": round(time.monotonic() - started, 2),
    }
    removed_path = out.with_name(out.stem + ".removed.json")
    # its paths (`out`, the registries and cache consulted) relative to the workspace, as the
    # manifest records them; the caller is told `out` as it gave it
    atomic_write_json(removed_path, {**summary, "out": ws.relative(out)})
    run.finish(
        {k: v for k, v in summary.items() if k != "by_domain"} | {"out": ws.relative(out)},
        [Output("optout/kept.parquet", rows=int(len(kept_ids)))],
    )
    return {**summary, "removed_manifest": str(removed_path)}


def _views(con: Any) -> set[str]:
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}


def _decision_sql(required: list[str], exclude: list[str]) -> str:
    """SQL creating the temp table `d` (row_id, decision, signal) the filter keeps rows from.

    A row whose required source was not evaluated gets decision `coverage` and signal
    `<source> <state>`; a row reserved for an excluded informational use gets that use's
    decision. Parameters: the use, then each excluded use.
    """
    sql = "SELECT row_id, decision, signal FROM optout WHERE use = ?"
    for _ in exclude:
        sql = f"""SELECT d.row_id,
                    CASE WHEN d.decision = 'allowed' AND x.decision = 'reserved' THEN 'reserved'
                         ELSE d.decision END AS decision,
                    CASE WHEN d.decision = 'allowed' AND x.decision = 'reserved'
                         THEN x.signal || ' (' || x.use || ')' ELSE d.signal END AS signal
                  FROM ({sql}) d LEFT JOIN optout x ON x.row_id = d.row_id AND x.use = ?"""
    if required:
        # Source names are validated against SOURCES: safe to interpolate as column names.
        missing = " ".join(
            f"WHEN c.{src} IS DISTINCT FROM 'evaluated' THEN '{src} ' || coalesce(c.{src}, 'unknown')"
            for src in required
        )
        sql = f"""SELECT d.row_id,
                    CASE WHEN d.decision = 'allowed' AND ({" OR ".join(f"c.{s} IS DISTINCT FROM 'evaluated'" for s in required)})
                         THEN 'coverage' ELSE d.decision END AS decision,
                    CASE WHEN d.decision = 'allowed' THEN coalesce(CASE {missing} END, d.signal)
                         ELSE d.signal END AS signal
                  FROM ({sql}) d LEFT JOIN optout_coverage c USING (row_id)"""
    return f"CREATE TEMP TABLE d AS {sql}"


def _removal_counts(con: Any, states: tuple[str, ...]) -> dict[str, Any]:
    """Removed rows per decision, deciding signal and host; rows kept although not allowed."""

    def counts(sql: str) -> dict[str, int]:
        return {str(k): int(n) for k, n in con.execute(sql).fetchall()}

    kept = ", ".join(f"'{s}'" for s in states)  # states are validated names, not user text
    removed = (
        f"SELECT d.*, m.url FROM d JOIN metadata m USING (row_id) WHERE d.decision NOT IN ({kept})"
    )
    return {
        "by_decision": counts(
            f"SELECT decision, count(*) n FROM ({removed}) GROUP BY 1 ORDER BY n DESC, 1"
        ),
        "by_signal": counts(
            f"SELECT signal, count(*) n FROM ({removed}) GROUP BY 1 ORDER BY n DESC, 1"
        ),
        "by_domain": counts(
            "SELECT coalesce(nullif(lower(regexp_extract(url, '^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#:@]*)', 1)), ''), "
            f"'(malformed)') h, count(*) n FROM ({removed}) GROUP BY 1 ORDER BY n DESC, 1 LIMIT 100"
        ),
        "kept_not_allowed": counts(
            f"SELECT decision, count(*) FROM d WHERE decision IN ({kept}) "
            "AND decision <> 'allowed' GROUP BY 1 ORDER BY 1"
        ),
    }


def _input_parquet(rec: dict[str, Any] | None) -> Path | None:
    if (
        rec
        and rec.get("kind") in ("parquet", "webdataset", "files")
        and Path(rec["path"]).is_file()
    ):
        return Path(rec["path"])
    return None


def _target_schema(inputs: dict[str, dict[str, Any]]) -> Any:
    """The schema of the input parquet files (unified if they differ); None if there are none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = []
    for rec in inputs.values():
        path = _input_parquet(rec)
        if path is not None:
            try:
                schemas.append(pq.read_schema(path).remove_metadata())
            except (OSError, pa.ArrowException):
                continue
    if not schemas:
        return None
    return (
        schemas[0]
        if all(s.equals(schemas[0]) for s in schemas)
        else pa.unify_schemas(schemas, promote_options="permissive")
    )


def _source_rows(meta: Any, rec: dict[str, Any] | None) -> list[tuple[Any, str]]:
    """The kept rows of one input: taken from its parquet where they agree, rebuilt otherwise."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = _input_parquet(rec)
    mapping = (rec or {}).get("columns", {})
    if path is None or "url" not in mapping:
        return [(_rebuild(meta, rec), "rebuilt_from_workspace")]
    meta = meta.sort_by("source_row")  # `_take` returns rows in source order
    try:
        pf = pq.ParquetFile(path)
        source_rows = np.asarray(meta.column("source_row").to_numpy(zero_copy_only=False))
        valid = (source_rows >= 0) & (source_rows < pf.metadata.num_rows)
        taken = _take(pf, source_rows[valid]) if valid.any() else None
    except (OSError, pa.ArrowException):
        return [(_rebuild(meta, rec), "rebuilt_from_workspace")]
    agree = np.zeros(len(source_rows), dtype=bool)
    if taken is not None:
        same = np.asarray(
            pc.equal(
                taken.column(mapping["url"]).cast(pa.string()),
                meta.filter(pa.array(valid)).column("url"),
            ).fill_null(False)
        )
        agree[np.flatnonzero(valid)[same]] = True
        taken = taken.filter(pa.array(same))
    out = []
    if taken is not None and taken.num_rows:
        out.append((taken, "taken_from_input"))
    if not agree.all():
        out.append((_rebuild(meta.filter(pa.array(~agree)), rec), "rebuilt_from_workspace"))
    return out


def _take(pf: Any, rows: Any) -> Any:
    """Rows `rows` (sorted ints) of a parquet file, reading only the row groups that hold them."""
    import numpy as np
    import pyarrow as pa

    starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
    groups = sorted(set(np.searchsorted(starts, rows, side="right") - 1))
    pieces = []
    for g in groups:
        local = rows[(rows >= starts[g]) & (rows < starts[g + 1])] - starts[g]
        pieces.append(pf.read_row_group(int(g)).take(pa.array(local)))
    return pa.concat_tables(pieces).replace_schema_metadata(None)


def _rebuild(meta: Any, rec: dict[str, Any] | None) -> Any:
    """Workspace rows with the input's column names (canonical names when the input had none)."""
    mapping = dict((rec or {}).get("columns", {}))
    extras = dict((rec or {}).get("extra_columns", {}))
    import pyarrow as pa

    cols, names = [], []
    for name in meta.column_names:
        if name in _COMPUTED:
            continue
        if mapping:
            if name in mapping:
                names.append(mapping[name])
            elif name in extras:
                names.append(extras[name])
            else:
                continue  # a canonical column this input did not have
        else:
            names.append(name)
        cols.append(meta.column(name))
    return pa.table(dict(zip(names, cols, strict=True)))


def _conform(table: Any, schema: Any) -> Any:
    """`table` with exactly `schema`'s columns, in order and type (missing ones null)."""
    import pyarrow as pa

    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise AuditError(
                    f"column {field.name!r} cannot be written back as {field.type} ({e}); "
                    "the input file changed since ingest? Re-run audit ingest."
                ) from e
        else:
            col = pa.nulls(table.num_rows, field.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)
