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


def _strings(value, out: list[str]) -> list[str]:
    """Every string in a JSON-like value."""
    if isinstance(value, dict):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)
    elif isinstance(value, str):
        out.append(value)
    return out


def _parquet_strings(ws_root: Path) -> list[str]:
    """Every value of every string column of every parquet file under `ws_root`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values: list[str] = []
    for f in ws_root.rglob("*.parquet"):
        t = pq.read_table(f)
        for col in t.columns:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                values += [v for v in col.to_pylist() if v is not None]
    return values


def test_a_workspace_moved_with_its_neighbours_records_no_old_path(tmp_path: Path):
    """Registries, crawl cache and generated images beside the workspace move with it:
    every path to them is recorded relative to the workspace and still resolves."""
    import json

    import pyarrow.parquet as pq

    from audit import embeddings
    from audit.reports import memorisation as report

    here = tmp_path / "here"
    shards = _copy_sample(here)
    shutil.copytree(SAMPLE / "optout", here / "optout")
    registry = sorted((here / "optout").glob("registry-*"))
    ws_root = here / "ws"
    metadata.ingest(ws_root, [shards], rows_per_part=150)
    embeddings.compute(ws_root, model="tiny", pretrained="none", workers=0)
    hashes.compute(ws_root, workers=1)
    optouts.compute(ws_root, registry=registry, cache=here / "optout" / "cache")
    optouts.filter_dataset(ws_root, out=ws_root / "consented.parquet")
    generated = here / "generated"
    generated.mkdir()
    row = sql.query(
        ws_root, "SELECT image_path, image_offset, image_size FROM metadata WHERE row_id = 7"
    ).to_pylist()[0]
    from audit.images import decode, read_bytes

    decode(read_bytes(row["image_path"], row["image_offset"], row["image_size"])).save(
        generated / "copy-7.png"
    )
    pipeline.match(generated, against=ws_root, name="g", workers=1, report_dir=tmp_path / "r1")
    ws = Workspace.open(ws_root)
    params = ws.stage("optout")["params"]
    assert [r["path"] for r in params["registries"]] == [f"../optout/{p.name}" for p in registry]
    assert params["cache"]["path"] == "../optout/cache"
    assert ws.stage("match-g")["params"]["generated"] == "../generated"

    there = tmp_path / "elsewhere" / "there"
    there.parent.mkdir()
    shutil.move(here, there)  # the workspace and its neighbours together
    new = there / "ws"
    ws = Workspace.open(new)
    manifest = json.loads((new / "manifest.json").read_text("utf-8"))
    fallbacks = {r.pop("absolute") for r in manifest["roots"].values()}
    assert fallbacks == {str(here / "shards")}  # the one absolute path, kept by design
    found = (
        _strings(manifest, [])
        + _parquet_strings(new)
        + _strings(json.loads((new / "consented.removed.json").read_text()), [])
        + _strings(json.loads((new / "memorisation/g/summary.json").read_text()), [])
    )
    assert len(found) > 1000 and not [s for s in found if str(here) in s or str(tmp_path) in s]

    # everything still resolves, to the moved files
    params = ws.stage("optout")["params"]
    assert [ws.locate(r["path"]) for r in params["registries"]] == [
        str(there / "optout" / p.name) for p in registry
    ]
    assert ws.locate(params["cache"]["path"]) == str(there / "optout" / "cache")
    assert ws.locate(ws.stage("match-g")["params"]["generated"]) == str(there / "generated")
    (match,) = pq.read_table(new / "memorisation/g/matches.parquet").to_pylist()
    assert match["generated_file"] == "../generated/copy-7.png" and match["verdict"] == "copy"
    assert Path(ws.locate(match["generated_file"])).is_file()
    locations = {
        r["location"].rsplit(" ", 2)[0]  # "../optout/registry-urls.csv row 5"
        for r in sql.query(
            new, "SELECT DISTINCT location FROM optout WHERE signal LIKE 'registry%'"
        ).to_pylist()
    }
    assert locations == {f"../optout/{p.name}" for p in registry}
    assert all(Path(ws.locate(loc)).is_file() for loc in locations)
    assert {k: v["status"] for k, v in ws.status(verify=True).items()} == dict.fromkeys(
        ws.manifest["stages"], "done"
    )
    # the moved registries given again: the same parameters, so the stage stays done
    started = ws.stage("optout")["started"]
    optouts.compute(
        new,
        registry=sorted((there / "optout").glob("registry-*")),
        cache=there / "optout" / "cache",
    )
    assert Workspace.open(new).stage("optout")["started"] == started
    # the page re-renders from the moved summary, from any folder
    page = report.write_match_page(new, "g", tmp_path / "r2")
    assert "copy" in page.read_text("utf-8")


def test_old_manifests_with_absolute_outside_paths_still_read(tmp_path: Path, monkeypatch):
    """What audit recorded before outside paths were relative: absolute registry and cache
    paths (parameters, summary, rule locations) and roots with only their absolute folder."""
    import json

    def old_relative(self, path):  # the rule before: inside relative, outside absolute
        full = Path(path).resolve()
        root = self.root.resolve()
        return full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)

    shards = _copy_sample(tmp_path / "data")
    shutil.copytree(SAMPLE / "optout", tmp_path / "data" / "optout")
    registry = sorted((tmp_path / "data" / "optout").glob("registry-*"))
    ws_root = tmp_path / "ws"
    metadata.ingest(ws_root, [shards], rows_per_part=300)
    with monkeypatch.context() as m:
        m.setattr(Workspace, "relative", old_relative)
        optouts.compute(ws_root, registry=registry, cache=tmp_path / "data" / "optout" / "cache")
    manifest = json.loads((ws_root / "manifest.json").read_text("utf-8"))
    for rec in manifest["roots"].values():
        rec.pop("path")  # a root recorded by its absolute folder only
    atomic_write_json(ws_root / "manifest.json", manifest)
    old = Workspace.open(ws_root)
    assert old.stage("optout")["params"]["registries"][0]["path"] == str(registry[0])

    assert old.roots()["shards"]["found"] == str(shards)  # found through its fallback
    assert {v["status"] for v in old.status(verify=True).values()} == {"done"}
    assert old.locate(str(registry[0])) == str(registry[0])  # absolute: as it is
    locations = sql.query(
        ws_root, "SELECT DISTINCT location FROM optout WHERE signal LIKE 'registry%'"
    ).to_pylist()
    assert locations and all(r["location"].startswith(str(tmp_path)) for r in locations)
    # the stages after it read the old record; hashing reads images through the fallback
    assert optouts.filter_dataset(ws_root, out=ws_root / "kept.parquet")["kept"] > 0
    assert hashes.compute(ws_root, workers=1)["errors"] == 0
    # given again, the registries are recorded the new way (the stage runs again, once)
    optouts.compute(ws_root, registry=registry, cache=tmp_path / "data" / "optout" / "cache")
    params = Workspace.open(ws_root).stage("optout")["params"]
    assert params["registries"][0]["path"] == f"../data/optout/{registry[0].name}"


def test_a_workspace_shipped_with_its_inputs_can_forget_this_machines_paths(tmp_path: Path):
    project = tmp_path / "project"
    shards = _copy_sample(project)
    ws_root = project / "work" / "ws"
    metadata.ingest(ws_root, [shards], rows_per_part=100)
    gone = tmp_path / "gone"  # a second root whose relative path will not hold
    gone.mkdir()
    ws = Workspace.open(ws_root)
    ws.set_roots({"gone": gone})
    ws.save()
    gone.rmdir()

    Workspace.open(ws_root).forget_absolute_roots()
    roots = Workspace.open(ws_root).manifest["roots"]
    assert "absolute" not in roots["shards"] and roots["shards"]["path"] == "../../shards"
    assert roots["gone"]["absolute"] == gone.resolve().as_posix()  # kept: its path is gone
    assert str(project) not in (ws_root / "manifest.json").read_text("utf-8")

    # moved together, the workspace and its inputs still read
    moved = tmp_path / "elsewhere"
    shutil.move(project, moved)
    assert sql.query(moved / "work" / "ws", "SELECT count(*) AS n FROM metadata").to_pylist() == [
        {"n": 300}
    ]
