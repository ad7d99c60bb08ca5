"""Match query images against a training workspace: candidates, evidence, one verdict.

Shared by `audit match` (queries = generated images) and `audit calibrate` (queries =
transformed training images and held-out images), so calibration measures the very code
that decides.

**Candidates** are the union of five searches, each taking the top k: the workspace's
embedding index; the pHash index, for the query and its mirror image (pHash is not
mirror-invariant); local-feature votes (`audit.features`, query and mirror: survives crops
and rotations, which no global descriptor does); content thumbnails (`audit.features`,
the drawing cut from its margin, frame or fill, searched mirrored and rotated back:
survives the rescales, blurs, JPEG, borders and rotations that leave a small drawing too
few keypoints to win the vote); and a learned copy descriptor when one is given
(`audit.descriptors`, e.g. SSCD).

**Evidence**, per candidate: the geometric verifier (`audit.verify`: RANSAC inliers and the
aligned correlation), Carlini et al.'s tiled l2 and relative criterion, the four hash
distances, the embedding cosine, and the learned descriptor's similarity.

**Verdict**, keeping the strongest candidate:
- `low_information`: the query is blank, near-uniform or a tiny foreground on a plain
  background (`verify.information`): any pixel distance or hash would call it a copy of
  every other such picture, so it is not judged; the reason is recorded.
- `copy`: the verifier's verdict (enough inliers on one plausible transform, or the
  identity, with a high correlation over the aligned overlap and no sizeable blob of the
  query left unexplained: `verify.MAX_UNEXPLAINED`), or the learned descriptor at
  its copy threshold (SSCD >= 0.5 as Somepalli et al.). Never a pixel distance or one hash
  alone, and never against a low-information training image.
- `near`: the verifier found a plausible transform with `verify.MIN_INLIERS` inliers but
  too low a correlation, or a copy but for a blob it leaves unexplained (a drawing added to
  a training picture, a training picture drawn among other ink, a generated copy with a
  smudge: `verify.held_back_by_unexplained`),
  or one global descriptor passes its *copy* threshold (tiled l2, relative, pHash or, with
  trained weights, cosine) without the verifier agreeing. The
  descriptors' near thresholds no longer make a pair `near`: in `audit calibrate` on a
  2,000-image openclipart workspace (seeds 0 and 2) they made 37-41% of the negatives
  `near`; geometric support or a copy-level descriptor makes 2-3% of them `near` (the
  negatives called `copy` included) and 85-88% of the copies at least `near`.
- `novel`: nothing of the above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from audit import verify
from audit.checks.memorisation.core import (
    DEFAULT_THRESHOLDS,
    Thresholds,
    decide,
    hamming,
    read_rows,
    relative_distances,
    tile_distances,
    to_pixels,
)
from audit.images import ImageProblem, decode, read_bytes
from audit.schema import HASHES, IMAGE_LOCATION
from audit.workspace import Workspace

VERDICTS = ("copy", "near", "novel", "low_information")
SEARCHES = ("embedding", "phash", "features", "thumbnail", "descriptor")


@dataclass
class Reference:
    """The training side: a workspace, the functions that search it, what is loaded of it."""

    ws: Workspace
    search_hashes: Callable[..., tuple[Any, Any]]
    search_features: Callable[[Path, list[list[verify.Features]], int], list[list[Any]]]
    codes: Any  # (rows, 4) int64 hash codes
    codes_ok: Any
    embeddings: Any = None  # (rows, d), or None
    search_embeddings: Callable[[Any, Any, int], tuple[Any, Any]] | None = None
    use_cosine: bool = False
    descriptor_vectors: Any = None  # (rows, d) learned copy descriptor, or None
    descriptor_threshold: float = 0.5
    exclude: frozenset[int] = frozenset()  # rows treated as absent (calibration's negatives)
    cache: dict[int, Any] = field(default_factory=dict)  # row -> decoded and described
    cache_size: int = 2000  # described candidates kept (about 0.3 MB each)
    # (ws_root, grey query images, k) -> top-k (row_id, similarity) of the content thumbnails
    search_thumbnails: Callable[[Path, list[Any], int], list[list[Any]]] | None = None


@dataclass
class Query:
    """One image to match: the picture, its embedding and learned descriptor if any."""

    image: Any  # PIL image or ImageProblem
    embedding: Any = None
    descriptor: Any = None


def load_image(ws: Workspace, rec: dict[str, Any]) -> Any:
    """A workspace row's image at the verifier's working size, or an ImageProblem."""
    if rec["image_status"] != "ok" or not rec["image_path"]:
        return ImageProblem("image_missing", f"row {rec['row_id']} has no usable image")
    try:
        data = read_bytes(rec["image_path"], rec["image_offset"], rec["image_size"])
        img = decode(data, draft_size=(verify.WORK_SIDE,) * 2)
    except ImageProblem as p:
        return p
    img.thumbnail((verify.WORK_SIDE,) * 2)
    return img


def _load(ref: Reference, rows: set[int]) -> None:
    """Decode, describe and cache the candidates not yet cached."""
    todo = sorted(r for r in rows if r not in ref.cache)
    for r in list(ref.cache)[: max(0, len(ref.cache) + len(todo) - ref.cache_size)]:
        if r not in rows:  # the oldest entries go first (dicts keep insertion order)
            del ref.cache[r]
    for rid, rec in read_rows(ref.ws, todo, [*IMAGE_LOCATION, "image_sha256"]).items():
        img = load_image(ref.ws, {**rec, "row_id": rid})
        if isinstance(img, ImageProblem):
            ref.cache[rid] = img
        else:
            ref.cache[rid] = (img, verify.extract(img), to_pixels(img), rec["image_sha256"])


def _top(ids: Any, exclude: frozenset[int], k: int) -> list[int]:
    return [int(r) for r in ids if r >= 0 and int(r) not in exclude][:k]


def candidates(
    queries: list[Query], feats: list[Any], ref: Reference, hash_images: Callable, k: int
) -> list[dict[str, list[int]]]:
    """Per query, the top-k row_ids of each search (excluded rows removed)."""
    from PIL import ImageOps

    kk = k + min(len(ref.exclude), 16)  # room for excluded rows at the top
    half = max(1, k // 2)  # pHash: half from the query, half from its mirror image
    ok = [i for i, q in enumerate(queries) if not isinstance(q.image, ImageProblem)]
    out: list[dict[str, list[int]]] = [{} for _ in queries]
    if not ok:
        return out
    imgs = [queries[i].image for i in ok]
    codes = np.asarray(hash_images(imgs + [ImageOps.mirror(im) for im in imgs])).view(np.int64)
    _, ids_h = ref.search_hashes(ref.ws.root, codes[:, 0], kk, which="phash")
    votes = ref.search_features(ref.ws.root, [feats[i] for i in ok], kk)
    thumbs = (
        ref.search_thumbnails(ref.ws.root, [feats[i][0].grey for i in ok], kk)
        if ref.search_thumbnails
        else None
    )
    ids_e = None
    # random weights retrieve noise: the embedding search runs only with a trained model
    if ref.use_cosine and ref.search_embeddings and queries[ok[0]].embedding is not None:
        q = np.stack([queries[i].embedding for i in ok]).astype(np.float32)
        _, ids_e = ref.search_embeddings(ref.ws.root, q, kk)
    for j, i in enumerate(ok):
        found = {
            "phash": _top(ids_h[j], ref.exclude, half)
            + _top(ids_h[j + len(ok)], ref.exclude, half),
            "features": _top([r for r, _ in votes[j]], ref.exclude, k),
        }
        if thumbs is not None:
            found["thumbnail"] = _top([r for r, _ in thumbs[j]], ref.exclude, k)
        if ids_e is not None:
            found["embedding"] = _top(ids_e[j], ref.exclude, k)
        if ref.descriptor_vectors is not None and queries[i].descriptor is not None:
            sims = ref.descriptor_vectors @ queries[i].descriptor
            found["descriptor"] = _top(np.argsort(-sims)[:kk], ref.exclude, k)
        out[i] = found
    return out


def match_images(
    queries: list[Query],
    ref: Reference,
    hash_images: Callable[[list[Any]], Any],
    k: int = 10,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> list[dict[str, Any]]:
    """One result row per query (see the module docstring for the verdict)."""
    feats = [
        ()
        if isinstance(q.image, ImageProblem)
        else (verify.extract(q.image), verify.extract(q.image, mirrored=True))
        for q in queries
    ]
    found = candidates(queries, feats, ref, hash_images, k)
    ok = [not isinstance(q.image, ImageProblem) for q in queries]
    codes = np.zeros((len(queries), len(HASHES)), np.int64)
    if any(ok):
        imgs = [q.image for q, good in zip(queries, ok, strict=True) if good]
        codes[np.flatnonzero(ok)] = np.asarray(hash_images(imgs)).view(np.int64)
    rows = []
    for i, q in enumerate(queries):
        if not ok[i]:
            rows.append({"verdict": "novel", "error": q.image.reason, "candidates": 0})
            continue
        cand = sorted({r for ids in found[i].values() for r in ids})
        _load(ref, set(cand))
        cand = [r for r in cand if not isinstance(ref.cache.get(r), ImageProblem | None)]
        if not cand:
            rows.append({"verdict": "novel", "error": "no_candidates", "candidates": 0})
            continue
        rows.append(_judge(q, feats[i], codes[i], cand, found[i], ref, thresholds))
    return rows


def _judge(
    q: Query,
    qf: Any,
    code: Any,
    cand: list[int],
    found: dict[str, list[int]],
    ref: Reference,
    th: Thresholds,
) -> dict[str, Any]:
    """Score every candidate of one query and keep the strongest."""
    c = np.asarray(cand, np.int64)
    entries = [ref.cache[r] for r in cand]
    ev = [verify.verify(q.image, e[0], qf, e[1]) for e in entries]
    qpx = to_pixels(q.image)
    px = np.stack([e[2] for e in entries])
    tile = tile_distances(np.broadcast_to(qpx, px.shape), px).astype(np.float64)
    distinct: dict[Any, float] = {}
    for r, e, d in zip(cand, entries, tile, strict=True):
        distinct[e[3] or r] = min(distinct.get(e[3] or r, np.inf), float(d))
    rel = relative_distances(tile, list(distinct.values()), th.alpha)
    hams = hamming(code[None, :], ref.codes[c]).astype(np.float64)
    hams[~ref.codes_ok[c]] = np.nan
    cos = (
        ref.embeddings[c] @ q.embedding
        if ref.embeddings is not None and q.embedding is not None
        else np.full(len(c), np.nan)
    )
    dsim = (
        ref.descriptor_vectors[c] @ q.descriptor
        if ref.descriptor_vectors is not None and q.descriptor is not None
        else np.full(len(c), np.nan)
    )
    old, votes = decide(tile, rel, hams[:, 0], cos, th, ref.use_cosine)
    # one global descriptor at its *copy* threshold (the near thresholds voting off)
    alone_strong, _ = decide(
        tile,
        rel,
        hams[:, 0],
        cos,
        replace(th, near_tile=None, near_relative=None, near_hamming=None, near_cosine=None),
        ref.use_cosine,
    )
    cand_low = np.array([e[1].low_information is not None for e in entries])
    geo = np.array([verify.is_copy(e) for e in ev])
    with np.errstate(invalid="ignore"):
        learned = (dsim >= ref.descriptor_threshold) & ~cand_low
    supported = np.array(
        [
            (e.hypothesis == "similarity" and e.inliers >= verify.MIN_INLIERS)
            or verify.held_back_by_unexplained(e)
            for e in ev
        ]
    )
    # `near` needs geometric support or one descriptor at its copy threshold: the near
    # thresholds' votes made 37-41% of calibration negatives `near` (module docstring)
    strong = (alone_strong == 0) & ~cand_low
    code3 = np.where(geo | learned, 0, np.where(strong | supported, 1, 2))
    strength = np.array([verify.strength(e) for e in ev])
    b = int(np.lexsort((-strength, code3))[0])
    e = ev[b]
    reason = qf[0].low_information
    verdict = "low_information" if reason else VERDICTS[code3[b]]
    row: dict[str, Any] = {
        "train_row_id": cand[b],
        "verdict": verdict,
        "reason": reason or (f"training image: {e.low_information}" if cand_low[b] else None),
        "tile_distance": float(tile[b]),
        "relative_distance": float(rel[b]),
        "cosine": float(cos[b]),
        "descriptor_similarity": None if np.isnan(dsim[b]) else float(dsim[b]),
        "votes": int(votes[b]),
        "candidates": len(cand),
        "found_by": "+".join(s for s in SEARCHES if cand[b] in found.get(s, ())),
        "inliers": e.inliers,
        "matches": e.matches,
        "hypothesis": e.hypothesis,
        "mirrored": e.mirrored,
        "scale": e.scale,
        "rotation": e.rotation,
        "correlation": e.correlation,
        "overlap": e.overlap,
        "unexplained": e.unexplained,
        "fine_unexplained": e.fine_unexplained,
        "transform": list(e.transform) if e.transform else None,
        "error": None,
        **{
            f"{h}_hamming": None if np.isnan(hams[b, j]) else int(hams[b, j])
            for j, h in enumerate(HASHES)
        },
    }
    row["evidence"] = _explain(row, bool(geo[b]), bool(learned[b]), th, ref)
    # what each descriptor alone would say, for `audit calibrate` (not written to matches)
    with np.errstate(invalid="ignore"):
        alone = {
            "geometry": (int(np.argmax(strength)), bool(geo.any())),
            "tile_l2": (int(np.nanargmin(tile)), bool(np.nanmin(tile) <= (th.copy_tile or -1))),
            "phash_hamming": _best(hams[:, 0], th.copy_hamming, lower=True),
            "old_rule": (int(np.argmin(np.where(old == 0, tile, 9))), bool((old == 0).any())),
        }
        if ref.use_cosine:
            alone["cosine"] = _best(cos, th.copy_cosine, lower=False)
        if ref.descriptor_vectors is not None:
            alone["descriptor"] = _best(dsim, ref.descriptor_threshold, lower=False)
    row["_alone"] = {k: (cand[i], passed) for k, (i, passed) in alone.items()}
    row["_found"] = found
    return row


def _best(x: Any, limit: float | None, lower: bool) -> tuple[int, bool]:
    if np.all(np.isnan(x)):
        return 0, False
    i = int(np.nanargmin(x) if lower else np.nanargmax(x))
    if limit is None:
        return i, False
    return i, bool(x[i] <= limit if lower else x[i] >= limit)


def _explain(r: dict[str, Any], geo: bool, learned: bool, th: Thresholds, ref: Reference) -> str:
    """Which evidence voted, and how, in one line."""

    def vote(x: Any, copy: Any, near: Any, lower: bool = True) -> str:
        if x is None or (isinstance(x, float) and np.isnan(x)):
            return "n/a"
        for label, limit in (("copy", copy), ("near", near)):
            if limit is not None and (x <= limit if lower else x >= limit):
                return label
        return "no"

    if r["hypothesis"] == "similarity":
        how = (
            f"{r['inliers']}/{r['matches']} inliers, scale {r['scale']:.2f}, rotation "
            f"{r['rotation']:.0f} deg{', mirrored' if r['mirrored'] else ''}"
        )
    else:
        how = f"{r['hypothesis']}{' mirrored' if r['mirrored'] else ''}, {r['matches']} matches"
        if r["hypothesis"] == "content box":
            how += f", scale {r['scale']:.2f}"
    parts = [
        f"geometry {'copy' if geo else 'no'} ({how}; aligned correlation "
        f"{r['correlation']:.2f} over {r['overlap']:.0%}"
        + (f", unexplained {r['unexplained']:.0%}" if np.isfinite(r["unexplained"]) else "")
        + (
            f", {r['fine_unexplained']:.1%} at full size"
            if np.isfinite(r["fine_unexplained"])
            else ""
        )
        + ")",
        f"tile {r['tile_distance']:.3f} {vote(r['tile_distance'], th.copy_tile, th.near_tile)}",
        f"relative {r['relative_distance']:.2f} "
        f"{vote(r['relative_distance'], th.copy_relative, th.near_relative)}",
        f"phash {r['phash_hamming']} bits "
        f"{vote(r['phash_hamming'], th.copy_hamming, th.near_hamming)}",
    ]
    if ref.use_cosine:
        parts.append(
            f"cosine {r['cosine']:.3f} {vote(r['cosine'], th.copy_cosine, th.near_cosine, False)}"
        )
    if r["descriptor_similarity"] is not None:
        parts.append(
            f"descriptor {r['descriptor_similarity']:.3f} {'copy' if learned else 'no'} "
            f"(copy at >= {ref.descriptor_threshold})"
        )
    if r["reason"]:
        parts.append(f"low information: {r['reason']}")
    return "; ".join(parts)
