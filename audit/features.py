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

Index kind: exact (`IndexFlatIP`) up to `FLAT_MAX` descriptors (`THUMB_FLAT_MAX`
thumbnails); beyond, an inverted file with 8-bit scalar quantisation
(`IndexIVFScalarQuantizer`, nlist = 4*sqrt(n), nprobe = `NPROBE`), which scans about
nprobe/nlist of the descriptors per query: sub-linear, 128 bytes per descriptor. RootSIFT vectors have unit length, so inner product ranks as L2.

**Content thumbnails** catch what the votes miss: a rescaled, blurred or JPEG-compressed
copy of a small drawing keeps too few of its keypoints to outvote the other pictures, yet
looks the same at 16x16. So every image also gets a global descriptor of *the drawing
itself* (`content_thumbnail`): the background, and any frame or rotation fill, flooded
away from the corners (a flood that starts on a colour other than white takes its
antialiased edge with it, then floods again), the rest cut to the bounding box of its ink,
resized to `THUMB_SIDE` x `THUMB_SIDE` grey and standardised. A frame around a copy, the
white margin of its source and the fill of a rotation all vanish, and the scale with them.
A query is searched as itself, mirrored, and rotated back by each of `QUERY_ANGLES`
(`query_thumbnails`: 18 vectors), each training row keeping its best similarity. Crops
change the bounding box, which is what the local features are for.

Writes `features/owners.npy` (int64 row_id of each indexed descriptor), `faiss/features.faiss`,
`features/thumbnail_owners.npy` (row_id of each content thumbnail), `faiss/thumbnails.faiss`
and `features/info.json` (kinds, parameters, counts).

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

THUMB_SIDE = 16  # content thumbnail side: 256 dimensions
# One thumbnail per image, but 18 per query and twice the dimensions of a descriptor: exact
# search of 100,000 of them costs tens of ms per query, so the IVF takes over sooner.
THUMB_FLAT_MAX = 20_000
# The rotations a copier applies are within 20 degrees; a query is rotated back by each
# of these, so the search sees a copy within 2.5 degrees of upright.
QUERY_ANGLES = (0, -5, 5, -10, 10, -15, 15, -20, 20)


def _index(n: int, d: int, flat_max: int = FLAT_MAX) -> tuple[Any, dict[str, Any]]:
    import faiss

    if n <= flat_max:
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


def index_descriptors(
    descriptors: Any, seed: int = 0, flat_max: int = FLAT_MAX
) -> tuple[Any, dict[str, Any]]:
    """A trained and filled faiss index over (n, d) float32 unit vectors (ids = positions):
    exact up to `flat_max` of them, IVF-SQ8 beyond."""
    x = np.ascontiguousarray(descriptors, np.float32)
    index, spec = _index(len(x), x.shape[1], flat_max)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(len(x), min(len(x), 256 * spec["nlist"]), replace=False)]
        index.train(sample)
    index.add(x)
    return index, spec


# -- content thumbnails -----------------------------------------------------------------------
def _standardised_thumbnail(grey: Any) -> Any:
    """The ink's bounding box of a white-background grey image, as a unit-length vector."""
    import cv2

    drawn = verify.ink(grey)
    if drawn.mean() >= verify.MIN_INK / 4:
        r, c = np.flatnonzero(drawn.any(1)), np.flatnonzero(drawn.any(0))
        grey = grey[r[0] : r[-1] + 1, c[0] : c[-1] + 1]
    side = (THUMB_SIDE, THUMB_SIDE)
    t = cv2.resize(grey, side, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / max(float(np.linalg.norm(t)), 1e-6)


def content_thumbnail(grey: Any) -> Any:
    """(THUMB_SIDE**2,) float32 unit vector describing the drawing in a grey working-size
    image (`verify.Features.grey`), whatever its margin, frame or scale."""
    return _standardised_thumbnail(verify.background_whitened(grey))


def query_thumbnails(grey: Any) -> Any:
    """(2 * len(QUERY_ANGLES), THUMB_SIDE**2) content thumbnails of a query: as it is and
    mirrored, each rotated by every angle of `QUERY_ANGLES` on white."""
    import cv2

    clean = verify.background_whitened(grey)
    out = []
    for m in (clean, np.ascontiguousarray(clean[:, ::-1])):
        h, w = m.shape
        for angle in QUERY_ANGLES:
            if angle == 0:
                out.append(_standardised_thumbnail(m))
                continue
            rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
            nw, nh = int(h * sin + w * cos + 0.5), int(h * cos + w * sin + 0.5)
            rot[0, 2] += nw / 2 - w / 2
            rot[1, 2] += nh / 2 - h / 2
            turned = cv2.warpAffine(m, rot, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=255)
            out.append(_standardised_thumbnail(turned))
    return np.stack(out).astype(np.float32)


def nearest_thumbnails(
    index: Any, owners: Any, greys: Sequence[Any], k: int = 10
) -> list[list[tuple[int, float]]]:
    """Top-k (row_id, similarity) per query grey image, over its `query_thumbnails`."""
    if not greys:
        return []
    per = 2 * len(QUERY_ANGLES)
    x = np.concatenate([query_thumbnails(g) for g in greys])
    sim, pos = index.search(x, k)
    out = []
    for q in range(len(greys)):
        best: dict[int, float] = {}
        s, p = sim[q * per : (q + 1) * per].ravel(), pos[q * per : (q + 1) * per].ravel()
        for v, i in zip(s.tolist(), p.tolist(), strict=True):
            if i >= 0:
                row = int(owners[i])
                best[row] = max(best.get(row, -2.0), v)
        top = sorted(best.items(), key=lambda t: (-t[1], t[0]))[:k]
        out.append([(r, round(v, 4)) for r, v in top])
    return out


def build(ws_root: str | os.PathLike[str], per_image: int = PER_IMAGE) -> dict[str, Any]:
    """Describe every image of the workspace and index the descriptors; returns the summary."""
    import faiss

    if per_image < 1:
        raise AuditError(f"per_image must be at least 1, got {per_image}")
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    run = ws.start_stage(STAGE, {"per_image": per_image}, depends_on=["ingest"])
    t0 = time.perf_counter()
    descs, owners, thumbs, thumb_owners, errors = [], [], [], [], 0
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
        if f.low_information is not None:
            continue
        thumbs.append(content_thumbnail(f.grey))
        thumb_owners.append(r["row_id"])
        if len(f.descriptors):
            descs.append(f.descriptors[:per_image])
            owners.append(np.full(len(descs[-1]), r["row_id"], np.int64))
    if not descs:
        raise AuditError(f"{ws.root} has no image with local features to index")
    x, own = np.concatenate(descs), np.concatenate(owners)
    index, spec = index_descriptors(x)
    atomic_write_npy(ws.path("features/owners.npy"), own)
    with atomic_path(ws.path("faiss/features.faiss")) as tmp:
        faiss.write_index(index, str(tmp))
    t_index, t_spec = index_descriptors(np.stack(thumbs), flat_max=THUMB_FLAT_MAX)
    atomic_write_npy(ws.path("features/thumbnail_owners.npy"), np.asarray(thumb_owners, np.int64))
    with atomic_path(ws.path("faiss/thumbnails.faiss")) as tmp:
        faiss.write_index(t_index, str(tmp))
    info = {
        **spec,
        "descriptors": int(len(x)),
        "images": int(len(np.unique(own))),
        "per_image": per_image,
        "neighbours": NEIGHBOURS,
        "max_distance": MAX_DISTANCE,
        "unreadable": errors,
        "thumbnails": {**t_spec, "images": len(thumb_owners), "side": THUMB_SIDE},
    }
    atomic_write_json(ws.path("features/info.json"), info)
    summary = {**info, "seconds": round(time.perf_counter() - t0, 3)}
    run.finish(
        summary,
        [
            Output("features/owners.npy", rows=len(own)),
            Output("faiss/features.faiss", rows=len(own)),
            Output("features/thumbnail_owners.npy", rows=len(thumb_owners)),
            Output("faiss/thumbnails.faiss", rows=len(thumb_owners)),
            Output("features/info.json"),
        ],
    )
    return summary


def _open(
    ws: Workspace, index_path: str, owners_path: str, info: dict[str, Any]
) -> tuple[Any, Any]:
    """(faiss index, owners) at these workspace paths, with the IVF's recorded nprobe."""
    import faiss

    index = faiss.read_index(str(ws.path(index_path)))
    if "nprobe" in info:
        faiss.extract_index_ivf(index).nprobe = info["nprobe"]
    return index, np.load(ws.path(owners_path))


def _info(ws: Workspace) -> dict[str, Any]:
    return dict(json.loads(ws.path("features/info.json").read_text("utf-8")))


def open_index(ws_root: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(faiss index, owners) of a workspace's feature index."""
    ws = Workspace.open(ws_root)
    if not ws.path("faiss/features.faiss").exists():
        raise AuditError(f"{ws.root} has no local-feature index. Run: audit features {ws.root}")
    return _open(ws, "faiss/features.faiss", "features/owners.npy", _info(ws))


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


def open_thumbnails(ws_root: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(faiss index, owners) of a workspace's content thumbnails."""
    ws = Workspace.open(ws_root)
    if not ws.path("faiss/thumbnails.faiss").exists():
        raise AuditError(
            f"{ws.root} has no content-thumbnail index (built by `audit features` since "
            f"2026-12-02). Run: audit features {ws.root}"
        )
    info = _info(ws).get("thumbnails", {})
    return _open(ws, "faiss/thumbnails.faiss", "features/thumbnail_owners.npy", info)


def search_thumbnails(
    ws_root: str | os.PathLike[str], greys: Sequence[Any], k: int = 10
) -> list[list[tuple[int, float]]]:
    """`nearest_thumbnails` against a workspace's content thumbnails (`build` first)."""
    index, owners = open_thumbnails(ws_root)
    return nearest_thumbnails(index, owners, greys, k)
