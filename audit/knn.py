"""Stage `index`: faiss indexes over image embeddings and pHash codes; ids are row_ids.

Writes `faiss/img.faiss` (inner product over the L2-normalised image embeddings, so scores
are cosines; rows whose image failed are left out), `faiss/phash.faiss` (binary, Hamming) and
`faiss/info.json` (kind, parameters, memory, measured recall@10).

Choice of the image index (`kind="auto"`), for n vectors of dimension d and a budget B bytes:
  * n <= 20,000: `flat` (IndexFlatIP, exact; a query scans n*d floats in well under 10 ms);
  * else if n*d*4 (the raw vectors) <= B: `ivf` (IndexIVFFlat, nlist = 4*sqrt(n) cells,
    nprobe = nlist/16 at least 16), exact distances on the probed cells;
  * else `ivfpq` (IndexIVFPQ, m = the largest of d/4, d/8, d/16, ... with n*(m+8) <= B bytes
    per-code, 8 bits per sub-quantizer).
`hnsw` (IndexHNSWFlat, M=32, efSearch=64) is available on request: fast queries but slow to
build on two cores. Whatever the kind, recall@10 against exact search is measured on up to
200 sampled rows used as queries and recorded in `info.json` and the manifest summary.

pHash codes go into an IndexBinaryFlat (exhaustive Hamming on packed 64-bit codes, ~1 ms per
query per million codes). A code's bytes are its big-endian bytes, i.e. the hex string order.

Example:
    >>> from audit import knn
    >>> knn.build("indexes/sample", memory_budget_mb=512)                   # doctest: +SKIP
    >>> scores, row_ids = knn.search_embeddings("indexes/sample", queries, k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np

from audit.engines.local import PartResult
from audit.errors import AuditError
from audit.schema import HASHES
from audit.workspace import (
    Output,
    Part,
    Workspace,
    atomic_path,
    atomic_write_json,
    load_npy,
    open_file,
    read_faiss,
)

STAGE = "index"
KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
FLAT_MAX = 20_000
RECALL_QUERIES = 200


def _embedding_parts(ws: Workspace) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row_ids, float16 vectors memory-mapped) of each part, rows with a zero vector removed."""
    out = []
    for part in ws.require_parts():
        path = ws.path(f"embeddings/img-{part.stem}.npy")
        if not path.exists():
            raise AuditError(f"{path} is missing. Run: audit embed {ws.root}")
        vecs = load_npy(path)
        keep = np.flatnonzero(np.any(vecs != 0, axis=1))
        out.append((part.row_offset + keep.astype(np.int64), vecs[keep]))
    return out


def _choose(kind: str, n: int, d: int, budget: int) -> dict[str, Any]:
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX else ("ivf" if n * d * 4 <= budget else "ivfpq")
    spec: dict[str, Any] = {"kind": kind}
    if kind in ("ivf", "ivfpq"):
        nlist = int(
            min(65536, max(1, 4 * math.sqrt(n)), max(1, n // 39))
        )  # faiss wants >= 39 points/cell
        spec.update(nlist=nlist, nprobe=min(nlist, max(16, nlist // 16)))
    if kind == "ivfpq":
        m = d // 4
        while m > 1 and (d % m or n * (m + 8) > budget):
            m //= 2
        spec.update(m=max(1, m), nbits=8 if n >= 256 * 39 else 4)
    if kind == "hnsw":
        spec.update(M=32, efSearch=64)
    return spec


def _new_index(spec: dict[str, Any], d: int) -> Any:
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if spec["kind"] == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    if spec["kind"] == "hnsw":
        inner = faiss.IndexHNSWFlat(d, spec["M"], ip)
        inner.hnsw.efSearch = spec["efSearch"]
        return faiss.IndexIDMap2(inner)
    quantizer = faiss.IndexFlatIP(d)
    index: Any
    if spec["kind"] == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, spec["nlist"], ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, spec["nlist"], spec["m"], spec["nbits"], ip)
    index.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]  # the IVF index now owns its quantizer
    index.nprobe = spec["nprobe"]
    return index


def _exact_top(
    parts: list[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int
) -> np.ndarray:
    """Row ids of the exact top-k inner products, scanning the parts (no index, bounded memory)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for row_ids, vecs in parts:
        for s in range(0, len(row_ids), 65536):
            sims = queries @ np.asarray(vecs[s : s + 65536], np.float32).T
            best_s = np.concatenate([best_s, sims], 1)
            best_i = np.concatenate(
                [best_i, np.broadcast_to(row_ids[s : s + 65536], sims.shape)], 1
            )
            top = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(best_s, top, 1), np.take_along_axis(best_i, top, 1)
    return best_i


def _gather(parts: list[tuple[np.ndarray, np.ndarray]], positions: np.ndarray) -> np.ndarray:
    """float32 vectors at sorted global positions (counting kept rows across parts)."""
    out, start = [], 0
    for row_ids, vecs in parts:
        sel = positions[(positions >= start) & (positions < start + len(row_ids))] - start
        out.append(np.asarray(vecs[sel], np.float32))
        start += len(row_ids)
    return np.concatenate(out)


def _add(index: Any, row_ids: np.ndarray, vecs: np.ndarray) -> None:
    for s in range(0, len(row_ids), 65536):
        index.add_with_ids(
            np.ascontiguousarray(vecs[s : s + 65536], np.float32), row_ids[s : s + 65536]
        )


def _build_sharded(ws: Workspace, index: Any, runner: Any) -> Any:
    """Each part's vectors added to a copy of the trained, empty index by the engine's workers
    (`index_part`), then the shards merged here in part order: the same index, byte for byte,
    as adding every part in this process. Shards are temporary and removed once merged."""
    import faiss

    empty = "faiss/shards/empty.faiss"
    with atomic_path(ws.path(empty)) as tmp:
        faiss.write_index(index, str(tmp))
    parts = ws.require_parts()
    shards = dict(runner.map_parts("audit.knn:index_part", ws.root, parts, {"empty": empty}))
    for part in parts:
        rel = shards[part].outputs[0].path
        index.merge_from(read_faiss(ws.path(rel)), 0)  # 0: keep the row_ids
        ws.path(rel).unlink()
    ws.path(empty).unlink()
    return index


def index_part(ws_root: str, part: Part, empty: str) -> PartResult:
    """Add one part's image vectors to the trained empty index `empty`; write the shard."""
    import faiss

    ws = Workspace.open(ws_root)
    index = read_faiss(ws.path(empty))
    vecs = load_npy(ws.path(f"embeddings/img-{part.stem}.npy"))
    keep = np.flatnonzero(np.any(vecs != 0, axis=1))
    _add(index, part.row_offset + keep.astype(np.int64), vecs[keep])
    rel = f"faiss/shards/img-{part.stem}.faiss"
    with atomic_path(ws.path(rel)) as tmp:
        faiss.write_index(index, str(tmp))
    return PartResult([Output(rel, len(keep))])


def _build_image_index(ws: Workspace, kind: str, budget: int, runner: Any = None) -> dict[str, Any]:
    import faiss

    parts = _embedding_parts(ws)
    n = sum(len(r) for r, _ in parts)
    if n == 0:
        return {"kind": None, "vectors": 0}
    d = parts[0][1].shape[1]
    spec = _choose(kind, n, d, budget)
    index = _new_index(spec, d)
    rng = np.random.default_rng(0)
    if not index.is_trained:  # train on a seeded sample gathered across parts
        size = min(n, max(256 * spec["nlist"], 50_000))
        index.train(_gather(parts, np.sort(rng.choice(n, size=size, replace=False))))
    if runner is None or runner.in_process or spec["kind"] == "hnsw":  # HNSW cannot merge
        for row_ids, vecs in parts:
            _add(index, row_ids, vecs)
    else:
        index = _build_sharded(ws, index, runner)
    queries = _gather(parts, np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False)))
    k = min(10, n)
    exact = _exact_top(parts, queries, k)
    _, approx = index.search(queries, k)
    recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))
    rel = "faiss/img.faiss"
    with atomic_path(ws.path(rel)) as tmp:
        faiss.write_index(index, str(tmp))
    return dict(
        spec,
        vectors=n,
        dim=d,
        path=rel,
        recall_at_10=round(recall, 4),
        recall_queries=len(queries),
        bytes=ws.path(rel).stat().st_size,
    )


def codes_to_bytes(codes: np.ndarray) -> np.ndarray:
    """uint64 codes -> (N, 8) uint8 rows for faiss binary indexes (big-endian: hex order)."""
    return np.ascontiguousarray(
        np.asarray(codes, np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8)
    )


def _read_codes(ws: Workspace, which: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    ws.require_hashes([which], by=f"a {which} index")
    ids, codes = [], []
    for part in ws.require_parts():
        path = ws.path(f"hashes/part-{part.stem}.parquet")
        if not path.exists():
            raise AuditError(f"{path} is missing. Run: audit hash {ws.root}")
        with open_file(path) as f:
            t = pq.read_table(f, columns=["row_id", which])
        valid = t[which].is_valid().to_numpy(zero_copy_only=False)
        ids.append(t["row_id"].to_numpy()[valid])
        codes.append(t[which].fill_null(0).to_numpy()[valid])
    return np.concatenate(ids).astype(np.int64), np.concatenate(codes).astype(np.uint64)


def _build_hash_index(ws: Workspace) -> dict[str, Any]:
    import faiss

    row_ids, codes = _read_codes(ws, "phash")
    index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(64))
    if len(codes):
        index.add_with_ids(codes_to_bytes(codes), row_ids)
    rel = "faiss/phash.faiss"
    with atomic_path(ws.path(rel)) as tmp:
        faiss.write_index_binary(index, str(tmp))
    return {
        "kind": "binary_flat",
        "codes": int(len(codes)),
        "path": rel,
        "bytes": ws.path(rel).stat().st_size,
    }


def build(
    ws_root: str | os.PathLike[str],
    memory_budget_mb: int = 1024,
    kind: str = "auto",
    engine: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Build the faiss indexes of the workspace (stage `index`); returns the summary.

    Needs `audit embed` (image index) and/or `audit hash` (pHash index); builds what it can.
    With `engine="ray"` the image index is built in shards, one per part, by Ray workers and
    merged here (flat, ivf, ivfpq; hnsw is built here), with the same bytes and recall.
    """
    from audit import engines

    if kind not in KINDS:
        raise AuditError(f"kind must be one of {', '.join(KINDS)} (got {kind!r}).")
    if memory_budget_mb < 1:
        raise AuditError(f"memory_budget_mb must be >= 1 (got {memory_budget_mb}).")
    ws = Workspace.open(ws_root)
    ws.require_parts()
    deps = [s for s in ("embed", "hash") if ws.stage_fingerprint(s)]
    if not deps:
        raise AuditError(
            f"nothing to index in {ws.root}: run `audit embed {ws.root}` and/or `audit hash {ws.root}` first."
        )
    run = ws.start_stage(
        STAGE, {"memory_budget_mb": memory_budget_mb, "kind": kind}, depends_on=deps
    )
    t0 = time.perf_counter()
    info: dict[str, Any] = {
        "rule": __doc__.split("Choice of the image index")[1].split("Example:")[0].strip()
    }
    outputs = []
    if "embed" in deps:
        runner = engines.get(engine, ray_address)
        info["image"] = _build_image_index(ws, kind, memory_budget_mb << 20, runner)
        if info["image"].get("path"):
            outputs.append(Output(info["image"]["path"], info["image"]["vectors"]))
    if "hash" in deps:
        info["phash"] = _build_hash_index(ws)
        outputs.append(Output(info["phash"]["path"], info["phash"]["codes"]))
    atomic_write_json(ws.path("faiss/info.json"), info)
    outputs.append(Output("faiss/info.json"))
    image = info.get("image", {})
    summary = {
        "image_index": image.get("kind"),
        "image_vectors": image.get("vectors", 0),
        "recall_at_10": image.get("recall_at_10"),
        "hash_codes": info.get("phash", {}).get("codes", 0),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    run.finish(summary, outputs)
    return summary


def _info(ws: Workspace) -> dict[str, Any]:
    path = ws.path("faiss/info.json")
    if not path.exists():
        raise AuditError(f"{ws.root} has no faiss indexes yet. Run: audit index {ws.root}")
    return json.loads(path.read_text())


def open_embedding_index(ws_root: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The image-embedding faiss index (ids are row_ids, scores are cosines) and its info."""
    import faiss

    ws = Workspace.open(ws_root)
    info = _info(ws).get("image") or {}
    if not info.get("path"):
        raise AuditError(
            f"{ws.root} has no image index (no embeddings when it was built). "
            f"Run: audit embed {ws.root} && audit index {ws.root}"
        )
    index = read_faiss(ws.path(info["path"]))
    if "nprobe" in info:
        faiss.extract_index_ivf(index).nprobe = info["nprobe"]
    return index, info


def search_embeddings(
    ws_root: str | os.PathLike[str], queries: np.ndarray, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (cosine scores, row_ids) for L2-normalised query vectors; row_id -1 = no result."""
    index, info = open_embedding_index(ws_root)
    q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    if q.shape[1] != index.d:
        raise AuditError(
            f"queries have dimension {q.shape[1]} but the index has {index.d}: "
            "embed them with the model recorded in embeddings/model.json."
        )
    scores, ids = index.search(q, k)
    return scores, ids


def search_hashes(
    ws_root: str | os.PathLike[str], codes: np.ndarray, k: int = 10, which: str = "phash"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (Hamming distances, row_ids) for uint64 codes; `which` picks the hash.

    pHash uses the stored index; other hashes are indexed in memory from hashes/ on the fly.
    """
    import faiss

    if which not in HASHES:
        raise AuditError(f"which must be one of {', '.join(HASHES)} (got {which!r}).")
    ws = Workspace.open(ws_root)
    if which == "phash":
        info = _info(ws).get("phash") or {}
        if not info.get("path"):
            raise AuditError(
                f"{ws.root} has no pHash index. Run: audit hash {ws.root} && audit index {ws.root}"
            )
        index = read_faiss(ws.path(info["path"]), binary=True)
    else:
        row_ids, stored = _read_codes(ws, which)
        index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(64))
        index.add_with_ids(codes_to_bytes(stored), row_ids)
    dist, ids = index.search(codes_to_bytes(np.atleast_1d(codes)), k)
    return dist, ids
