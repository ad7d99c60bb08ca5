"""A workspace moved to another folder (another machine, a shared mount) still reads: the
manifest holds no path of where it was, its stages stay done, and they resume instead of
starting again. Inputs stay where they are (on a cluster: the same shared mount)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audit import hashes, metadata, optouts, pipeline, sql
from audit.checks import duplicates
from audit.workspace import Workspace, atomic_write_json

SAMPLE = pipeline.sample_dir()
pytestmark = pytest.mark.skipif(not (SAMPLE / "shards").is_dir(), reason="bundled sample not built")


def test_a_moved_workspace_still_reads_and_resumes(tmp_path: Path):
    old = tmp_path / "here" / "ws"
    metadata.ingest(old, [SAMPLE / "shards"], rows_per_part=100)
    hashes.compute(old, workers=1)
    optouts.compute(old, registry=sorted((SAMPLE / "optout").glob("registry-*")))
    optouts.filter_dataset(old, out=old / "consented.parquet")

    new = tmp_path / "there" / "moved"
    new.parent.mkdir()
    shutil.move(old, new)
    assert str(old) not in (new / "manifest.json").read_text("utf-8")

    ws = Workspace.open(new)
    state = ws.status(verify=True)
    assert {k: v["status"] for k, v in state.items()} == {
        "ingest": "done",
        "hash": "done",
        "optout": "done",
        "filter": "done",
    }
    assert ws.stage("filter")["params"]["out"] == "consented.parquet"
    assert sql.query(new, "SELECT count(*) AS n FROM hashes").to_pylist() == [{"n": 300}]
    assert hashes.compute(new, workers=1)["resumed_parts"] == 3  # nothing hashed again
    assert duplicates.find(new)["rows"] == 300  # a downstream stage reads the moved files


def _copy_sample(folder: Path) -> Path:
    """The sample's webdataset shards, copied to `folder/shards` (an input that can move)."""
    shards = folder / "shards"
    shutil.copytree(SAMPLE / "shards", shards)
    return shards


def _stored_locations(ws_root: Path) -> set[str]:
    import pyarrow.parquet as pq

    values: set[str] = set()
    for part in Workspace.open(ws_root).metadata_parts():
        t = pq.read_table(ws_root / part.path, columns=["image_path", "source_file"])
        values |= {v for c in t.columns for v in c.to_pylist() if v is not None}
    return values


def test_a_workspace_moved_with_its_images_hashes_embeds_and_matches(tmp_path: Path):
    from audit import embeddings
    from audit.images import decode, read_bytes

    here = tmp_path / "here"
    metadata.ingest(here / "ws", [_copy_sample(here)], rows_per_part=100)
    # parts name images relative to the input root, recorded once in the manifest
    assert _stored_locations(here / "ws") == {"@shards/00000.tar", "@shards/00000.parquet"}
    assert Workspace.open(here / "ws").manifest["roots"]["shards"]["path"] == "../shards"

    there = tmp_path / "elsewhere" / "there"
    there.parent.mkdir()
    shutil.move(here, there)  # the workspace and its images together; nothing is left behind
    assert not here.exists()
    ws = Workspace.open(there / "ws")
    assert ws.roots()["shards"]["found"] == str(there / "shards")
    hashed = hashes.compute(there / "ws", workers=1)
    assert (hashed["hashed"], hashed["errors"]) == (300, 0)
    embedded = embeddings.compute(there / "ws", model="tiny", pretrained="none", workers=0)
    assert embedded["errors"] == 0
    # the views show where the images are now
    (path,) = {
        r["image_path"]
        for r in sql.query(there / "ws", "SELECT DISTINCT image_path FROM metadata").to_pylist()
    }
    assert path == str(there / "shards" / "00000.tar")

    # a generated image that copies training row 40 is found after the move
    row = sql.query(
        there / "ws",
        "SELECT image_path, image_offset, image_size FROM metadata WHERE row_id = 40",
    ).to_pylist()[0]
    generated = tmp_path / "generated"
    generated.mkdir()
    image = decode(read_bytes(row["image_path"], row["image_offset"], row["image_size"]))
    image.save(generated / "copy-40.png")
    pipeline.match(
        generated, against=there / "ws", name="moved", workers=1, report_dir=tmp_path / "reports"
    )
    import pyarrow.parquet as pq

    matches = pq.read_table(there / "ws" / "memorisation/moved/matches.parquet").to_pylist()
    assert [(m["train_row_id"], m["verdict"]) for m in matches] == [(40, "copy")]


def test_inputs_mounted_elsewhere_are_pointed_to_with_audit_roots(tmp_path: Path):
    from click.testing import CliRunner

    from audit.cli import cli
    from audit.errors import AuditError

    shards = _copy_sample(tmp_path / "data")
    metadata.ingest(tmp_path / "a" / "ws", [shards], rows_per_part=150)
    # the workspace and its inputs end up in unrelated places (another machine's mounts)
    ws_root, moved = tmp_path / "b" / "c" / "ws", tmp_path / "mnt" / "laion"
    ws_root.parent.mkdir(parents=True)
    moved.parent.mkdir()
    shutil.move(tmp_path / "a" / "ws", ws_root)
    shutil.move(shards, moved)
    with pytest.raises(AuditError, match=r"audit roots .* shards NEW_PATH"):
        hashes.compute(ws_root, workers=1)
    listed = CliRunner().invoke(cli, ["roots", str(ws_root)])
    assert listed.exit_code == 0 and "shards  NOT FOUND" in listed.output

    result = CliRunner().invoke(cli, ["roots", str(ws_root), "shards", str(moved)])
    assert result.exit_code == 0, result.output
    assert f"shards  {moved}" in result.output
    assert hashes.compute(ws_root, workers=1)["errors"] == 0
    bad = CliRunner().invoke(cli, ["roots", str(ws_root), "nope", str(moved)])
    assert bad.exit_code == 1 and "no input root 'nope'" in bad.output


def test_an_older_workspace_with_absolute_image_paths_still_reads(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = _copy_sample(tmp_path)
    metadata.ingest(tmp_path / "ws", [shards], rows_per_part=300)
    ws = Workspace.open(tmp_path / "ws")
    # what ingest wrote before input roots: absolute paths and no `roots` in the manifest
    (part,) = ws.metadata_parts()
    table = pq.read_table(ws.path(part.path))
    absolute = pa.array([str(shards / "00000.tar")] * table.num_rows, pa.string())
    table = table.set_column(table.schema.get_field_index("image_path"), "image_path", absolute)
    pq.write_table(table, ws.path(part.path))
    ws.manifest.pop("roots")
    atomic_write_json(ws.path("manifest.json"), ws.manifest)
    assert "roots" not in Workspace.open(tmp_path / "ws").manifest

    assert hashes.compute(tmp_path / "ws", workers=1)["errors"] == 0
    rows = sql.query(tmp_path / "ws", "SELECT DISTINCT image_path FROM metadata").to_pylist()
    assert rows == [{"image_path": str(shards / "00000.tar")}]


def test_image_bytes_copied_into_the_workspace_move_with_it(tmp_path: Path):
    """img2dataset parquet output carries its images: ingest copies them to images/*.bin,
    which the parts name relative to the workspace."""
    i2d = Path(__file__).parent / "data" / "interop" / "img2dataset" / "parquet"
    metadata.ingest(tmp_path / "a" / "ws", [i2d])
    stored = _stored_locations(tmp_path / "a" / "ws")
    assert "images/part-00000.bin" in stored and not any(v.startswith("/") for v in stored)
    (tmp_path / "b").mkdir()
    shutil.move(tmp_path / "a" / "ws", tmp_path / "b" / "ws")
    s = hashes.compute(tmp_path / "b" / "ws", workers=1)
    assert (s["hashed"], s["errors"]) == (8, 1)  # 8 images; img2dataset's recorded 404 has none
