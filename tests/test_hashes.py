"""Stage `hash`: golden codes, agreement with imagehash, invariances, error rows, resume, CLI."""

from __future__ import annotations

import json

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import DATA, encode, synthetic_image

from audit import hashes
from audit.cli import cli
from audit.images import decode

FIX = DATA / "descriptors"
GOLDEN = json.loads((FIX / "golden.json").read_text())
IMAGEHASH = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "whash": imagehash.whash,
    "ahash": imagehash.average_hash,
}


def hexcodes(codes: np.ndarray) -> dict[str, str]:
    return {name: format(int(codes[j]), "016x") for j, name in enumerate(hashes.HASHES)}


def hamming(a: int, b: int) -> int:
    return int(a ^ b).bit_count()


def table(ws, part="00000"):
    return pq.read_table(ws.path(f"hashes/part-{part}.parquet"))


def test_golden_codes_and_live_imagehash_agree_bit_for_bit():
    names = sorted(GOLDEN)
    images = [decode((FIX / n).read_bytes()) for n in names]
    codes = hashes.hash_images(images)
    assert codes.dtype == np.uint64 and codes.shape == (len(names), 4)
    for name, img, row in zip(names, images, codes, strict=True):
        assert hexcodes(row) == GOLDEN[name], name
        live = {h: str(f(img)) for h, f in IMAGEHASH.items()}
        assert hexcodes(row) == live, name


def test_hash_images_matches_imagehash_on_odd_modes_and_sizes():
    from PIL import Image

    imgs = [synthetic_image(s, size=37 + 13 * s) for s in range(6)]
    imgs.append(synthetic_image(9, 90).convert("L"))
    imgs.append(synthetic_image(10, 70).convert("P"))
    imgs.append(Image.new("RGB", (50, 20), (200, 10, 10)))  # flat: ties everywhere
    codes = hashes.hash_images(imgs)
    for img, row in zip(imgs, codes, strict=True):
        assert hexcodes(row) == {h: str(f(img)) for h, f in IMAGEHASH.items()}


def test_compute_exact_mode_equals_golden_and_errors_are_rows(make_workspace):
    names = ["cat.png", "cat_large.jpg", "broken_corrupt.jpg", "dog.png", "broken_notimage.jpg"]
    images = [(FIX / n).read_bytes() for n in names] + [None]
    ws = make_workspace(images, rows_per_part=4)
    summary = hashes.compute(ws.root, workers=1, fast_decode=False)
    assert summary["rows"] == 6 and summary["errors"] == 3 and summary["hashed"] == 3
    # pyarrow, not pandas: pandas turns a nullable uint64 column into float64 and loses bits
    t = pq.read_table(ws.root / "hashes").sort_by("row_id").to_pydict()
    assert t["row_id"] == list(range(6))
    for i, name in enumerate(names):
        if name in GOLDEN:
            assert format(t["phash"][i], "016x") == GOLDEN[name]["phash"]
            assert format(t["whash"][i], "016x") == GOLDEN[name]["whash"]
        else:
            assert t["phash"][i] is None and t["ahash"][i] is None
    errors = pq.read_table(ws.root / "errors").to_pandas().sort_values("row_id")
    assert errors["row_id"].tolist() == [2, 4, 5]
    assert set(errors["stage"]) == {"hash"}
    assert errors["reason"].tolist() == ["image_undecodable", "image_undecodable", "image_missing"]
    con = ws.connect()
    assert con.execute("select count(*) from hashes where phash is not null").fetchone()[0] == 3


def test_fast_mode_close_to_exact_and_invariant_to_resize(make_workspace):
    names = [
        "cat.png",
        "cat_resize.jpg",
        "cat_large.jpg",
        "cat_darker.png",
        "dog.png",
        "penguin.png",
    ]
    ws = make_workspace([(FIX / n).read_bytes() for n in names])
    hashes.compute(ws.root, workers=1, fast_decode=True)
    fast = dict(zip(names, table(ws)["phash"].to_pylist(), strict=True))
    for n in names:
        exact = int(GOLDEN[n]["phash"], 16)
        assert hamming(fast[n], exact) <= 4, n
    for n in ["cat_resize.jpg", "cat_large.jpg", "cat_darker.png"]:  # edits stay within a few bits
        assert hamming(fast[n], fast["cat.png"]) <= 4, n
    for a, b in [("cat.png", "dog.png"), ("cat.png", "penguin.png"), ("dog.png", "penguin.png")]:
        assert hamming(fast[a], fast[b]) >= 20, (a, b)  # different images stay far apart


def test_synthetic_images_far_apart_and_jpeg_recompression_close():
    imgs = [synthetic_image(s, 96) for s in range(12)]
    codes = hashes.hash_images(imgs)[:, 0]
    d = [hamming(int(codes[i]), int(codes[j])) for i in range(12) for j in range(i + 1, 12)]
    assert min(d) >= 12
    again = hashes.hash_images([decode(encode(im, "JPEG", quality=80)) for im in imgs])[:, 0]
    assert max(hamming(int(a), int(b)) for a, b in zip(codes, again, strict=True)) <= 6


def test_parallel_equals_serial_and_resume_keeps_parts(make_workspace, monkeypatch):
    imgs = [encode(synthetic_image(s, 80), "JPEG" if s % 2 else "PNG") for s in range(30)]
    ws = make_workspace(imgs, rows_per_part=10)
    monkeypatch.setattr(
        hashes, "CHUNK_ROWS", 4
    )  # several chunks per part, out of order across workers
    hashes.compute(ws.root, workers=2)
    parallel = pq.read_table(ws.root / "hashes").sort_by("row_id")
    first = ws.path("hashes/part-00000.parquet").stat().st_mtime_ns
    summary = hashes.compute(ws.root, workers=1)  # same params: everything is already done
    assert summary["resumed_parts"] == 3
    assert ws.path("hashes/part-00000.parquet").stat().st_mtime_ns == first
    serial = hashes.hash_images([decode(b) for b in imgs])  # exact codes, for closeness only
    assert np.all(np.bitwise_count(parallel["phash"].to_numpy() ^ serial[:, 0]) <= 4)
    ws.path("hashes/part-00001.parquet").unlink()  # lose a part: only it is redone
    summary = hashes.compute(ws.root, workers=1)
    assert summary["resumed_parts"] == 2
    redone = pq.read_table(ws.root / "hashes").sort_by("row_id")
    assert redone.equals(parallel)


def test_cli_hash(make_workspace):
    ws = make_workspace([(FIX / "cat.png").read_bytes(), (FIX / "broken_corrupt.jpg").read_bytes()])
    result = CliRunner().invoke(cli, ["hash", str(ws.root), "--workers", "1", "--exact-decode"])
    assert result.exit_code == 0, result.output
    assert "1 hashed" in result.output and "1 error" in result.output
    assert format(int(table(ws)["phash"][0].as_py()), "016x") == GOLDEN["cat.png"]["phash"]
    bad = CliRunner().invoke(cli, ["hash", str(ws.root), "--workers", "0"])
    assert bad.exit_code == 1 and "workers" in bad.output


@pytest.mark.parametrize("name", ["cat.png", "dog.png"])
def test_fast_decode_never_decodes_jpeg_at_full_size(name):
    from PIL import Image

    data = encode(decode((FIX / name).read_bytes()).resize((2000, 1600)), "JPEG", quality=90)
    gray, size = hashes._fast_gray(data, 10**9)
    assert size == (2000, 1600)
    assert min(gray.size) < 2 * hashes.FAST_SIDE and gray.mode == "L"
    assert isinstance(gray, Image.Image)


def test_chosen_hashes_only_and_stages_that_need_others_say_so(tmp_path):
    from conftest import build_workspace

    from audit.checks import duplicates
    from audit.errors import AuditError

    imgs = [encode(synthetic_image(s, 90), "PNG") for s in range(6)]
    full = build_workspace(tmp_path / "full", imgs)
    hashes.compute(full.root, workers=1)
    ws = build_workspace(tmp_path / "some", imgs)
    summary = hashes.compute(ws.root, workers=1, which=["phash"])
    assert summary["hashes"] == ["phash"] and summary["hashed"] == 6
    t, ref = table(ws), table(full)
    assert t["phash"].equals(ref["phash"])  # the same codes as a full run
    assert t["dhash"].null_count == t["whash"].null_count == t["ahash"].null_count == 6
    with pytest.raises(AuditError, match=r"needs dhash.*--hashes phash,dhash,whash,ahash"):
        duplicates.find(ws.root)
    with pytest.raises(AuditError, match="unknown hash qhash"):
        hashes.compute(ws.root, workers=1, which=["phash", "qhash"])
    hashes.compute(ws.root, workers=1)  # different parameters: everything is hashed again
    assert table(ws).equals(ref)
    out = CliRunner().invoke(cli, ["hash", str(ws.root), "--workers", "1", "--hashes", "ahash"])
    assert out.exit_code == 0 and "(ahash)" in out.output


def test_fast_transparent_path_matches_white_background():
    """Premultiplied gray+alpha, reduced, then put on white == decode's white composite."""
    from PIL import Image

    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (400, 300, 4), dtype=np.uint8)
    rgba[:200, :, 3] = 0  # fully transparent top half with random colour underneath
    rgba[200:, :150, 3] = 128
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    gray, _ = hashes._fast_gray(data, 10**9)
    expect = decode(data).convert("L").reduce(min(300, 400) // hashes.FAST_SIDE)
    diff = np.abs(np.asarray(gray, np.int16) - np.asarray(expect, np.int16))
    assert gray.size == expect.size and diff.max() <= 2
