"""Inputs as users have them: output of the released img2dataset and clip-retrieval, URL lists,
CSV/TSV/JSON lines (compressed too), mapped columns, and remote paths through fsspec.

The fixtures under tests/data/interop/ were made by img2dataset 1.47.0 and clip-retrieval
2.45.0 against a server on 127.0.0.1 (tests/data/interop/README.md has the commands).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_ingest import errors_of, rows_of

from audit import clip_retrieval, metadata
from audit.cli import cli
from audit.errors import AuditError
from audit.images import read_bytes

INTEROP = Path(__file__).parent / "data" / "interop"
I2D = INTEROP / "img2dataset"


def declared(fmt: str) -> dict[str, dict]:
    t = pq.read_table(I2D / fmt / "00000.parquet")
    return {
        r["key"]: r
        for r in t.drop_columns([c for c in ("jpg",) if c in t.schema.names]).to_pylist()
    }


@pytest.mark.parametrize("fmt", ["files", "webdataset", "parquet"])
def test_img2dataset_outputs_ingest_without_false_sha256_mismatch(tmp_path: Path, fmt: str) -> None:
    s = metadata.ingest(tmp_path / "ws", [I2D / fmt])
    assert s["rows"] == 9 and s["images"] == {"ok": 8, "missing": 1, "error": 0}
    assert s["errors"] == {}  # the 404 is img2dataset's recorded failure, not an ingest error
    rows = rows_of(tmp_path / "ws")
    src = declared(fmt)
    for r in rows:
        d = src[r["key"]]
        assert r["caption"] == d["caption"] and r["url"] == d["url"]
        if d["status"] != "success":
            assert r["image_status"] == "missing"
            continue
        stored = read_bytes(r["image_path"], r["image_offset"], r["image_size"])
        # declared sha256 = img2dataset's hash of the download, kept as the source hash;
        # image_sha256 = the stored (resized, re-encoded) bytes, hashed by ingest
        assert r["sha256"] == d["sha256"]
        assert r["image_sha256"] == hashlib.sha256(stored).hexdigest() != d["sha256"]
        assert (r["image_width"], r["image_height"]) == (d["width"], d["height"])
        assert r["image_format"] == "JPEG"
    if fmt == "parquet":
        t = pq.read_table(I2D / fmt / "00000.parquet", columns=["key", "jpg"]).to_pydict()
        jpgs = dict(zip(t["key"], t["jpg"], strict=True))
        for r in rows:
            if r["image_status"] == "ok":
                assert (
                    read_bytes(r["image_path"], r["image_offset"], r["image_size"])
                    == jpgs[r["key"]]
                )
                assert Path(r["image_path"]).parent == (tmp_path / "ws" / "images").resolve()


def test_img2dataset_run_on_a_url_list_has_no_captions(tmp_path: Path) -> None:
    s = metadata.ingest(tmp_path / "ws", [I2D / "from_txt"])
    assert s["rows"] == 9 and s["images"]["ok"] == 8 and s["errors"] == {}
    assert all(r["caption"] is None for r in rows_of(tmp_path / "ws"))


def test_url_list_and_img2dataset_sample_parquet(tmp_path: Path) -> None:
    s = metadata.ingest(tmp_path / "a", [INTEROP / "inputs" / "urls.txt"])
    urls = (INTEROP / "inputs" / "urls.txt").read_text().split()
    rows = rows_of(tmp_path / "a")
    assert s["rows"] == 9 and [r["url"] for r in rows] == urls
    assert [r["source_row"] for r in rows] == list(range(9))
    metadata.ingest(tmp_path / "b", [INTEROP / "inputs" / "sample.parquet"])  # url, txt
    assert rows_of(tmp_path / "b")[0]["caption"] == "an armadillo drawn in brown"


def test_csv_with_mapped_columns_and_language(tmp_path: Path) -> None:
    src = INTEROP / "inputs" / "mapped.csv"
    with pytest.raises(AuditError, match="mapped.csv lacks required column.*--url-col"):
        metadata.ingest(tmp_path / "ws", [src])
    with pytest.raises(AuditError, match="no column 'link'.*image_link"):
        metadata.ingest(tmp_path / "ws", [src], url_col="link", caption_col="alt_description")
    res = CliRunner().invoke(
        cli,
        [
            "ingest",
            str(tmp_path / "ws"),
            str(src),
            "--url-col",
            "image_link",
            "--caption-col",
            "alt_description",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = rows_of(tmp_path / "ws")
    assert rows[1]["caption"] == "a baby penguin, the Linux mascot"
    assert rows[1]["url"].endswith("baby-tux_alex_kuehne_01.png") and rows[1]["language"] == "en"


def _write(path: Path, text: str) -> Path:
    compression = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}.get(path.suffix)
    if compression is None:
        path.write_text(text)
    else:
        with pa.CompressedOutputStream(str(path), compression) as f:
            f.write(text.encode())
    return path


@pytest.mark.parametrize(
    "name", ["m.csv", "m.tsv.gz", "m.jsonl.bz2", "m.json.zst", "m.csv.zst", "urls.txt.gz"]
)
def test_text_tables_and_compressed_variants(tmp_path: Path, name: str) -> None:
    rows = [(f"https://e.example/{i}.jpg", f"caption, number {i}") for i in range(5)]
    if ".jsonl" in name or ".json" in name:
        text = "".join(json.dumps({"URL": u, "TEXT": c}) + "\n" for u, c in rows)
    elif ".tsv" in name:
        text = "url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in rows)
    elif name.startswith("urls"):
        text = "".join(f"{u}\n\n" for u, _ in rows)  # blank lines are not records
    else:
        text = "url,caption\n" + "".join(f'{u},"{c}"\n' for u, c in rows)
    s = metadata.ingest(tmp_path / "ws", [_write(tmp_path / name, text)], rows_per_part=2)
    got = rows_of(tmp_path / "ws")
    assert s["rows"] == 5 and s["parts"] == 3 and [r["url"] for r in got] == [u for u, _ in rows]
    if not name.startswith("urls"):
        assert [r["caption"] for r in got] == [c for _, c in rows]


def test_bad_csv_names_file_and_row(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "bad.csv", "url,caption\nhttps://a/1.jpg,one\nhttps://a/2.jpg,two,three\n"
    )
    with pytest.raises(AuditError, match=r"bad\.csv: cannot parse csv.*two,three.*Fix or remove"):
        metadata.ingest(tmp_path / "ws", [src])


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_remote_metadata_through_local_http_server(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    base, root = http_root
    shutil.copy(I2D / "parquet" / "00000.parquet", root / "i2d.parquet")
    _write(root / "links.csv.gz", (INTEROP / "inputs" / "mapped.csv").read_text())
    s = metadata.ingest(tmp_path / "ws", [f"{base}/i2d.parquet"])
    assert s["images"] == {"ok": 8, "missing": 1, "error": 0} and s["errors"] == {}
    assert rows_of(tmp_path / "ws")[0]["source_file"] == f"{base}/i2d.parquet"
    s = metadata.ingest(
        tmp_path / "ws2",
        [f"{base}/links.csv.gz"],
        url_col="image_link",
        caption_col="alt_description",
    )
    assert s["rows"] == 9
    with pytest.raises(AuditError, match="cannot be reached|cannot open"):
        metadata.ingest(tmp_path / "ws3", [f"{base}/nope.parquet"])
    with pytest.raises(AuditError, match=r"remote .tar \(compressed\).*mount the bucket"):
        metadata.ingest(tmp_path / "ws3", [f"{base}/00000.tar.gz"])


def test_remote_webdataset_shard_is_streamed_once_into_the_workspace(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    from audit import hashes

    base, root = http_root
    for name in ("00000.tar", "00000.parquet"):
        shutil.copy(I2D / "webdataset" / name, root / name)
    shutil.copy(I2D / "from_txt" / "00000.tar", root / "alone.tar")  # no parquet twin
    s = metadata.ingest(tmp_path / "ws", [f"{base}/00000.tar", f"{base}/alone.tar"])
    assert s["rows"] == 17 and s["images"] == {"ok": 16, "missing": 1, "error": 0}
    assert s["errors"] == {}
    local = {r["key"]: r["image_sha256"] for r in rows_of_ingested(tmp_path / "local")}
    rows = rows_of(tmp_path / "ws")
    webdataset = [r for r in rows if r["source_file"] == f"{base}/00000.parquet"]
    assert {r["key"]: r["image_sha256"] for r in webdataset} == local
    staged = {Path(r["image_path"]).parent for r in rows if r["image_status"] == "ok"}
    assert staged == {(tmp_path / "ws" / "images").resolve()}
    # later stages read the local copy: no server needed any more
    shutil.rmtree(root)
    assert hashes.compute(tmp_path / "ws")["hashed"] == 16


def rows_of_ingested(ws: Path) -> list[dict]:
    metadata.ingest(ws, [I2D / "webdataset"])
    return rows_of(ws)


def test_memory_and_file_urls(tmp_path: Path) -> None:
    import fsspec

    with fsspec.open("memory://bucket/meta.jsonl", "w") as f:
        f.write("".join(json.dumps({"url": f"u{i}", "caption": f"c{i}"}) + "\n" for i in range(3)))
    s = metadata.ingest(tmp_path / "ws", ["memory://bucket/meta.jsonl"])
    assert s["rows"] == 3 and rows_of(tmp_path / "ws")[2]["caption"] == "c2"
    s = metadata.ingest(
        tmp_path / "ws2", [(INTEROP / "inputs" / "sample.parquet").resolve().as_uri()]
    )
    assert s["rows"] == 9
    assert errors_of(tmp_path / "ws2") == []


# -- clip-retrieval ------------------------------------------------------------------------------
CR = INTEROP / "clip_retrieval"


def _cr_by_key(folder: Path) -> dict[str, tuple]:
    import numpy as np

    meta = (
        pq.read_table(folder / "metadata" / "metadata_0.parquet").column("image_path").to_pylist()
    )
    img = np.load(folder / "img_emb" / "img_emb_0.npy")
    txt = np.load(folder / "text_emb" / "text_emb_0.npy")
    return {k: (img[i], txt[i]) for i, k in enumerate(meta)}


def _shuffled_copy(src: Path, dst: Path) -> Path:
    """The same clip-retrieval output with its rows in another order (metadata and npy alike)."""
    import numpy as np

    order = np.array([5, 2, 7, 0, 3, 6, 1, 4])
    for sub in ("img_emb", "text_emb", "metadata"):
        (dst / sub).mkdir(parents=True)
    t = pq.read_table(src / "metadata" / "metadata_0.parquet").take(pa.array(order))
    pq.write_table(t, dst / "metadata" / "metadata_0.parquet")
    for sub, name in (("img_emb", "img_emb_0.npy"), ("text_emb", "text_emb_0.npy")):
        np.save(dst / sub / name, np.load(src / sub / name)[order])
    return dst


def test_clip_retrieval_import_aligns_by_key_not_position(tmp_path: Path) -> None:
    import numpy as np

    metadata.ingest(tmp_path / "ws", [I2D / "webdataset"])
    # rows in another order than the workspace's: position alone would misalign every row
    folder = _shuffled_copy(CR, tmp_path / "cr")
    res = CliRunner().invoke(
        cli,
        [
            "import-embeddings",
            str(tmp_path / "ws"),
            str(folder),
            "--model-name",
            "interop-tiny",
            "--untrained",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "imported 8 of 9 rows' embeddings (dim 64, matched by key" in res.output
    want = _cr_by_key(CR)
    img = np.load(tmp_path / "ws" / "embeddings" / "img-00000.npy")
    txt = np.load(tmp_path / "ws" / "embeddings" / "txt-00000.npy")
    for r in rows_of(tmp_path / "ws"):
        if r["key"] in want:
            assert np.array_equal(img[r["row_id"]], want[r["key"]][0])
            assert np.array_equal(txt[r["row_id"]], want[r["key"]][1])
        else:  # the failed download has no embedding
            assert not img[r["row_id"]].any()
    model = json.loads((tmp_path / "ws" / "embeddings" / "model.json").read_text())
    assert model["model"] == "interop-tiny" and model["trained"] is False
    status = CliRunner().invoke(cli, ["status", str(tmp_path / "ws")])
    assert "embed" in status.output and "done" in status.output


def test_clip_retrieval_import_by_image_file_path(tmp_path: Path) -> None:
    """`--input_format files`: clip-retrieval's image_path is the image file's path."""
    import numpy as np

    metadata.ingest(tmp_path / "ws", [I2D / "files"])
    rows = [r for r in rows_of(tmp_path / "ws") if r["image_status"] == "ok"]
    dst = tmp_path / "cr"
    for sub in ("img_emb", "metadata"):
        (dst / sub).mkdir(parents=True)
    vecs = np.eye(len(rows), 16, dtype=np.float16)
    pq.write_table(
        pa.table({"image_path": [r["image_path"] for r in rows][::-1]}),
        dst / "metadata" / "metadata_0.parquet",
    )
    np.save(dst / "img_emb" / "img_emb_0.npy", vecs)
    s = clip_retrieval.import_embeddings(tmp_path / "ws", dst, model_name="m")
    assert s["matched_by"] == "image_path" and s["matched"] == len(rows)
    img = np.load(tmp_path / "ws" / "embeddings" / "img-00000.npy")
    for j, r in enumerate(rows[::-1]):
        assert np.array_equal(img[r["row_id"]], vecs[j])


def test_clip_retrieval_import_refuses_other_folders(tmp_path: Path) -> None:
    metadata.ingest(tmp_path / "ws", [I2D / "webdataset"])
    with pytest.raises(AuditError, match="not clip-retrieval inference output"):
        clip_retrieval.import_embeddings(tmp_path / "ws", I2D / "webdataset", model_name="m")
    with pytest.raises(AuditError, match="--model-name"):
        clip_retrieval.import_embeddings(tmp_path / "ws", CR, model_name="")


def test_clip_retrieval_export_round_trip_and_index_ids_are_positions(tmp_path: Path) -> None:
    import faiss
    import numpy as np

    from audit import knn

    metadata.ingest(tmp_path / "ws", [I2D / "webdataset"])
    clip_retrieval.import_embeddings(tmp_path / "ws", CR, model_name="interop-tiny", trained=False)
    knn.build(tmp_path / "ws")
    out = tmp_path / "export"
    res = CliRunner().invoke(cli, ["export-embeddings", str(tmp_path / "ws"), str(out)])
    assert res.exit_code == 0, res.output
    assert "exported 8 vectors (dim 64, Flat index) in 1 partition(s)" in res.output
    # what clip-retrieval wrote, clip-retrieval's layout gives back: same rows, same vectors
    assert _cr_by_key(out).keys() == _cr_by_key(CR).keys()
    for k, (img, txt) in _cr_by_key(out).items():
        assert np.array_equal(img, _cr_by_key(CR)[k][0]) and np.array_equal(
            txt, _cr_by_key(CR)[k][1]
        )
    # the back end maps a faiss id to the metadata row at that position
    index = faiss.read_index(str(out / "image.index"))
    vecs = np.load(out / "img_emb" / "img_emb_0.npy").astype(np.float32)
    _, ids = index.search(vecs, 1)
    assert ids[:, 0].tolist() == list(range(8))
    infos = json.loads((out / "image.json").read_text())
    assert infos["index_key"] == "Flat" and infos["nb vectors"] == 8
    # and the export imports again into a fresh workspace, identically
    metadata.ingest(tmp_path / "ws2", [I2D / "webdataset"])
    clip_retrieval.import_embeddings(tmp_path / "ws2", out, model_name="interop-tiny")
    for name in ("img-00000.npy", "txt-00000.npy"):
        assert np.array_equal(
            np.load(tmp_path / "ws" / "embeddings" / name),
            np.load(tmp_path / "ws2" / "embeddings" / name),
        )


# -- filter output as training shards ------------------------------------------------------------
def _filtered(tmp_path: Path, fmt: str) -> tuple[Path, Path, dict]:
    from audit import optouts

    ws = tmp_path / "ws"
    metadata.ingest(ws, [I2D / "webdataset"])
    reg = tmp_path / "urls.csv"
    reg.write_text("url,use\nhttp://127.0.0.1:8765/bat_orlando_karam_.png,ai_training\n")
    optouts.compute(ws, registry=[reg])
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        [
            "filter",
            str(ws),
            "--out",
            str(out),
            "--format",
            fmt,
            "--samples-per-shard",
            "3",
            "--keep",
            "unchecked",
            "--keep",
            "not_evaluable",
        ],
    )
    assert res.exit_code == 0, res.output
    return ws, out, json.loads((tmp_path / "out.removed.json").read_text())


def test_filter_writes_webdataset_shards_with_the_same_keys_and_sidecars(tmp_path: Path) -> None:
    ws, out, summary = _filtered(tmp_path, "webdataset")
    # 9 rows: the 404 has no image, the bat is opted out -> 7 samples in shards of 3
    assert summary["shards"] == {"format": "webdataset", "shards": 3, "samples": 7, "no_image": 1}
    assert sorted(p.name for p in out.iterdir()) == [
        f"0000{i}.{e}" for i in range(3) for e in ("parquet", "tar")
    ]
    with tarfile_open(I2D / "webdataset" / "00000.tar") as tf:
        original = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    got: dict[str, bytes] = {}
    for i in range(3):
        with tarfile_open(out / f"0000{i}.tar") as tf:
            got.update({m.name: tf.extractfile(m).read() for m in tf if m.isfile()})
    bat = next(r["key"] for r in rows_of(ws) if "bat_" in r["url"])
    assert set(got) == {n for n in original if not n.startswith(bat)}
    assert all(got[n] == original[n] for n in got)  # images and sidecars byte for byte
    # and the shards ingest again as img2dataset webdataset output
    s = metadata.ingest(tmp_path / "again", [out])
    assert s["rows"] == 7 and s["images"]["ok"] == 7 and s["errors"] == {}


def test_filter_writes_img2dataset_parquet(tmp_path: Path) -> None:
    ws, out, summary = _filtered(tmp_path, "img2dataset-parquet")
    assert summary["shards"]["samples"] == 7 and summary["shards"]["shards"] == 3
    t = pq.read_table(out / "00000.parquet")
    assert t.column_names == [*declared("webdataset")["0000000"].keys(), "jpg"]
    assert "jpg" in t.column_names
    s = metadata.ingest(tmp_path / "again", [out])
    assert s["rows"] == 7 and s["images"]["ok"] == 7 and s["errors"] == {}
    before = {r["key"]: r["image_sha256"] for r in rows_of(ws)}
    assert all(before[r["key"]] == r["image_sha256"] for r in rows_of(tmp_path / "again"))


def tarfile_open(path: Path):  # noqa: ANN201 - a context manager
    import tarfile

    return tarfile.open(path)


# -- metadata-only duplicates --------------------------------------------------------------------
def test_dedup_finds_same_url_and_caption_on_metadata_alone(tmp_path: Path) -> None:
    from audit import hashes
    from audit.checks import duplicates

    src = tmp_path / "m.csv"
    src.write_text(
        "url,caption\n"
        "https://Img.Example.com/a/1.jpg,A red dress\n"  # 0
        "https://img.example.com:443/a/1.jpg#top,a  red   DRESS\n"  # 1: same URL and caption
        "https://img.example.com/A/1.jpg,something else\n"  # 2: path case differs: another URL
        "http://img.example.com:80,first caption\n"  # 3
        "HTTP://IMG.EXAMPLE.COM/,second caption\n"  # 4: same URL as 3 (empty path is /)
        "https://img.example.com/a/1.jpg,\n"  # 5: same URL as 0, no caption
    )
    metadata.ingest(tmp_path / "ws", [src])
    hashes.compute(tmp_path / "ws")
    s = duplicates.find(tmp_path / "ws")
    assert s["clusters"] == 0  # no images: no image duplicates
    assert s["metadata"] == {
        "url": {"groups": 2, "rows": 5, "extra_copies": 3},
        "caption": {"groups": 1, "rows": 2, "extra_copies": 1},
    }
    groups = pq.read_table(tmp_path / "ws" / "duplicates-metadata.parquet").to_pylist()
    by = {(g["kind"], g["row_id"]): g for g in groups}
    assert {r for k, r in by if k == "url"} == {0, 1, 5, 3, 4}
    assert by[("url", 5)]["representative"] == 0 and by[("url", 5)]["group_size"] == 3
    assert by[("url", 4)]["value"] == "http://img.example.com/" and by[("url", 4)]["group_id"] == 1
    assert by[("caption", 1)]["value"] == "a red dress"
    res = CliRunner().invoke(
        cli, ["dedup", str(tmp_path / "ws"), "--report-dir", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert "same URL: 2 group(s), 5 rows; same caption: 1 group(s), 2 rows" in res.output
    md = (tmp_path / "r" / "duplicates.md").read_text()
    assert "Same URL or same caption" in md and "https://img.example.com/a/1.jpg" in md


# -- declared sizes and languages in the bias report ---------------------------------------------
def test_bias_compares_declared_sizes_and_prefers_the_language_column(make_workspace, tmp_path):
    from conftest import encode, synthetic_image

    from audit.checks import bias

    images = [encode(synthetic_image(i, 48).resize((40, 24))) for i in range(10)]
    ws = make_workspace(
        images,
        captions=[
            "a dog runs on the beach",
            "a red car parked outside",
            "Le chat noir dort sur le canapé du salon",
            "a bowl of soup",
            "two people at a table",
            "a tall tree in autumn",
            "an old house by the road",
            "a man riding a bicycle",
            "flowers in a blue vase",
            "a plane in the sky",
        ],
        extra={
            # 0-3 right, 4-6 swapped (LAION's WIDTH/HEIGHT mix-up), 7 wrong, 8-9 undeclared
            "width": [40, 40, 40, 41, 24, 24, 24, 100, None, None],
            "height": [24, 24, 24, 24, 40, 40, 40, 100, None, None],
            "language": ["en", "en", "fr", "en", "en", "en", None, "en", "en", ""],
            # what ingest decodes (the fixture builder writes rows directly)
            "image_width": [40] * 10,
            "image_height": [24] * 10,
        },
    )
    s = bias.compute(ws.root, report_dir=tmp_path / "rep", bootstrap=20)
    fig = json.loads((tmp_path / "rep" / "bias.json").read_text())
    ds = fig["images"]["declared_sizes"]
    assert (ds["compared"], ds["contradict"], ds["swapped"]) == (8, 4, 3)
    assert fig["images"]["width"]["p100"] == 40  # the decoded sizes, never the declared 100
    lang = fig["language"]
    assert lang["languages_from"] == {"language column": 8, "identifier": 2}
    fr = next(x for x in lang["languages"] if x["language"] == "fr")
    assert fr["captions"] == 1
    md = (tmp_path / "rep" / "bias.md").read_text()
    assert (
        "contradict them in 4 of 8 rows" in md and "3 of those with width and height swapped" in md
    )
    assert s is not None
