"""The consent stage's files: per-part signals, decisions and coverage, their counts, the merge.

`decide.evaluate_part` makes the rows; this module writes them (atomically, one file per part
and kind, the resume record), counts them for the stage summary and concatenates the parts into
`optout/signals.parquet`, `optout/decisions.parquet` and `optout/coverage.parquet`.
"""

from __future__ import annotations

from typing import Any

from audit.optouts.signals import SOURCES


def _schemas() -> tuple[Any, Any, Any]:
    import pyarrow as pa

    s = pa.string()
    signals = pa.schema(
        [
            ("row_id", pa.int64()),
            ("signal", s),
            ("state", s),
            ("use", s),
            ("location", s),
            ("evidence", s),
            ("agent", s),
        ]
    )
    decisions = pa.schema(
        [
            ("row_id", pa.int64()),
            ("use", s),
            ("decision", s),
            ("signal", s),
            ("location", s),
            ("evidence", s),
            ("agent", s),
        ]
    )
    cover = pa.schema(
        [("row_id", pa.int64()), *((src, s) for src in SOURCES), ("not_evaluated", s)]
    )
    return signals, decisions, cover


_NAMES = ("signals", "decisions", "coverage")


def write_part(
    ws: Any,
    part: Any,
    sig_rows: list[dict],
    dec_rows: list[dict],
    err_rows: list[dict],
    cov_rows: list[dict],
) -> list[Any]:
    """Write one part's signals, decisions, coverage and errors atomically; returns the `Output`s."""
    import pyarrow as pa

    from audit.schema import error_table
    from audit.workspace import Output, atomic_write_parquet

    outputs = []
    for name, rows, schema in zip(_NAMES, (sig_rows, dec_rows, cov_rows), _schemas(), strict=True):
        rel = f"optout/parts/{name}-{part.stem}.parquet"
        atomic_write_parquet(ws.path(rel), pa.Table.from_pylist(rows, schema=schema))
        outputs.append(Output(rel, rows=len(rows), row_offset=part.row_offset))
    if err_rows:
        rel = f"errors/optout-{part.stem}.parquet"
        atomic_write_parquet(ws.path(rel), error_table(err_rows))
        outputs.append(Output(rel, rows=len(err_rows), row_offset=part.row_offset))
    return outputs


def part_counts(
    sig_rows: list[dict], dec_rows: list[dict], err_rows: list[dict], cov_rows: list[dict]
) -> dict[str, Any]:
    """Counts for the summary: decisions per use and state; rows per signal and state; coverage
    per source and state; errors."""
    decisions: dict[str, dict[str, int]] = {}
    for d in dec_rows:
        per = decisions.setdefault(d["use"], {})
        per[d["decision"]] = per.get(d["decision"], 0) + 1
    signals: dict[str, dict[str, int]] = {}
    for _row, signal, state in {(r["row_id"], r["signal"], r["state"]) for r in sig_rows}:
        per = signals.setdefault(signal, {})
        per[state] = per.get(state, 0) + 1
    cover: dict[str, dict[str, int]] = {}
    notes: dict[str, dict[str, str]] = {}  # source -> state -> the first reason seen
    for r in cov_rows:
        for src in SOURCES:
            per = cover.setdefault(src, {})
            per[r[src]] = per.get(r[src], 0) + 1
            state, why = r.get("_why", {}).get(src, (r[src], ""))
            if state != "evaluated" and why:
                notes.setdefault(src, {}).setdefault(state, why[:200])
    errors: dict[str, int] = {}
    for e in err_rows:
        errors[e["reason"]] = errors.get(e["reason"], 0) + 1
    return {
        "decisions": decisions,
        "signals": signals,
        "coverage": cover,
        "coverage_notes": notes,
        "errors": errors,
    }


def merge_parts(ws: Any, parts: list[Any]) -> list[tuple[str, int]]:
    """Concatenate the part files into `optout/{signals,decisions,coverage}.parquet`."""
    import pyarrow.parquet as pq

    from audit.workspace import atomic_path, open_file

    merged = []
    for name, schema in zip(_NAMES, _schemas(), strict=True):
        rel, rows = f"optout/{name}.parquet", 0
        with atomic_path(ws.path(rel)) as tmp:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for part in parts:
                    with open_file(ws.path(f"optout/parts/{name}-{part.stem}.parquet")) as f:
                        table = pq.read_table(f)
                    writer.write_table(table.cast(schema))
                    rows += table.num_rows
        merged.append((rel, rows))
    return merged


def matched_rules(ws: Any) -> set[str]:
    """The registry rules (their "file line N" locations) that reserved at least one row,
    read back from the merged `optout/signals.parquet` (so a resumed run counts every part)."""
    path = str(ws.path("optout/signals.parquet")).replace("'", "''")
    rows = ws.duckdb().execute(
        f"SELECT DISTINCT location FROM read_parquet('{path}') "
        "WHERE signal LIKE 'registry-%' AND state = 'reserved'"
    )
    return {r[0] for r in rows.fetchall()}
