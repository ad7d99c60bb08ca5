"""Stage `index`: index choice, recall recorded, searches by row_id, pHash binary index, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_workspace, encode, synthetic_image

from audit import hashes, knn
from audit.cli import cli
from audit.errors import AuditError
from audit.workspace import Output, Workspace, atomic_write_npy


def write_embeddings(ws, vecs: np.ndarray) -> None:
    """Record an `embed` stage whose image vectors are `vecs` (files are the interface)."""
    ws = Workspace.open(ws.root)
    run = ws.start_stage("embed", {"model": "planted", "trained": True})
    for part in ws.metadata_parts():
        rel = f"embeddings/img-{part.stem}.npy"
        atomic_write_npy(
            ws.path(rel), vecs[part.row_offset : part.row_offset + part.rows].astype(np.float16)
        )
        run.record_part(part.number, [Output(rel, part.rows, part.row_offset)])
    run.finish({"rows": len(vecs)})


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def ws_with_vectors(tmp_path):
    def make(n, d=32, rows_per_part=500, dead=()):
        ws = build_workspace(tmp_path / "ws", [None] * n, rows_per_part=rows_per_part)
        vecs = unit(np.random.default_rng(1), n, d)
        vecs[list(dead)] = 0
        write_embeddings(ws, vecs)
        return ws, vecs

    return make


def test_flat_index_exact_with_row_ids_and_dead_rows_left_out(ws_with_vectors):
    ws, vecs = ws_with_vectors(1200, dead=[3, 700])
    s = knn.build(ws.root)
    assert s["image_index"] == "flat" and s["image_vectors"] == 1198 and s["recall_at_10"] == 1.0
    info = json.loads(ws.path("faiss/info.json").read_text())
    assert info["image"]["recall_queries"] == 200 and "n <= 20,000" in info["rule"]
    q = vecs[[10, 900]].astype(np.float16).astype(np.float32)
    scores, ids = knn.search_embeddings(ws.root, q, k=5)
    assert ids[:, 0].tolist() == [10, 900] and np.allclose(scores[:, 0], 1, atol=1e-3)
    exact = np.argsort(-(vecs @ q.T).T, axis=1)[:, :5]
    assert ids.tolist() == exact.tolist()
    assert 3 not in ids and 700 not in ids
    with pytest.raises(AuditError, match="dimension"):
        knn.search_embeddings(ws.root, np.ones((1, 7), np.float32))


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_kinds_record_measured_recall(ws_with_vectors, kind):
    ws, vecs = ws_with_vectors(3000, d=32, rows_per_part=1000)
    s = knn.build(ws.root, kind=kind)
    info = json.loads(ws.path("faiss/info.json").read_text())["image"]
    assert s["image_index"] == info["kind"] == kind
    assert 0 < s["recall_at_10"] <= 1 and s["recall_at_10"] == info["recall_at_10"]
    assert s["recall_at_10"] >= (0.3 if kind == "ivfpq" else 0.8)
    manifest = json.loads(ws.path("manifest.json").read_text())
    assert manifest["stages"]["index"]["summary"]["recall_at_10"] == s["recall_at_10"]
    _, ids = knn.search_embeddings(ws.root, vecs[[5]], k=3)
    assert ids[0, 0] == 5 or kind == "ivfpq"


def test_auto_rule_follows_size_and_budget():
    assert knn._choose("auto", 10_000, 512, 1 << 30)["kind"] == "flat"
    ivf = knn._choose("auto", 1_000_000, 512, 4 << 30)
    assert ivf["kind"] == "ivf" and ivf["nlist"] == 4000 and ivf["nprobe"] == 250
    pq = knn._choose("auto", 1_000_000, 512, 1 << 30)
    assert pq["kind"] == "ivfpq" and 1_000_000 * (pq["m"] + 8) <= 1 << 30 and 512 % pq["m"] == 0
    tight = knn._choose("auto", 1_000_000, 512, 40 << 20)
    assert tight["m"] < pq["m"]


def test_hash_index_search_and_cli(tmp_path):
    imgs = [encode(synthetic_image(s, 72)) for s in range(12)] + [b"junk"]
    ws = build_workspace(tmp_path / "ws", imgs, rows_per_part=5)
    hashes.compute(ws.root, workers=1, fast_decode=False)
    r = CliRunner().invoke(cli, ["index", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert "12 phash codes" in r.output
    from audit.images import decode

    codes = hashes.hash_images([decode(imgs[7]), decode(imgs[2])])[:, 0]
    dist, ids = knn.search_hashes(ws.root, codes, k=3)
    assert ids[:, 0].tolist() == [7, 2] and dist[:, 0].tolist() == [0, 0]
    assert dist[0, 1] == min(
        int(codes[0] ^ hashes.hash_images([decode(imgs[j])])[0, 0]).bit_count()
        for j in range(12)
        if j != 7
    )
    dist, ids = knn.search_hashes(
        ws.root, hashes.hash_images([decode(imgs[4])])[:, 1], k=1, which="dhash"
    )
    assert ids[0, 0] == 4 and dist[0, 0] == 0
    assert (
        knn.codes_to_bytes(np.array([0x0123456789ABCDEF], np.uint64)).tobytes().hex()
        == "0123456789abcdef"
    )


def test_index_needs_a_stage_first(tmp_path):
    ws = build_workspace(tmp_path / "ws", [None, None])
    with pytest.raises(AuditError, match="audit embed"):
        knn.build(ws.root)
    with pytest.raises(AuditError, match="kind must be"):
        knn.build(ws.root, kind="lsh")
