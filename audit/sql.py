"""The workspace's SQL surface: `query` over its duckdb views, and `status` built on them.

    >>> from audit import sql
    >>> t = sql.query("indexes/demo", "SELECT image_status, count(*) AS n FROM metadata GROUP BY 1")  # doctest: +SKIP
    >>> print(sql.export(t, "csv"))                                                                # doctest: +SKIP

Views are those of `workspace.TABLES` whose files exist (metadata, errors, hashes, ...).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.workspace import TABLES, Workspace, atomic_path

FORMATS = ("table", "csv", "json", "parquet")


def _open(ws: Workspace | str | os.PathLike[str]) -> Workspace:
    return ws if isinstance(ws, Workspace) else Workspace.open(ws)


def views(con: Any) -> list[str]:
    """Names of the views a connection from `Workspace.connect` holds, in `TABLES` order."""
    present = {
        r[0]
        for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    }
    return [v for v in TABLES if v in present]


def query(ws: Workspace | str | os.PathLike[str], sql: str) -> Any:
    """Run one read-only `sql` statement (SELECT or WITH) over the workspace views; returns a
    pyarrow Table.

    The connection can read only the files the views read: once the views exist, external
    access is switched off and the configuration locked, so COPY, ATTACH, INSTALL, LOAD,
    SET and file functions (`read_text`, `glob`, ...) on other paths are refused.

    Example: `query("indexes/demo", "SELECT reason, count(*) FROM errors GROUP BY 1")`.
    """
    import duckdb

    ws = _open(ws)
    con = ws.connect()
    try:
        statement = _one_select(sql)
        _lock_down(con, ws)
        return con.sql(statement).to_arrow_table()
    except duckdb.PermissionException as e:
        raise AuditError(
            f"refused: audit query reads only the workspace's own tables ({_first_line(e)})."
        ) from e
    except duckdb.Error as e:
        available = (
            ", ".join(f"{v} ({TABLES[v][1]})" for v in views(con))
            or "none (run audit ingest first)"
        )
        raise AuditError(f"SQL failed: {e}\nViews in {ws.root}: {available}") from e
    finally:
        con.close()


def check_output(ws: Workspace | str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """Refuse an `--output` inside the workspace: its files belong to the stages that wrote
    them, and replacing one would make `audit status` say done over a file it did not write."""
    ws = _open(ws)
    if not ws.remote and Path(output).resolve().is_relative_to(ws.root.resolve()):
        raise AuditError(
            f"refused: {output} is inside the workspace {ws.root}, whose files the stages own. "
            "Write the result somewhere else."
        )


def _one_select(sql: str) -> str:
    """`sql` if it is exactly one SELECT (or WITH ... SELECT) statement, by duckdb's own parser."""
    import duckdb

    statements = duckdb.extract_statements(sql)  # a syntax error is a duckdb.Error
    if len(statements) != 1:
        raise AuditError(f"audit query runs exactly one SELECT statement; got {len(statements)}.")
    if statements[0].type != duckdb.StatementType.SELECT:
        word = (statements[0].query.split() or ["?"])[0].upper()
        raise AuditError(
            f"refused: audit query is read-only and runs only SELECT/WITH, not {word}."
        )
    return sql


def _lock_down(con: Any, ws: Workspace) -> None:
    """Allow only the files the views were built on, then lock the configuration."""
    files = sorted({str(f) for pattern, _ in TABLES.values() for f in ws.recorded_files(pattern)})
    con.execute("SET allowed_paths = ?", [files])
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def export(
    table: Any,
    format: str = "table",
    output: str | os.PathLike[str] | None = None,
    max_rows: int = 200,
    max_width: int = 60,
) -> str | None:
    """`table` as text in `format` (table, csv, json), or written to `output` (returns None).

    `table` shows at most `max_rows` rows with cells cut at `max_width` characters; csv and
    json hold every row. `parquet` needs `output`.
    """
    if format not in FORMATS:
        raise AuditError(f"unknown format '{format}'. Use one of: {', '.join(FORMATS)}.")
    if format == "parquet":
        if output is None:
            raise AuditError("--format parquet writes a binary file: add --output FILE.parquet.")
        import pyarrow.parquet as pq

        with atomic_path(output) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return None
    if format == "table":
        text = _rich_table(table, max_rows, max_width)
    elif format == "csv":
        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(_flat(table), buf)
        text = buf.getvalue().decode("utf-8")
    else:
        text = json.dumps(table.to_pylist(), ensure_ascii=False, default=str, indent=1) + "\n"
    if output is None:
        return text
    with atomic_path(output) as tmp:
        tmp.write_text(text, "utf-8")
    return None


def _flat(table: Any) -> Any:
    """Nested columns (lists, structs, maps) as JSON text, which csv can hold."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_nested(f.type):
            values = [
                None if v is None else json.dumps(v, default=str)
                for v in table.column(i).to_pylist()
            ]
            table = table.set_column(i, f.name, pa.array(values, pa.string()))
    return table


def _rich_table(table: Any, max_rows: int, max_width: int) -> str:
    from rich.console import Console
    from rich.table import Table

    out = Table(show_lines=False)
    for name in table.column_names:
        out.add_column(name, overflow="ellipsis", max_width=max_width)
    for row in table.slice(0, max_rows).to_pylist():
        out.add_row(*(_cell(v, max_width) for v in row.values()))
    buf = io.StringIO()
    Console(file=buf, width=max(80, shutil.get_terminal_size().columns), color_system=None).print(
        out
    )
    more = table.num_rows - max_rows
    note = f"... {more} more rows (use --format csv or LIMIT)\n" if more > 0 else ""
    return buf.getvalue() + note + f"{table.num_rows} row(s)\n"


def _cell(v: Any, max_width: int) -> str:
    if v is None:
        return "NULL"
    text = (
        v
        if isinstance(v, str)
        else json.dumps(v, default=str)
        if isinstance(v, (dict, list))
        else str(v)
    )
    text = text.replace("\n", " ")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


def status(ws: Workspace | str | os.PathLike[str], verify: bool = False) -> dict[str, Any]:
    """Rows, images, parts, inputs, each stage's state (done / stale / running, and why) and
    error counts by stage and reason. `verify` re-hashes every output (slow on big workspaces).

    Example: `status("indexes/demo")["stages"]["ingest"]["status"]` -> "done".
    """
    import duckdb

    ws = _open(ws)
    parts = ws.metadata_parts()
    stages = ws.status(verify=verify)
    try:
        con = ws.connect()
    except AuditError:
        _name_damaged(ws, stages)
        raise
    present = views(con)
    images = {"ok": 0, "missing": 0, "error": 0}
    errors: list[dict[str, Any]] = []
    # the recorded parts only; a missing one shows as a stale ingest below
    files = [str(ws.path(p.path)) for p in parts if ws.path(p.path).exists()]
    try:
        if files:
            for state, n in con.execute(
                "SELECT image_status, count(*) FROM read_parquet(?, union_by_name=true) GROUP BY 1",
                [files],
            ).fetchall():
                images[str(state)] = int(n)
        if "errors" in present:
            errors = [
                {"stage": s, "reason": r, "count": int(n)}
                for s, r, n in con.execute(
                    "SELECT stage, reason, count(*) FROM errors GROUP BY ALL ORDER BY 1, 3 DESC, 2"
                ).fetchall()
            ]
    except duckdb.Error as e:
        _name_damaged(ws, stages)
        raise AuditError(
            f"cannot read the tables of {ws.root} ({_first_line(e)}). "
            "Re-run the stage that wrote the damaged file (audit status --verify names it)."
        ) from e
    finally:
        con.close()
    return {
        "workspace": str(ws.root),
        "dataset": ws.dataset,
        "rows": sum(p.rows for p in parts),
        "parts": len(parts),
        "images": images,
        "inputs": [
            {k: i.get(k) for k in ("path", "kind", "rows", "images")}
            for i in ws.manifest.get("inputs", [])
        ],
        "stages": stages,
        "errors": errors,
    }


def _name_damaged(ws: Workspace, stages: dict[str, dict[str, Any]]) -> None:
    """Raise an AuditError naming the files `--verify` found changed, if it found any."""
    bad = [f"{name}: {st['why']}" for name, st in stages.items() if "on disk" in st.get("why", "")]
    if bad:
        raise AuditError(
            f"{ws.root} has damaged files ({'; '.join(bad)}). Re-run the stage that wrote them."
        )


def status_text(info: dict[str, Any]) -> str:
    """`status` as lines for a terminal."""
    img = info["images"]
    lines = [
        f"workspace {info['workspace']} (dataset {info['dataset']})",
        f"rows      {info['rows']:,} in {info['parts']} part(s) from {len(info['inputs'])} input(s)",
        "images    " + ", ".join(f"{n:,} {s}" for s, n in img.items()),
        "inputs",
    ]
    for i in info["inputs"]:
        rows = "?" if i.get("rows") is None else f"{i['rows']:,}"
        extra = f" + {Path(i['images']).name}" if i.get("images") else ""
        lines.append(f"  {i['kind']:<10} {rows:>10} rows  {i['path']}{extra}")
    lines.append("stages")
    for name, st in info["stages"].items():
        why = f"  ({st['why']})" if st.get("why") else ""
        lines.append(f"  {name:<12} {st['status']:<8} {st.get('finished') or ''}{why}")
    lines.append("errors" if info["errors"] else "errors    none")
    for e in info["errors"]:
        lines.append(f"  {e['stage']:<12} {e['reason']:<22} {e['count']:>10,}")
    return "\n".join(lines) + "\n"
