"""Ingest: column variants, image sources, and every kind of bad input (built in tmp dirs)."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import encode, synthetic_image

from audit import metadata
from audit.cli import cli
from audit.errors import AuditError
from audit.images import read_bytes
from audit.schema import METADATA
from audit.workspace import Workspace


# -- builders ------------------------------------------------------------------------------------
def rows_of(ws_root: Path) -> list[dict[str, Any]]:
    ws = Workspace.open(ws_root)
    tables = [ws.read_part(p) for p in ws.metadata_parts()]  # image_path located here
    return [r for t in tables for r in t.to_pylist()]


def errors_of(ws_root: Path) -> list[dict[str, Any]]:
    return [
        r
        for p in sorted(Path(ws_root, "errors").glob("ingest-*.parquet"))
        for r in pq.read_table(p).to_pylist()
    ]


def reasons(ws_root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in errors_of(ws_root):
        out[e["reason"]] = out.get(e["reason"], 0) + 1
    return out


def laion400m(path: Path, n: int = 5) -> pa.Table:
    t = pa.table(
        {
            "SAMPLE_ID": pa.array([1000 + i for i in range(n)], pa.int64()),
            "URL": [f"https://cdn{i % 3}.example.org/photos/{i}.jpg" for i in range(n)],
            "TEXT": [f"a photo of thing {i}" for i in range(n)],
            "HEIGHT": pa.array([float(200 + i) for i in range(n)]),
            "WIDTH": pa.array([float(300 + i) for i in range(n)]),
            "LICENSE": ["?"] * n,
            "NSFW": ["UNLIKELY"] * n,
            "similarity": pa.array([0.3 + i / 100 for i in range(n)], pa.float64()),
        }
    )
    pq.write_table(t, path)
    return t


def laion2b(path: Path, n: int = 5, **overrides: Any) -> pa.Table:
    cols: dict[str, Any] = {
        "URL": [f"https://img.example.com/{i}.png" for i in range(n)],
        "TEXT": [f"caption {i}" for i in range(n)],
        "WIDTH": pa.array([640 + i for i in range(n)], pa.int64()),
        "HEIGHT": pa.array([480] * n, pa.int64()),
        "similarity": [0.31] * n,
        "punsafe": pa.array([0.01] * n, pa.float64()),
        "pwatermark": [0.2] * n,
        "hash": pa.array([7 * i for i in range(n)], pa.int64()),
        "AESTHETIC_SCORE": [5.5] * n,
        "LANGUAGE": ["en"] * n,
        "crawl_id": [f"CC-{i}" for i in range(n)],
    }
    cols.update(overrides)
    t = pa.table(cols)
    pq.write_table(t, path)
    return t


def add_member(tf: tarfile.TarFile, name: str, data: bytes, **kw: Any) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    for k, v in kw.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data))


def img2dataset_shard(
    folder: Path, stem: str, samples: list[dict[str, Any]], as_files: bool = False
) -> None:
    """img2dataset output: `<stem>.parquet` plus `<stem>.tar` (or folder `<stem>/`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    files: list[tuple[str, bytes]] = []
    for s in samples:
        ok = s.get("image") is not None
        rows.append(
            {
                "key": s["key"],
                "url": f"https://site.example/{s['key']}.jpg",
                "caption": s["caption"],
                "width": 64,
                "height": 64,
                "original_width": 128,
                "original_height": 128,
                "status": "success" if ok else "failed_to_download",
                "error_message": None if ok else "HTTP 404",
                "sha256": s.get("sha256", hashlib.sha256(s["image"]).hexdigest() if ok else None),
                "exif": "{}",
            }
        )
        if ok and s.get("in_shard", True):
            files.append((f"{s['key']}.{s.get('ext', 'jpg')}", s["image"]))
            files.append((f"{s['key']}.txt", s["caption"].encode()))
            files.append(
                (
                    f"{s['key']}.json",
                    json.dumps({"key": s["key"], "caption": s["caption"]}).encode(),
                )
            )
    for extra in samples[0].get("orphans", []):
        files.append(extra)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{stem}.parquet")
    if as_files:
        (folder / stem).mkdir()
        for name, data in files:
            (folder / stem / name).write_bytes(data)
    else:
        with tarfile.open(folder / f"{stem}.tar", "w") as tf:
            for name, data in files:
                add_member(tf, name, data)


def jpeg(seed: int) -> bytes:
    return encode(synthetic_image(seed), "JPEG", quality=90)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# -- column variants ---------------------------------------------------------------------------------
def test_laion400m_columns_map_and_cast(tmp_path: Path) -> None:
    src = tmp_path / "laion400m.parquet"
    laion400m(src, 5)
    s = metadata.ingest(tmp_path / "ws", [src])
    rows = rows_of(tmp_path / "ws")
    assert (
        s["rows"] == 5 and s["errors"] == {} and s["images"] == {"ok": 0, "missing": 5, "error": 0}
    )
    assert [r["key"] for r in rows] == ["1000", "1001", "1002", "1003", "1004"]
    assert rows[2]["width"] == 302 and rows[2]["height"] == 202 and rows[0]["nsfw"] == "UNLIKELY"
    assert rows[1]["similarity"] == pytest.approx(0.31)
    assert all(r["image_status"] == "missing" and r["image_path"] is None for r in rows)
    # stored relative to the input root (the folder of the source file): `@<root>/<file>`
    here = Workspace.open(tmp_path / "ws").locate(rows[0]["source_file"])
    assert rows[0]["source_file"] == f"@{tmp_path.name}/laion400m.parquet" and here == str(src)
    assert [r["source_row"] for r in rows] == list(range(5))
    inp = Workspace.open(tmp_path / "ws").manifest["inputs"][0]
    assert inp["kind"] == "parquet" and inp["rows"] == 5
    assert inp["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert inp["columns"] == {
        "key": "SAMPLE_ID",
        "url": "URL",
        "caption": "TEXT",
        "width": "WIDTH",
        "height": "HEIGHT",
        "license": "LICENSE",
        "nsfw": "NSFW",
        "similarity": "similarity",
    }


def test_laion2b_columns_and_unknown_columns_kept_after_canonical(tmp_path: Path) -> None:
    src = tmp_path / "part-0.parquet"
    laion2b(src, 4)
    metadata.ingest(tmp_path / "ws", [src])
    ws = Workspace.open(tmp_path / "ws")
    table = pq.read_table(ws.path(ws.metadata_parts()[0].path))
    assert table.schema.names == METADATA.names + ["crawl_id"]
    assert (
        table.schema.field("width").type == pa.int32()
        and table.schema.field("aesthetic").type == pa.float32()
    )
    r = table.to_pylist()[3]
    assert (r["laion_hash"], r["aesthetic"], r["language"], r["width"], r["crawl_id"]) == (
        "21",
        5.5,
        "en",
        643,
        "CC-3",
    )
    assert r["key"] is None  # laion2B has no per-row id; row_id is the id
    assert ws.manifest["inputs"][0]["extra_columns"] == {"crawl_id": "crawl_id"}
    assert ws.manifest["inputs"][0]["columns"]["laion_hash"] == "hash"


def test_extra_column_clashing_with_canonical_name_is_prefixed(tmp_path: Path) -> None:
    src = tmp_path / "x.parquet"
    pq.write_table(pa.table({"url": ["a"], "URL": ["b"], "caption": ["c"], "row_id": [99]}), src)
    metadata.ingest(tmp_path / "ws", [src])
    r = rows_of(tmp_path / "ws")[0]
    assert (r["url"], r["source_URL"], r["source_row_id"], r["row_id"]) == ("a", "b", 99, 0)


# -- image sources -------------------------------------------------------------------------------
def test_webdataset_shard_matches_members_by_key(tmp_path: Path) -> None:
    images = [jpeg(i) for i in range(4)]
    orphan = encode(synthetic_image(9), "PNG")
    samples = [{"key": f"00000000{i}", "caption": f"cap {i}", "image": images[i]} for i in range(4)]
    samples[2]["image"] = None  # failed download: no member, no error
    samples[3]["in_shard"] = False  # downloaded but the member is missing: image_missing
    samples[0]["orphans"] = [
        ("000000099.png", orphan),
        ("000000099.txt", b"orphan caption"),
        ("000000099.json", json.dumps({"url": "https://o.example/99", "shot": "wide"}).encode()),
    ]
    img2dataset_shard(tmp_path / "shards", "00000", samples)
    s = metadata.ingest(
        tmp_path / "ws", [tmp_path / "shards" / "00000.tar"]
    )  # the tar finds its parquet
    rows = rows_of(tmp_path / "ws")
    assert s["rows"] == 5 and s["parts"] == 2  # parquet rows, then the orphan as its own part
    assert [r["image_status"] for r in rows] == ["ok", "ok", "missing", "missing", "ok"]
    assert reasons(tmp_path / "ws") == {"image_missing": 1}
    assert errors_of(tmp_path / "ws")[0]["row_id"] == 3
    for r, data in zip(rows[:2], images[:2], strict=True):
        assert read_bytes(r["image_path"], r["image_offset"], r["image_size"]) == data
        assert r["image_sha256"] == hashlib.sha256(data).hexdigest()
        assert (r["image_format"], r["image_width"], r["image_height"]) == ("JPEG", 64, 64)
        assert r["image_member"] == f"{r['key']}.jpg"
    o = rows[4]
    assert (o["key"], o["caption"], o["url"], o["image_format"]) == (
        "000000099",
        "orphan caption",
        "https://o.example/99",
        "PNG",
    )
    assert json.loads(o["extra_json"]) == {"shot": "wide"}
    assert o["source_file"].endswith("00000.tar")
    assert Workspace.open(tmp_path / "ws").manifest["inputs"][0]["kind"] == "webdataset"


def test_files_output_folder_and_directory_detection(tmp_path: Path) -> None:
    out = tmp_path / "i2d"
    samples = [{"key": f"10000000{i}", "caption": f"c{i}", "image": jpeg(20 + i)} for i in range(3)]
    img2dataset_shard(out, "10000", samples, as_files=True)
    (out / "10000_stats.json").write_text("{}")
    s = metadata.ingest(tmp_path / "ws", [out])
    rows = rows_of(tmp_path / "ws")
    assert s["rows"] == 3 and s["images"]["ok"] == 3 and s["skipped"] == 1
    assert [r["key"] for r in rows] == ["100000000", "100000001", "100000002"]
    assert all(
        Path(r["image_path"]).parent.name == "10000" and r["image_member"] is None for r in rows
    )
    assert Path(rows[1]["image_path"]).read_bytes() == samples[1]["image"]
    assert Workspace.open(tmp_path / "ws").manifest["inputs"][0]["kind"] == "files"


def test_plain_folder_with_sidecars(tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "tom.png").write_bytes(encode(synthetic_image(1), "PNG"))
    (folder / "cats" / "tom.txt").write_text("a grey cat\n")
    (folder / "dog.jpg").write_bytes(jpeg(2))
    (folder / "dog.json").write_text(
        json.dumps(
            {"url": "https://d.example/dog.jpg", "caption": "a dog", "photographer": "A. B."}
        )
    )
    (folder / "README.md").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(jpeg(3))
    s = metadata.ingest(tmp_path / "ws", [folder])
    rows = rows_of(tmp_path / "ws")
    assert s["rows"] == 2 and s["images"]["ok"] == 2 and s["errors"] == {}
    dog, tom = rows  # a folder's own files come before those of its subfolders
    assert (dog["key"], dog["caption"], dog["url"]) == ("dog", "a dog", "https://d.example/dog.jpg")
    assert json.loads(dog["extra_json"]) == {"photographer": "A. B."}
    assert (tom["key"], tom["caption"], tom["image_format"]) == ("cats/tom", "a grey cat", "PNG")
    assert tom["source_file"] == f"@{folder.name}" and {dog["source_row"], tom["source_row"]} == {
        0,
        1,
    }
    assert Workspace.open(tmp_path / "ws").manifest["inputs"][0]["kind"] == "folder"


def test_parts_never_mix_inputs_and_respect_rows_per_part(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    laion2b(a, 5)
    laion400m(b, 3)
    s = metadata.ingest(tmp_path / "ws", [a, b], rows_per_part=2)
    ws = Workspace.open(tmp_path / "ws")
    parts = ws.metadata_parts()
    assert s["parts"] == 5 and [p.rows for p in parts] == [2, 2, 1, 2, 1]
    assert [p.row_offset for p in parts] == [0, 2, 4, 5, 7]
    for p in parts:
        assert len(set(pq.read_table(ws.path(p.path)).column("source_file").to_pylist())) == 1


# -- bad inputs: whole-input problems are AuditErrors ---------------------------------------------
def test_missing_source_and_no_sources(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="nope.parquet does not exist"):
        metadata.ingest(tmp_path / "ws", [tmp_path / "nope.parquet"])
    with pytest.raises(AuditError, match="no sources"):
        metadata.ingest(tmp_path / "ws", [])
    assert not (tmp_path / "ws").exists()  # nothing written for a bad call


def test_missing_required_columns_lists_found_and_accepted(tmp_path: Path) -> None:
    src = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"link": ["x"], "TEXT": ["y"]}), src)
    with pytest.raises(AuditError) as e:
        metadata.ingest(tmp_path / "ws", [src])
    msg = str(e.value)
    assert (
        "odd.parquet" in msg
        and "Found columns: link, TEXT" in msg
        and "url: url, URL, image_url" in msg
    )


def test_truncated_parquet_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "cut.parquet"
    laion2b(src, 50)
    src.write_bytes(src.read_bytes()[:-200])
    with pytest.raises(AuditError, match="cut.parquet.*truncated"):
        metadata.ingest(tmp_path / "ws", [src])


def test_parquet_corrupt_midway_keeps_readable_rows(tmp_path: Path) -> None:
    src = tmp_path / "bad.parquet"
    t = pa.table(
        {
            "url": [f"https://e.com/{i}" for i in range(400)],
            "caption": [f"caption {i} " * 3 for i in range(400)],
        }
    )
    pq.write_table(t, src, row_group_size=100, compression="snappy", use_dictionary=False)
    col = pq.ParquetFile(src).metadata.row_group(2).column(1)
    data = bytearray(src.read_bytes())
    data[col.data_page_offset + 40 : col.data_page_offset + col.total_compressed_size - 40] = (
        b"\xab" * (col.total_compressed_size - 80)
    )
    src.write_bytes(bytes(data))
    good = tmp_path / "good.parquet"
    laion2b(good, 3)
    s = metadata.ingest(tmp_path / "ws", [src, good])
    # row group 2 (rows 200..299) is lost; groups 0, 1 and 3 and the next file are kept
    assert s["rows"] == 303 and s["errors"] == {"parquet_corrupt": 1}
    (err,) = errors_of(tmp_path / "ws")
    assert (
        err["row_id"] is None
        and err["source_row"] == 200
        and err["source_file"] == f"@{tmp_path.name}/{src.name}"
    )
    rows = rows_of(tmp_path / "ws")
    assert [r["source_row"] for r in rows][198:202] == [198, 199, 300, 301]
    assert rows[200]["caption"] == "caption 300 " * 3 and rows[200]["row_id"] == 200
    assert [r["source_row"] for r in rows][-3:] == [0, 1, 2]


def test_compressed_tar_is_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "x.tar", "w:gz") as tf:
        add_member(tf, "a.jpg", jpeg(1))
    with pytest.raises(AuditError, match="x.tar is not an uncompressed tar"):
        metadata.ingest(tmp_path / "ws", [tmp_path / "x.tar"])


# -- bad rows are data ---------------------------------------------------------------------------
def test_tar_only_shard_with_unsafe_members_bomb_garbage_and_bad_caption(tmp_path: Path) -> None:
    shard = tmp_path / "evil.tar"
    with tarfile.open(shard, "w") as tf:
        add_member(tf, "good.jpg", jpeg(5))
        add_member(tf, "good.txt", "caf\xe9 au lait".encode("latin-1"))  # not UTF-8
        add_member(tf, "../evil.jpg", jpeg(6))
        add_member(tf, "/abs.jpg", jpeg(7))
        add_member(tf, "link.jpg", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_member(tf, "bomb.png", png_bomb())
        add_member(tf, "garbage.jpg", b"this is not an image at all" * 10)
        add_member(tf, "lonely.txt", b"caption without image")
    s = metadata.ingest(tmp_path / "ws", [shard])
    rows = {r["key"]: r for r in rows_of(tmp_path / "ws")}
    assert set(rows) == {"good", "bomb", "garbage"} and s["skipped"] == 1
    assert rows["good"]["caption"] == "caf\ufffd au lait" and rows["good"]["image_status"] == "ok"
    assert rows["bomb"]["image_status"] == rows["garbage"]["image_status"] == "error"
    assert s["errors"] == {
        "caption_not_utf8": 1,
        "unsafe_tar_member": 3,
        "decompression_bomb": 1,
        "image_undecodable": 1,
    }
    unsafe = sorted(
        e["detail"] for e in errors_of(tmp_path / "ws") if e["reason"] == "unsafe_tar_member"
    )
    assert (
        "'../evil.jpg'" in unsafe[0]
        and "'/abs.jpg'" in unsafe[1]
        and "link to '/etc/passwd'" in unsafe[2]
    )
    assert not (tmp_path / "evil.jpg").exists()
    assert Workspace.open(tmp_path / "ws").manifest["inputs"][0]["kind"] == "tar"


def test_truncated_images_in_tar_and_file(tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    png = encode(synthetic_image(3, 128), "PNG")
    (folder / "cut_png.png").write_bytes(png[: len(png) // 2])
    (folder / "cut_jpeg.jpg").write_bytes(jpeg(4)[:900])
    metadata.ingest(tmp_path / "ws", [folder])
    assert reasons(tmp_path / "ws") == {"image_truncated": 2}
    # without verification only headers are read, so the cut goes unnoticed
    metadata.ingest(tmp_path / "ws2", [folder], verify_images=False)
    assert reasons(tmp_path / "ws2") == {}
    # a tar cut in the middle of its last member's data
    shard = tmp_path / "cut.tar"
    with tarfile.open(shard, "w") as tf:
        add_member(tf, "a.jpg", jpeg(1))
        add_member(tf, "b.jpg", jpeg(2))
    size = 512 + 512 * -(-len(jpeg(1)) // 512) + 512 + 300
    shard.write_bytes(shard.read_bytes()[:size])
    s = metadata.ingest(tmp_path / "ws3", [shard])
    assert s["images"]["ok"] == 1 and s["errors"].get("image_truncated") == 1


def test_duplicate_keys_wrong_types_sha256_mismatch(tmp_path: Path) -> None:
    img = jpeg(1)
    samples = [
        {"key": "k1", "caption": "first", "image": img},
        {"key": "k2", "caption": "bad hash", "image": jpeg(2), "sha256": "0" * 64},
    ]
    img2dataset_shard(tmp_path / "s", "00000", samples)
    # Without img2dataset's `status` the shard is someone else's: its declared sha256 must be
    # that of the stored bytes (img2dataset's own hashes the download: tests/test_interop.py).
    shard = tmp_path / "s" / "00000.parquet"
    pq.write_table(pq.read_table(shard).drop_columns(["status", "error_message"]), shard)
    dup = tmp_path / "more.parquet"
    pq.write_table(
        pa.table(
            {
                "key": ["k9", "k1"],
                "url": ["u9", "u1"],
                "caption": ["x", "again"],
                "width": ["abc", "12"],
                "height": [1.5, 7.0],
            }
        ),
        dup,
    )
    s = metadata.ingest(tmp_path / "ws", [tmp_path / "s" / "00000.parquet", dup])
    rows = rows_of(tmp_path / "ws")
    assert s["rows"] == 4  # the duplicate is still ingested
    errs = sorted((e["row_id"], e["reason"]) for e in errors_of(tmp_path / "ws"))
    assert errs == [
        (1, "sha256_mismatch"),
        (2, "bad_value"),
        (2, "bad_value"),
        (3, "duplicate_key"),
    ]
    assert s["errors"] == {"bad_value": 2, "duplicate_key": 1, "sha256_mismatch": 1}
    assert rows[1]["image_status"] == "ok"  # a mismatch flags provenance, the image is usable
    assert (rows[2]["width"], rows[2]["height"], rows[3]["width"], rows[3]["height"]) == (
        None,
        None,
        12,
        7,
    )
    dup_err = next(e for e in errors_of(tmp_path / "ws") if e["reason"] == "duplicate_key")
    assert "first seen at row_id 0" in dup_err["detail"] and dup_err["source_row"] == 1


def test_max_pixels_limit(tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(1))  # 64 x 64
    s = metadata.ingest(tmp_path / "ws", [folder], max_pixels=64 * 63)
    assert s["errors"] == {"decompression_bomb": 1} and s["images"]["error"] == 1


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_ingest_and_exit_codes(tmp_path: Path) -> None:
    src = tmp_path / "l.parquet"
    laion2b(src, 7)
    runner = CliRunner()
    res = runner.invoke(
        cli, ["ingest", str(tmp_path / "ws"), str(src), "--rows-per-part", "3", "--dataset", "demo"]
    )
    assert res.exit_code == 0, res.output
    assert "ingested 7 rows into 3 part(s)" in res.output and "errors: none" in res.output
    assert Workspace.open(tmp_path / "ws").dataset == "demo"
    res = runner.invoke(cli, ["ingest", str(tmp_path / "ws2"), str(tmp_path / "missing.parquet")])
    assert res.exit_code == 1 and "missing.parquet does not exist" in res.output
    res = runner.invoke(cli, ["ingest", str(tmp_path / "ws2")])
    assert res.exit_code == 1 and "no sources given" in res.output
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"URL": ["x"]}), bad)
    res = runner.invoke(cli, ["ingest", str(tmp_path / "ws2"), str(bad)])
    assert res.exit_code == 1 and "lacks required column(s) caption" in res.output
    res = runner.invoke(cli, ["ingest", str(tmp_path / "ws"), str(src), "--dataset", "other"])
    assert res.exit_code == 1 and "holds dataset 'demo'" in res.output
