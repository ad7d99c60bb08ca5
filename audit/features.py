"""Stage `features`: a faiss index of local image features, for copy candidates.

Global descriptors (pHash, an embedding) of a picture cropped to half its area, rotated by
15 degrees or mirrored no longer resemble the original's, so a nearest-neighbour search on
them misses exactly the copies a copier makes. Local features survive: most of a crop's
SIFT keypoints are the source's keypoints. So every training image contributes its
`PER_IMAGE` strongest RootSIFT descriptors (`audit.verify.extract`) to one faiss index, and
a query (with its mirror image) votes: each of its descriptors finds its `NEIGHBOURS`
nearest indexed descriptors, each neighbour close enough (`MAX_DISTANCE`) gives its image a
vote, at most one per query descriptor and image; the images with most votes are the
candidates, which `audit.verify` then checks geometrically.

Index kind: exact (`IndexFlatIP`) up to `FLAT_MAX` descriptors; beyond, an inverted file
with 8-bit scalar quantisation (`IndexIVFScalarQuantizer`, nlist = 4*sqrt(n), nprobe =
`NPROBE`), which scans about nprobe/nlist of the descriptors per query: sub-linear, 128
bytes per descriptor. RootSIFT vectors have unit length, so inner product ranks as L2.

Writes `features/owners.npy` (int64 row_id of each indexed descriptor), `faiss/features.faiss`
and `features/info.json` (kind, parameters, counts).

    >>> from audit import features
    >>> features.build("indexes/sample")                                # doctest: +SKIP
    >>> features.search("indexes/sample", [verify.extract(img)], k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from audit import verify
from audit.errors import AuditError
from audit.images import ImageProblem, decode, read_bytes
from audit.progress import track
from audit.schema import IMAGE_LOCATION
from audit.workspace import Output, Workspace, atomic_path, atomic_write_json, atomic_write_npy

STAGE = "features"
PER_IMAGE = 64  # descriptors indexed per training image (the strongest by SIFT response)
NEIGHBOURS = 8  # indexed descriptors looked up per query descriptor
MAX_DISTANCE = 0.5  # squared L2 between RootSIFT vectors for a vote (1 - cosine = d/2)
FLAT_MAX = 100_000
NPROBE = 16


def _index(n: int, d: int) -> tuple[Any, dict[str, Any]]:
    import faiss

    if n <= FLAT_MAX:
        return faiss.IndexFlatIP(d), {"kind": "flat"}
    nlist = int(min(65536, 4 * math.sqrt(n), n // 39))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]  # the IVF index owns it now
    index.nprobe = min(nlist, NPROBE)
    return index, {"kind": "ivf_sq8", "nlist": nlist, "nprobe": index.nprobe}


def index_descriptors(descriptors: Any, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A trained and filled faiss index over (n, 128) float32 descriptors (ids = positions)."""
    x = np.ascontiguousarray(descriptors, np.float32)
    index, spec = _index(len(x), x.shape[1])
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(len(x), min(len(x), 256 * spec["nlist"]), replace=False)]
        index.train(sample)
    index.add(x)
    return index, spec


def build(ws_root: str | os.PathLike[str], per_image: int = PER_IMAGE) -> dict[str, Any]:
    """Describe every image of the workspace and index the descriptors; returns the summary."""
    import faiss

    if per_image < 1:
        raise AuditError(f"per_image must be at least 1, got {per_image}")
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    run = ws.start_stage(STAGE, {"per_image": per_image}, depends_on=["ingest"])
    t0 = time.perf_counter()
    descs, owners, errors = [], [], 0
    rows = [
        r for p in parts for r in ws.read_part(p, columns=["row_id", *IMAGE_LOCATION]).to_pylist()
    ]
    for r in track(rows, total=len(rows), description="features"):
        if r["image_status"] != "ok" or not r["image_path"]:
            continue
        try:
            data = read_bytes(r["image_path"], r["image_offset"], r["image_size"])
            f = verify.extract(decode(data, draft_size=(verify.WORK_SIDE,) * 2))
        except ImageProblem:
            errors += 1
            continue
        if f.low_information is None and len(f.descriptors):
            descs.append(f.descriptors[:per_image])
            owners.append(np.full(len(descs[-1]), r["row_id"], np.int64))
    if not descs:
        raise AuditError(f"{ws.root} has no image with local features to index")
    x, own = np.concatenate(descs), np.concatenate(owners)
    index, spec = index_descriptors(x)
    atomic_write_npy(ws.path("features/owners.npy"), own)
    with atomic_path(ws.path("faiss/features.faiss")) as tmp:
        faiss.write_index(index, str(tmp))
    info = {
        **spec,
        "descriptors": int(len(x)),
        "images": int(len(np.unique(own))),
        "per_image": per_image,
        "neighbours": NEIGHBOURS,
        "max_distance": MAX_DISTANCE,
        "unreadable": errors,
    }
    atomic_write_json(ws.path("features/info.json"), info)
    summary = {**info, "seconds": round(time.perf_counter() - t0, 3)}
    run.finish(
        summary,
        [
            Output("features/owners.npy", rows=len(own)),
            Output("faiss/features.faiss", rows=len(own)),
            Output("features/info.json"),
        ],
    )
    return summary


def open_index(ws_root: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(faiss index, owners) of a workspace's feature index."""
    import faiss

    ws = Workspace.open(ws_root)
    path = ws.path("faiss/features.faiss")
    if not path.exists():
        raise AuditError(f"{ws.root} has no local-feature index. Run: audit features {ws.root}")
    index = faiss.read_index(str(path))
    info = json.loads(ws.path("features/info.json").read_text("utf-8"))
    if "nprobe" in info:
        faiss.extract_index_ivf(index).nprobe = info["nprobe"]
    return index, np.load(ws.path("features/owners.npy"))


def vote(
    index: Any, owners: Any, queries: Sequence[Sequence[verify.Features]], k: int = 10
) -> list[list[tuple[int, int]]]:
    """Top-k (row_id, votes) per query; a query is one or more feature sets (e.g. the image
    and its mirror image), whose votes add up."""
    sets = [[f.descriptors for f in q if len(f.descriptors)] for q in queries]
    flat = [d for s in sets for d in s]
    if not flat:
        return [[] for _ in queries]
    x = np.ascontiguousarray(np.concatenate(flat), np.float32)
    sim, pos = index.search(x, NEIGHBOURS)
    close = (pos >= 0) & (2 - 2 * sim <= MAX_DISTANCE)
    out, start = [], 0
    for s in sets:
        n = sum(len(d) for d in s)
        p, c = pos[start : start + n], close[start : start + n]
        start += n
        ids = np.where(c, owners[np.where(p >= 0, p, 0)], -1)
        pairs = np.unique(np.c_[np.repeat(np.arange(n), ids.shape[1]), ids.ravel()], axis=0)
        rows, votes = np.unique(pairs[pairs[:, 1] >= 0, 1], return_counts=True)
        top = np.argsort(-votes, kind="stable")[:k]
        out.append([(int(rows[t]), int(votes[t])) for t in top])
    return out


def search(
    ws_root: str | os.PathLike[str], queries: Sequence[Sequence[verify.Features]], k: int = 10
) -> list[list[tuple[int, int]]]:
    """`vote` against a workspace's index (`build` first)."""
    index, owners = open_index(ws_root)
    return vote(index, owners, queries, k)
