"""Check `dedup`: banding search equals brute force; planted duplicate families are found, nothing else."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner
from conftest import DATA, build_workspace, encode, synthetic_image
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import hashes
from audit.checks import duplicates
from audit.cli import cli
from audit.images import decode
from audit.workspace import Output, Workspace, atomic_write_json, atomic_write_npy

FIX = DATA / "descriptors"


def brute(codes: np.ndarray, radius: int) -> set[tuple[int, int, int]]:
    d = np.bitwise_count(codes[:, None] ^ codes[None, :])
    i, j = np.nonzero(np.triu(d <= radius, 1))
    return {(int(a), int(b), int(d[a, b])) for a, b in zip(i, j, strict=True)}


def flip(code: int, bits: list[int]) -> int:
    for b in bits:
        code ^= 1 << b
    return code


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    radius=st.integers(0, 12),
    planted=st.integers(0, 40),
    bands=st.sampled_from([None, 3, 4, 7]),
)
def test_banding_equals_brute_force(seed, n, radius, planted, bands):
    rng = np.random.default_rng(seed)
    base = [int(x) for x in rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)]
    for _ in range(planted if n else 0):  # near copies at every distance around the radius
        src = base[int(rng.integers(0, len(base)))]
        k = int(rng.integers(0, radius + 3))
        base.append(flip(src, [int(b) for b in rng.choice(64, size=k, replace=False)]))
    codes = np.unique(np.array(base, dtype=np.uint64))
    i, j, d = duplicates.near_pairs(codes, radius, bands)
    assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == brute(codes, radius)
    assert np.all(i < j)


def test_bands_chosen_by_size():
    assert duplicates.choose_bands(100, 6) == 7  # d+1 exact bands for small sets
    assert duplicates.choose_bands(1_000_000, 6) in (
        3,
        4,
    )  # probing within 1-2 bits beats 9-bit bands
    assert [w for _, w in duplicates._bands(7)] == [10, 9, 9, 9, 9, 9, 9]


def families_workspace(tmp_path):
    """Three planted families among distinct images: exact copies, re-encodes, a resize."""
    cat, dog = (FIX / "cat.png").read_bytes(), (FIX / "dog.png").read_bytes()
    images = [encode(synthetic_image(100 + s, 96), "PNG") for s in range(20)]
    images[3] = cat
    images[11] = cat  # exact copy of row 3
    images[7] = (FIX / "cat_resize.jpg").read_bytes()  # near copy of row 3
    images[15] = dog
    images[18] = encode(decode(dog), "JPEG", quality=70)  # near copy of row 15
    images[5] = encode(synthetic_image(999, 96), "PNG")
    images[9] = images[5]  # exact copy, nothing near
    images.append(None)
    images.append((FIX / "broken_corrupt.jpg").read_bytes())
    return build_workspace(tmp_path / "ws", images, rows_per_part=8)


def test_planted_families_found_and_nothing_else(tmp_path):
    ws = families_workspace(tmp_path)
    hashes.compute(ws.root, workers=1)
    s = duplicates.find(ws.root)
    t = pq.read_table(ws.path("duplicates.parquet")).to_pylist()
    clusters = {}
    for r in t:
        clusters.setdefault(r["cluster_id"], set()).add(r["row_id"])
    assert sorted(map(sorted, clusters.values())) == [[3, 7, 11], [5, 9], [15, 18]]
    by_row = {r["row_id"]: r for r in t}
    assert by_row[3]["cluster_id"] == 0 and by_row[3]["cluster_size"] == 3  # largest first
    assert {r["representative"] for r in t if r["cluster_id"] == 0} == {3}
    assert by_row[11]["kind"] == "exact" and by_row[11]["distance"] == 0
    assert by_row[7]["kind"] == "near_hash" and 0 <= by_row[7]["hamming"] <= 4
    assert by_row[7]["distance"] == by_row[7]["hamming"]
    assert by_row[18]["kind"] == "near_hash" and by_row[9]["kind"] == "exact"
    assert by_row[3]["cosine"] is None
    assert s["clusters"] == 3 and s["rows_in_clusters"] == 7
    assert s["by_kind"] == {"exact": 4, "near_hash": 3, "near_embedding": 0}
    assert s["embeddings"] == "embed stage not run"
    con = ws.connect()
    assert con.execute("select count(distinct cluster_id) from duplicates").fetchone()[0] == 3


def test_threshold_zero_keeps_only_identical_codes(tmp_path):
    ws = families_workspace(tmp_path)
    hashes.compute(ws.root, workers=1)
    duplicates.find(ws.root, hamming=0, dhash_candidates=-1)
    rows = pq.read_table(ws.path("duplicates.parquet")).to_pylist()
    codes = {r["row_id"]: r["hamming"] for r in rows}
    assert set(codes) >= {3, 11, 5, 9} and all(h == 0 for h in codes.values())


def plant_embeddings(ws, vecs, trained):
    ws = Workspace.open(ws.root)  # the caller's object predates the hash stage
    run = ws.start_stage("embed", {"model": "planted", "trained": trained})
    for part in ws.metadata_parts():
        rel = f"embeddings/img-{part.stem}.npy"
        atomic_write_npy(
            ws.path(rel), vecs[part.row_offset : part.row_offset + part.rows].astype(np.float16)
        )
        run.record_part(part.number, [Output(rel, part.rows, part.row_offset)])
    atomic_write_json(ws.path("embeddings/model.json"), {"model": "planted", "trained": trained})
    run.finish({})


def test_embedding_near_duplicates_only_with_trained_model(tmp_path):
    ws = families_workspace(tmp_path)
    hashes.compute(ws.root, workers=1)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(22, 16)).astype(np.float32)
    vecs[13] = vecs[1] + 0.05 * rng.normal(size=16)  # rows 1 and 13: same picture, other pixels
    vecs[21] = 0  # the broken image has no embedding
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)
    plant_embeddings(ws, vecs, trained=False)
    s = duplicates.find(ws.root)
    assert s["embeddings"] == "embedding model is untrained" and s["by_kind"]["near_embedding"] == 0
    plant_embeddings(ws, vecs, trained=True)
    # rows 1 and 13 only have planted embeddings; their pixels differ, so verification says no
    s = duplicates.find(ws.root)
    assert s["by_kind"]["near_embedding"] == 0 and s["clusters"] == 3 and s["rejected_pairs"] >= 1
    s = duplicates.find(ws.root, verify=False)
    rows = {r["row_id"]: r for r in pq.read_table(ws.path("duplicates.parquet")).to_pylist()}
    assert s["by_kind"]["near_embedding"] == 2 and s["clusters"] == 4
    assert rows[13]["verified"] is False and rows[13]["correlation"] is None
    assert rows[13]["kind"] == "near_embedding" and rows[13]["representative"] == 1
    assert rows[13]["cosine"] > 0.95 and abs(rows[13]["distance"] - (1 - rows[13]["cosine"])) < 1e-6
    assert json.loads(ws.path("manifest.json").read_text())["stages"]["dedup"][
        "depends_on"
    ].keys() >= {"embed"}


def test_cli_dedup_with_report(tmp_path):
    ws = families_workspace(tmp_path)
    hashes.compute(ws.root, workers=1)
    out = tmp_path / "reports"
    r = CliRunner().invoke(cli, ["dedup", str(ws.root), "--hamming", "6", "--report-dir", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 cluster(s)" in r.output
    md = (out / "duplicates.md").read_text()
    html = (out / "duplicates.html").read_text()
    assert "exact" in md and "near_hash" in md and "data:image/png;base64," in html
    assert md.index("cluster 0") < md.index("cluster 1")
    r = CliRunner().invoke(cli, ["dedup", str(tmp_path / "nowhere")])
    assert r.exit_code == 1


# -- precision: verified pairs, no chains, a keep list (issue 16) ----------------------------------


def card(suit: str, size=(200, 280)):
    """A playing-card-like picture: white card, border, corner index, five pips of `suit`."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    w, h = size
    d.rounded_rectangle([4, 4, w - 5, h - 5], 12, outline="black", width=3)
    for fx, fy in [(0.3, 0.25), (0.7, 0.25), (0.5, 0.5), (0.3, 0.75), (0.7, 0.75)]:
        x, y = fx * w, fy * h
        if suit == "spades":
            d.polygon([(x, y - 18), (x - 16, y + 6), (x + 16, y + 6)], fill="black")
            d.ellipse([x - 12, y - 2, x, y + 12], fill="black")
            d.ellipse([x, y - 2, x + 12, y + 12], fill="black")
        else:
            for dx, dy in ((0, -9), (-9, 4), (9, 4)):
                d.ellipse([x + dx - 8, y + dy - 8, x + dx + 8, y + dy + 8], fill="black")
        d.rectangle([x - 3, y + 4, x + 3, y + 20], fill="black")
    d.text((14, 10), "5", fill="black", font_size=22)
    return img


def tiny_foreground(shape: str):
    """A 10-pixel mark on a 512 x 512 white canvas: pHash sees the canvas, not the mark."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (512, 512), "white")
    d = ImageDraw.Draw(img)
    box = [200, 200, 210, 210]
    (d.ellipse if shape == "dot" else d.rectangle)(box, fill="red" if shape == "dot" else "blue")
    return img


def lookalikes_workspace(tmp_path):
    """Rows 0-3: a picture and its JPEG q50, half-size and one-pixel-line copies; then pairs
    that pHash calls near but are not copies: blank (4, 5), tiny foreground (6, 7), the five
    of spades and the five of clubs (8, 9)."""
    from PIL import Image, ImageDraw

    from audit.images import decode as dec

    pic = dec(encode(synthetic_image(7, 160), "PNG"))
    line = pic.copy()
    ImageDraw.Draw(line).line([(0, 30), (159, 120)], fill=(0, 0, 0), width=1)
    images = [
        encode(pic, "PNG"),
        encode(pic, "JPEG", quality=50),
        encode(pic.resize((80, 80)), "PNG"),
        encode(line, "PNG"),
        encode(Image.new("RGB", (64, 64), "white"), "PNG"),
        encode(Image.new("RGB", (100, 80), "white"), "PNG"),
        encode(tiny_foreground("dot"), "PNG"),
        encode(tiny_foreground("square"), "PNG"),
        encode(card("spades"), "PNG"),
        encode(card("clubs"), "PNG"),
    ]
    ws = build_workspace(tmp_path / "ws", images)
    hashes.compute(ws.root, workers=1)
    return ws


def clusters_of(ws):
    out: dict[int, set[int]] = {}
    for r in pq.read_table(ws.path("duplicates.parquet")).to_pylist():
        out.setdefault(r["cluster_id"], set()).add(r["row_id"])
    return sorted(map(sorted, out.values()))


def test_planted_copies_cluster_and_lookalikes_do_not(tmp_path):
    ws = lookalikes_workspace(tmp_path)
    s = duplicates.find(ws.root)
    assert clusters_of(ws) == [[0, 1, 2, 3]]
    rows = {r["row_id"]: r for r in pq.read_table(ws.path("duplicates.parquet")).to_pylist()}
    for copy in (1, 2, 3):  # each copy tied to the representative by a verified pair
        assert rows[copy]["representative"] == rows[0]["representative"]
        tie = rows[copy] if copy != rows[copy]["representative"] else rows[0]
        assert tie["verified"] is True and tie["correlation"] > 0.93
    assert s["rejected_pairs"] >= 3  # blank, tiny foreground and cards were proposed, refused
    # on hashes alone, the blank, tiny-foreground and card pairs all join: the test can fail
    duplicates.find(ws.root, verify=False)
    alone = clusters_of(ws)
    assert [4, 5] in alone and [6, 7] in alone and [8, 9] in alone
    assert all(
        r["verified"] is False
        for r in pq.read_table(ws.path("duplicates.parquet")).to_pylist()
        if r["kind"] != "exact" and r["row_id"] != r["representative"]
    )


def test_chain_is_cut_where_its_ends_are_not_near():
    from audit.checks.duplicates.clusters import linked_clusters

    # A~B, B~C verified, A and C not near: never one cluster
    rep = linked_clusters(3, np.array([0, 1]), np.array([1, 2]), lambda u, v: False)
    assert len(set(rep.tolist())) == 2
    # a numbered series 0~1~2~...~9 (each only near its neighbours): no cluster above 2
    a = np.arange(9)
    rep = linked_clusters(10, a, a + 1, lambda u, v: abs(u - v) <= 1)
    assert max(np.bincount(rep)) <= 2
    # a real family: everyone near everyone -> one cluster whatever the edges the hash found
    rep = linked_clusters(4, np.array([0, 0, 0]), np.array([1, 2, 3]), lambda u, v: True)
    assert set(rep.tolist()) == {0}


def test_keep_list_names_one_keeper_per_cluster_with_a_reason(tmp_path):
    import csv

    from audit.reports import duplicates as page

    ws = families_workspace(tmp_path)
    hashes.compute(ws.root, workers=1)
    duplicates.find(ws.root)
    page.write(ws.root, tmp_path / "rep")
    with open(tmp_path / "rep" / "duplicates_keep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_cluster: dict[str, list[dict]] = {}
    for r in rows:
        by_cluster.setdefault(r["cluster_id"], []).append(r)
    assert len(by_cluster) == 3
    for members in by_cluster.values():
        kept = [r for r in members if r["action"] == "keep"]
        assert len(kept) == 1 and kept[0]["reason"].startswith("keep: ")
        for r in members:
            if r["action"] == "remove":
                assert f"duplicate of row {kept[0]['row_id']}" in r["reason"]
                assert (
                    "same sha256" in r["reason"]
                    or "verified" in r["reason"]
                    or ("representative" in r["reason"])
                )
    by_row = {int(r["row_id"]): r for r in rows}
    assert by_row[3]["action"] == "keep"  # equal candidates: the lowest row_id
    assert "verified, correlation" in by_row[7]["reason"]


# -- the pixel check on a real openclipart drawing (tests/data/descriptors/cat.png) -------------


def openclipart_variants_workspace(tmp_path):
    """Rows 0-3: openclipart's cat and its JPEG q50, half-size and one-pixel-line copies;
    4: the cat with one region's colours rotated (a colour variant); 5, 6: the penguin with
    the digit 1 and with the digit 2 in its corner (one layout, another number)."""
    from PIL import Image, ImageDraw

    cat = decode((FIX / "cat.png").read_bytes())
    w, h = cat.size
    line = cat.copy()
    ImageDraw.Draw(line).line([(0, h // 3), (w - 1, 2 * h // 3)], fill=(0, 0, 0), width=1)
    arr = np.asarray(cat).copy()
    y0, y1, x0, x1 = h // 3, h // 3 + h // 5, w // 3, w // 3 + w // 5
    arr[y0:y1, x0:x1] = arr[y0:y1, x0:x1][..., [2, 0, 1]]  # red -> green -> blue -> red
    penguin = decode((FIX / "penguin.png").read_bytes())
    numbered = []
    for digit in "12":
        img = penguin.copy()
        ImageDraw.Draw(img).text((12, 12), digit, fill=(0, 0, 0), font_size=penguin.size[1] // 5)
        numbered.append(encode(img, "PNG"))
    images = [
        encode(cat, "PNG"),
        encode(cat, "JPEG", quality=50),
        encode(cat.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "PNG"),
        encode(line, "PNG"),
        encode(Image.fromarray(arr), "PNG"),
        *numbered,
    ]
    ws = build_workspace(tmp_path / "ws", images)
    hashes.compute(ws.root, workers=1)
    return ws


def test_openclipart_copies_cluster_colour_variant_and_other_digit_do_not(tmp_path):
    ws = openclipart_variants_workspace(tmp_path)
    s = duplicates.find(ws.root)
    assert clusters_of(ws) == [[0, 1, 2, 3]]
    # the hashes did propose the variant and the other digit; the pixels refused them
    assert s["rejected_by"].get("solid_difference", 0) >= 2
    rows = {r["row_id"]: r for r in pq.read_table(ws.path("duplicates.parquet")).to_pylist()}
    rep = rows[0]["representative"]
    for r in rows.values():  # each member's tie to the representative is evidenced
        if r["row_id"] != rep:
            assert r["verified"] is True and r["blob"] <= 0.001 and r["noise"] <= 1.2
    # on hashes alone the colour variant and the other digit join: the test can fail
    duplicates.find(ws.root, verify=False)
    alone = clusters_of(ws)
    assert any(4 in c for c in alone) and [5, 6] in alone


def test_pair_check_measures_what_it_rejects():
    from PIL import ImageDraw

    from audit.checks.duplicates import verify_pairs as vp

    cat = decode((FIX / "cat.png").read_bytes())
    base = vp.thumbnail(cat)
    jpeg = vp.compare(base, vp.thumbnail(decode(encode(cat, "JPEG", quality=50))))
    assert jpeg.verified and jpeg.reason == "" and jpeg.correlation > 0.99
    arr = np.asarray(cat).copy()
    arr[100:180, 200:300] = arr[100:180, 200:300][..., [1, 2, 0]]
    from PIL import Image

    variant = vp.compare(base, vp.thumbnail(Image.fromarray(arr)))
    assert not variant.verified and variant.reason == "solid_difference"
    assert variant.blob > vp.MAX_BLOB
    # another shape in each (a box, a ring; 4 px strokes, one pixel in the 128 px thumbnail):
    # ink on both sides, not an overlay. (2 px strokes fall below the thumbnail's resolution.)
    a, b = cat.copy(), cat.copy()
    ImageDraw.Draw(a).rectangle([20, 300, 120, 380], outline=(0, 0, 0), width=4)
    ImageDraw.Draw(b).ellipse([20, 300, 120, 380], outline=(0, 0, 0), width=4)
    other = vp.compare(vp.thumbnail(a), vp.thumbnail(b))
    assert not other.verified
    blank = vp.compare(vp.thumbnail(Image.new("RGB", (90, 60), "white")), base)
    assert blank.reason == "low_information" and blank.low_information


def test_native_star_polygons_differ_unexplained_while_their_copies_verify():
    """Two stars of openclipart's polygon series (100 px, hairlines) differ by less than the
    noise floor admits, but no re-encode or resampling reproduces one from the other; the
    first star's JPEG q50, half-size and one-pixel-line copies are reproduced and verify."""
    from PIL import Image, ImageDraw

    from audit.checks.duplicates import verify_pairs as vp

    star, other = (decode((FIX / f"star_{n}step.png").read_bytes()) for n in ("95pt06", "33pt02"))
    a = vp.thumbnail(star)
    assert a.native  # 100 px: the thumbnail is the file's own pixels
    look_alike = vp.compare(a, vp.thumbnail(other))
    assert look_alike.noise <= vp.NOISE_RATIO  # the floor alone would let it through
    assert not look_alike.verified and look_alike.reason == "unexplained_difference"
    assert look_alike.explained > vp.EXPLAINED
    w, h = star.size
    line = star.copy()
    ImageDraw.Draw(line).line([(0, h // 4), (w - 1, 3 * h // 5)], fill=(0, 0, 0), width=1)
    copies = {
        "jpeg": decode(encode(star, "JPEG", quality=50)),
        "half": star.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "line": line,
    }
    for name, img in copies.items():
        ev = vp.compare(a, vp.thumbnail(img))
        assert ev.verified, (name, ev)
        assert ev.explained <= vp.EXPLAINED
    # the half-size copy of the look-alike is not explained by any kernel either
    half_other = other.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
    assert not vp.compare(a, vp.thumbnail(half_other)).verified


def test_rows_of_one_shared_code_are_all_paired_in_a_series_of_look_alikes():
    """40 rows with one code (a series of look-alikes, as openclipart's star polygons share
    dHash codes): a copy of any member must meet its original, not only the first row."""
    from audit.checks.duplicates import MAX_GROUP, _row_pairs

    rows = np.arange(100, 140)
    none = np.zeros(0, np.int64)
    a, b = _row_pairs(rows, np.zeros(40, np.int64), none, none)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    assert (117, 133) in pairs and len(pairs) == 40 * 39 // 2
    # a group beyond MAX_GROUP (a thousand blank pictures) is still a star from its first row
    big = np.arange(MAX_GROUP + 8)
    a, b = _row_pairs(big, np.zeros(len(big), np.int64), none, none)
    assert len(a) == len(big) - 1 and set(a.tolist()) == {0}
