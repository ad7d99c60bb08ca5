"""Ingest resumes after a failure (injected, and kill -9), and row_ids stay dense and aligned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import encode, synthetic_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit import metadata
from audit.workspace import Workspace


def snapshot(ws_root: Path) -> tuple[list[dict], list[dict], list[tuple[int, int]]]:
    """Every metadata row, every ingest error row, and the (rows, row_offset) of each part."""
    ws = Workspace.open(ws_root)
    parts = ws.metadata_parts()
    rows = [r for p in parts for r in pq.read_table(ws.path(p.path)).to_pylist()]
    errors = [
        r
        for f in sorted(ws.root.glob("errors/ingest-*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    return rows, errors, [(p.rows, p.row_offset) for p in parts]


def image_folder(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        data = encode(synthetic_image(i, 32), "PNG") if i % 11 else b"broken bytes"
        (root / f"img{i:04d}.png").write_bytes(data)
        (root / f"img{i:04d}.txt").write_text(f"caption {i}")
    return root


def test_injected_failure_then_rerun_equals_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = image_folder(tmp_path / "pics", 30)
    meta = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"url": [f"u{i}" for i in range(9)], "caption": [f"c{i}" for i in range(9)]}), meta
    )
    sources = [meta, folder]
    metadata.ingest(tmp_path / "full", sources, rows_per_part=4)

    calls = {"n": 0}
    real_write = metadata._PartWriter._write

    def failing_write(self, number, name):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("injected crash")
        return real_write(self, number, name)

    monkeypatch.setattr(metadata._PartWriter, "_write", failing_write)
    with pytest.raises(RuntimeError, match="injected"):
        metadata.ingest(tmp_path / "ws", sources, rows_per_part=4)
    assert Workspace.open(tmp_path / "ws").status()["ingest"]["status"] == "running"
    monkeypatch.setattr(metadata._PartWriter, "_write", real_write)

    s = metadata.ingest(tmp_path / "ws", sources, rows_per_part=4)
    assert s["resumed_parts"] == 4 and s["parts"] == 3 + 8
    assert snapshot(tmp_path / "ws") == snapshot(tmp_path / "full")
    full = Workspace.open(tmp_path / "full").stage("ingest")["summary"]
    assert {k: v for k, v in s.items() if k not in ("seconds", "resumed_parts")} == {
        k: v for k, v in full.items() if k not in ("seconds", "resumed_parts")
    }


def test_rerun_of_finished_ingest_writes_nothing_and_new_sources_start_afresh(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"url": ["x"] * 5, "caption": ["y"] * 5}), a)
    pq.write_table(pa.table({"url": ["z"] * 2, "caption": ["w"] * 2, "key": ["k", "k"]}), b)
    metadata.ingest(tmp_path / "ws", [a], rows_per_part=2)
    part0 = tmp_path / "ws" / "metadata" / "part-00000.parquet"
    mtime = part0.stat().st_mtime_ns
    s = metadata.ingest(tmp_path / "ws", [a], rows_per_part=2)
    assert s["resumed_parts"] == 3 and part0.stat().st_mtime_ns == mtime
    s = metadata.ingest(tmp_path / "ws", [b], rows_per_part=2)
    assert s["rows"] == 2 and s["resumed_parts"] == 0
    assert sorted(p.name for p in (tmp_path / "ws" / "metadata").iterdir()) == [
        "part-00000.parquet"
    ]
    rows, errors, _ = snapshot(tmp_path / "ws")
    assert [r["url"] for r in rows] == ["z", "z"] and [e["reason"] for e in errors] == [
        "duplicate_key"
    ]


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "pics", 300)
    metadata.ingest(tmp_path / "full", [folder], rows_per_part=10)
    env = {**os.environ, "AUDIT_NO_PROGRESS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "audit",
        "ingest",
        str(tmp_path / "ws"),
        str(folder),
        "--rows-per-part",
        "10",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "ws" / "manifest.json"
    deadline = time.monotonic() + 120
    parts = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            parts = len(json.loads(manifest.read_text())["stages"]["ingest"]["parts"])
        except (OSError, ValueError, KeyError):
            parts = 0
        if parts >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "ingest finished before it could be killed; make the input bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads(manifest.read_text())["stages"]["ingest"]["parts"])
    assert 3 <= done_before < 30
    s = metadata.ingest(tmp_path / "ws", [folder], rows_per_part=10)
    assert s["resumed_parts"] >= done_before - 1  # the manifest may lag one part behind the files
    assert snapshot(tmp_path / "ws") == snapshot(tmp_path / "full")
    assert not list((tmp_path / "ws").rglob(".tmp-*"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(0, 23), min_size=1, max_size=4), rows_per_part=st.integers(1, 9))
def test_row_ids_dense_and_aligned_with_sources(sizes: list[int], rows_per_part: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = []
        for f, n in enumerate(sizes):
            path = root / f"src{f}.parquet"
            # caption plants the (file, row) each record came from
            pq.write_table(
                pa.table(
                    {
                        "url": pa.array([f"u{i}" for i in range(n)], pa.string()),
                        "caption": pa.array([f"{f}:{i}" for i in range(n)], pa.string()),
                    }
                ),
                path,
                row_group_size=7,
            )
            files.append(path)
        s = metadata.ingest(root / "ws", files, rows_per_part=rows_per_part)
        ws = Workspace.open(root / "ws")
        expected = [(ws.store(files[f]), i) for f, n in enumerate(sizes) for i in range(n)]
        seen = []
        offset = 0
        for part in ws.metadata_parts():
            t = pq.read_table(ws.path(part.path)).to_pylist()
            assert 1 <= part.rows == len(t) <= rows_per_part and part.row_offset == offset
            assert len({r["source_file"] for r in t}) == 1
            assert [r["row_id"] for r in t] == list(range(offset, offset + part.rows))
            for r in t:
                f = files.index(Path(ws.locate(r["source_file"]) or ""))
                assert r["caption"] == f"{f}:{r['source_row']}"
                seen.append((r["source_file"], r["source_row"]))
            offset += part.rows
        assert seen == expected and s["rows"] == len(expected)
        assert s["parts"] == sum(-(-n // rows_per_part) for n in sizes)
