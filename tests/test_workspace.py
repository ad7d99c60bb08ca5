"""The base layer: manifest, atomic writes, resumable stages, stale detection, SQL views."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import build_workspace, encode, synthetic_image
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import images
from audit.errors import AuditError
from audit.workspace import (
    Output,
    Workspace,
    atomic_path,
    atomic_write_npy,
    atomic_write_parquet,
    sha256_file,
)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-written")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_open_rejects_non_workspace_and_non_empty_folder(tmp_path):
    with pytest.raises(AuditError, match="not an audit workspace"):
        Workspace.open(tmp_path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(AuditError, match="not empty"):
        Workspace.create(tmp_path)


def test_stage_resumes_only_with_same_params_and_upstream(tmp_path, make_workspace):
    ws = make_workspace([encode(synthetic_image(i)) for i in range(6)], rows_per_part=2)
    run = ws.start_stage("toy", {"k": 1}, depends_on=["ingest"])
    atomic_write_npy(ws.path("toy/00000.npy"), np.arange(2))
    run.record_part(0, [Output("toy/00000.npy", rows=2, row_offset=0)])
    # Same parameters: part 0 is kept.
    again = Workspace.open(ws.root).start_stage("toy", {"k": 1}, depends_on=["ingest"])
    assert again.is_done(0) and not again.is_done(1)
    # A truncated output is not done.
    ws.path("toy/00000.npy").write_bytes(b"xx")
    assert (
        not Workspace.open(ws.root).start_stage("toy", {"k": 1}, depends_on=["ingest"]).is_done(0)
    )
    # Different parameters start afresh.
    assert (
        not Workspace.open(ws.root).start_stage("toy", {"k": 2}, depends_on=["ingest"]).is_done(0)
    )


def test_downstream_stage_goes_stale_when_upstream_changes(make_workspace):
    ws = make_workspace([encode(synthetic_image(i)) for i in range(3)])
    run = ws.start_stage("toy", {}, depends_on=["ingest"])
    atomic_write_npy(ws.path("toy/all.npy"), np.zeros(3))
    run.finish({"rows": 3}, [Output("toy/all.npy", rows=3, row_offset=0)])
    assert ws.status()["toy"]["status"] == "done"
    # Re-run ingest with different parameters: its fingerprint changes.
    ing = ws.start_stage("ingest", {"sources": ["other"]})
    part = ws.metadata_parts()
    assert part == []  # new parameters discard the old parts record
    table = pa.table({"row_id": pa.array([0], pa.int64())})
    atomic_write_parquet(ws.path("metadata/part-00000.parquet"), table)
    ing.record_part(0, [Output("metadata/part-00000.parquet", rows=1, row_offset=0)])
    ing.finish({})
    st_ = Workspace.open(ws.root).status()
    assert st_["toy"]["status"] == "stale" and "ingest" in st_["toy"]["why"]


def test_status_verify_detects_changed_bytes(make_workspace):
    ws = make_workspace([encode(synthetic_image(0))])
    part = ws.metadata_parts()[0]
    assert ws.status(verify=True)["ingest"]["status"] == "done"
    p = ws.path(part.path)
    p.write_bytes(p.read_bytes() + b"\0")
    assert ws.status(verify=True)["ingest"]["status"] == "stale"
    assert sha256_file(p) != ws.stage("ingest")["parts"]["0"]["outputs"][0]["sha256"]


def test_start_stage_needs_upstream(make_workspace):
    ws = make_workspace([encode(synthetic_image(0))])
    with pytest.raises(AuditError, match="audit hash"):
        ws.start_stage("dedup", {}, depends_on=["hash"])


def test_manifest_is_valid_json_with_inputs_and_stages(make_workspace):
    ws = make_workspace([encode(synthetic_image(0))])
    manifest = json.loads(ws.path("manifest.json").read_text())
    assert manifest["schema_version"] == 1 and "ingest" in manifest["stages"]
    rec = manifest["stages"]["ingest"]["parts"]["0"]["outputs"][0]
    assert rec["sha256"] == sha256_file(ws.path(rec["path"]))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 30), per_part=st.integers(1, 8))
def test_parts_cover_row_ids_densely(tmp_path_factory, n, per_part):
    root = tmp_path_factory.mktemp("ws") / "ws"
    ws = build_workspace(root, [None] * n, rows_per_part=per_part)
    parts = ws.metadata_parts()
    assert [p.row_offset for p in parts] == list(range(0, n, per_part))
    ids = ws.connect().execute("SELECT list(row_id ORDER BY row_id) FROM metadata").fetchone()[0]
    assert ids == list(range(n))


def test_views_only_for_tables_present(make_workspace):
    ws = make_workspace([encode(synthetic_image(0))])
    views = {
        r[0]
        for r in ws.connect()
        .execute("SELECT view_name FROM duckdb_views() WHERE NOT internal")
        .fetchall()
    }
    assert views == {"metadata"}


def test_decode_refuses_bombs_and_garbage():
    from PIL import Image

    big = encode(Image.new("L", (3000, 3000)))
    with pytest.raises(images.ImageProblem) as e:
        images.decode(big, max_pixels=1_000_000)
    assert e.value.reason == "decompression_bomb"
    with pytest.raises(images.ImageProblem) as e:
        images.decode(b"not an image at all")
    assert e.value.reason == "image_undecodable"
    good = encode(synthetic_image(1))
    with pytest.raises(images.ImageProblem) as e:
        images.decode(good[: len(good) // 2])
    assert e.value.reason == "image_undecodable"


def test_decode_composites_transparency_on_white():
    from PIL import Image

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert images.decode(encode(rgba)).getpixel((0, 0)) == (255, 255, 255)


def test_read_bytes_reports_truncation(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abcdef")
    assert images.read_bytes(str(f), 2, 3) == b"cde"
    with pytest.raises(images.ImageProblem) as e:
        images.read_bytes(str(f), 4, 10)
    assert e.value.reason == "image_truncated"
