"""`audit query` and `audit status`: the SQL surface over a workspace, library and CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import encode, synthetic_image

from audit import metadata, sql
from audit.cli import cli
from audit.errors import AuditError
from audit.workspace import Workspace


@pytest.fixture
def ws_root(tmp_path: Path) -> Path:
    """Ingested: 6 metadata-only rows (one WIDTH bad) + a folder of 3 images (one broken)."""
    meta = tmp_path / "laion.parquet"
    pq.write_table(
        pa.table(
            {
                "URL": [f"https://h{i % 2}.example/{i}.jpg" for i in range(6)],
                "TEXT": [f"caption {i}" for i in range(6)],
                "WIDTH": ["10", "abc", "30", "40", "50", "60"],
            }
        ),
        meta,
    )
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(2):
        (pics / f"p{i}.png").write_bytes(encode(synthetic_image(i), "PNG"))
    (pics / "p2.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    metadata.ingest(tmp_path / "ws", [meta, pics], rows_per_part=4)
    return tmp_path / "ws"


def test_query_returns_arrow_table(ws_root: Path) -> None:
    t = sql.query(ws_root, "SELECT image_status, count(*) AS n FROM metadata GROUP BY 1 ORDER BY 1")
    assert isinstance(t, pa.Table)
    assert t.to_pylist() == [
        {"image_status": "error", "n": 1},
        {"image_status": "missing", "n": 6},
        {"image_status": "ok", "n": 2},
    ]
    t = sql.query(
        ws_root, "SELECT m.row_id, e.reason FROM errors e JOIN metadata m USING (row_id) ORDER BY 1"
    )
    assert t.to_pylist() == [
        {"row_id": 1, "reason": "bad_value"},
        {"row_id": 8, "reason": "image_undecodable"},
    ]


def test_query_error_names_views(ws_root: Path) -> None:
    with pytest.raises(AuditError) as e:
        sql.query(ws_root, "SELECT * FROM hashes")
    assert "hashes" in str(e.value) and "Views in" in str(e.value) and "metadata (" in str(e.value)
    assert "errors (" in str(e.value)


def test_export_formats(ws_root: Path, tmp_path: Path) -> None:
    t = sql.query(
        ws_root, "SELECT row_id, caption, width FROM metadata WHERE row_id < 3 ORDER BY row_id"
    )
    rows = list(csv.DictReader(io.StringIO(sql.export(t, "csv"))))
    assert rows == [
        {"row_id": "0", "caption": "caption 0", "width": "10"},
        {"row_id": "1", "caption": "caption 1", "width": ""},
        {"row_id": "2", "caption": "caption 2", "width": "30"},
    ]
    assert json.loads(sql.export(t, "json")) == t.to_pylist()
    text = sql.export(t, "table", max_rows=2, max_width=8)
    assert "caption" in text and "1 more rows" in text and "3 row(s)" in text and "NULL" in text
    assert sql.export(t, "parquet", tmp_path / "out.parquet") is None
    assert pq.read_table(tmp_path / "out.parquet").equals(t)
    with pytest.raises(AuditError, match="--output"):
        sql.export(t, "parquet")


def test_status_counts_and_staleness(ws_root: Path) -> None:
    info = sql.status(ws_root)
    assert info["rows"] == 9 and info["parts"] == 3
    assert info["images"] == {"ok": 2, "missing": 6, "error": 1}
    assert [(i["kind"], i["rows"]) for i in info["inputs"]] == [("parquet", 6), ("folder", 3)]
    assert info["stages"]["ingest"]["status"] == "done"
    assert {(e["stage"], e["reason"], e["count"]) for e in info["errors"]} == {
        ("ingest", "bad_value", 1),
        ("ingest", "image_undecodable", 1),
    }
    # an output rewritten with other content: found only by --verify
    keys = ws_root / "errors" / "ingest-keys.parquet"
    pq.write_table(pa.table({"stage": pa.array([], pa.string())}), keys)
    assert sql.status(ws_root)["stages"]["ingest"]["status"] == "done"
    st = sql.status(ws_root, verify=True)["stages"]["ingest"]
    assert st["status"] == "stale" and "changed on disk" in st["why"]
    (ws_root / "metadata" / "part-00001.parquet").unlink()
    st = sql.status(ws_root)["stages"]["ingest"]
    assert st["status"] == "stale" and "part-00001.parquet is missing" in st["why"]


def test_cli_query_and_status(ws_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        cli, ["query", str(ws_root), "SELECT count(*) AS n FROM metadata", "--format", "csv"]
    )
    assert res.exit_code == 0 and res.output.splitlines() == ['"n"', "9"]
    res = runner.invoke(
        cli,
        ["query", str(ws_root), "SELECT reason FROM errors ORDER BY reason", "--format", "json"],
    )
    assert res.exit_code == 0 and json.loads(res.output) == [
        {"reason": "bad_value"},
        {"reason": "image_undecodable"},
    ]
    res = runner.invoke(cli, ["query", str(ws_root), "SELECT row_id, url FROM metadata LIMIT 2"])
    assert (
        res.exit_code == 0 and "https://h0.example/0.jpg" in res.output and "2 row(s)" in res.output
    )
    out = tmp_path / "q.parquet"
    res = runner.invoke(
        cli,
        [
            "query",
            str(ws_root),
            "SELECT * FROM metadata",
            "--format",
            "parquet",
            "--output",
            str(out),
        ],
    )
    assert res.exit_code == 0 and pq.read_table(out).num_rows == 9
    res = runner.invoke(
        cli, ["query", str(ws_root), "SELECT * FROM metadata", "--format", "parquet"]
    )
    assert res.exit_code == 1 and "--output" in res.output
    res = runner.invoke(cli, ["query", str(ws_root), "SELEC nonsense"])
    assert res.exit_code == 1 and "SQL failed" in res.output and "metadata" in res.output

    res = runner.invoke(cli, ["status", str(ws_root)])
    assert res.exit_code == 0, res.output
    assert (
        "rows      9 in 3 part(s) from 2 input(s)" in res.output
        and "ingest       done" in res.output
    )
    assert "image_undecodable" in res.output
    res = runner.invoke(cli, ["status", str(ws_root), "--json", "--verify"])
    assert res.exit_code == 0 and json.loads(res.output)["images"]["ok"] == 2
    res = runner.invoke(cli, ["status", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "not an audit workspace" in res.output


def test_status_of_workspace_without_rows(tmp_path: Path) -> None:
    Workspace.create(tmp_path / "empty")
    info = sql.status(tmp_path / "empty")
    assert info["rows"] == 0 and info["stages"] == {} and info["errors"] == []
