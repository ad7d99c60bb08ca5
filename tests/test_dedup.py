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
