"""Duplicate clusters without transitive chains, from verified candidate pairs (check `dedup`).

A hash says which pairs are worth looking at; it does not say which are copies. pHash puts
a small object on a big white canvas, a flag and the five of spades next to unrelated
pictures of the same kind, and connected components over such links collect whole series
(one component of 560 rows held every numbered star of a clip-art set). So:

1. every candidate pair is verified on its pixels (`verify_pairs`) before it may join;
   low-information pictures (blank, a tiny foreground on a big canvas) never verify;
2. clusters are built by `linked_clusters`: representatives are picked greedily by how many
   verified neighbours they have; a row joins a representative only through its *own*
   verified pair with it, and only if it is near the other members too (complete linkage).
   A~B~C with A and C not near is never one cluster, and every row of `duplicates.parquet`
   names the pair that ties it to its representative.

The pixel verification here, `aligned_pixel_check`, is a stop-gap for the re-encodes,
rescales and small edits that near-duplicates are (no geometry: no crops, no rotations):
both pictures resized to one small square, zero-normalised correlation over the picture and
per tile, and a low-information guard. It is meant to be replaced by the shared verifier
(`audit/verify.py`, SIFT + RANSAC + aligned correlation) once that is merged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

SIDE = 128  # pictures are kept at most this long, and compared at the smaller one's size
TILES = 4  # ... over the picture and per tile of a TILES x TILES grid
# Thresholds read off 1,000 openclipart images with 100 planted copies (seed 7, not the
# benchmark's seed): copies sit at correlation ~0.999; 0.93 / 0.97 keep ~88% of them.
MIN_CORRELATION = 0.93  # whole-picture zero-normalised correlation (colour) of a copy
MIN_TILE_CORRELATION = 0.97  # median over tiles with content: the symbols of two cards differ
# Low-information guard, on the grey picture at 64 x 64 in [0, 1] (alpha composited on white).
BLANK_STD = 0.02  # standard deviation below this: blank / uniform
FOREGROUND_DIFF = 0.1  # a pixel differs from the background (border median) by more than this
MIN_FOREGROUND = 0.03  # ... on at least this share of the picture, or it is "tiny foreground"
COMPLETE = 32  # a new member must be near this many members already in its cluster
CACHE = 2048  # prepared pictures kept in memory while pairs are verified


@dataclass(frozen=True)
class PairEvidence:
    """What the pixel check found for one pair: correlation -1..1 (nan if not compared)."""

    verified: bool
    correlation: float = float("nan")
    tile_correlation: float = float("nan")
    low_information: str | None = None


def information(grey: np.ndarray) -> str | None:
    """Why a grey float picture in [0, 1] carries too little to be anybody's copy, or None."""
    if grey.std() < BLANK_STD:
        return f"blank: grey standard deviation {grey.std():.3f} < {BLANK_STD}"
    border = np.r_[grey[0], grey[-1], grey[:, 0], grey[:, -1]]
    fg = float(np.mean(np.abs(grey - np.median(border)) > FOREGROUND_DIFF))
    if fg < MIN_FOREGROUND:
        return f"tiny_foreground: {fg:.1%} of the picture differs from its background"
    return None


def prepare(img: Any) -> tuple[np.ndarray, str | None]:
    """A PIL image (RGB) -> (float32 RGB in [0, 1], at most SIDE long; low-information reason)."""
    import cv2

    rgb = np.asarray(img.convert("RGB"), np.float32) / 255.0
    h, w = rgb.shape[:2]
    f = min(1.0, SIDE / max(h, w))
    if f < 1:
        rgb = cv2.resize(
            rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
        )
    grey = cv2.resize(rgb.mean(axis=2), (64, 64), interpolation=cv2.INTER_AREA)
    return rgb, information(grey)


def _zncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Zero-normalised correlation along the last axis (nan where either side is flat)."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6, (a * b).sum(-1) / den, np.nan)


def aligned_pixel_check(
    a: tuple[np.ndarray, str | None], b: tuple[np.ndarray, str | None]
) -> PairEvidence:
    """Stop-gap copy test on two `prepare`d pictures (to be replaced by audit/verify.py).

    Both are resized to the smaller one's size (a half-size copy is then compared at its own
    detail, not blurred up), lightly blurred (JPEG blocks, resampling and a one-pixel line
    count for little), and correlated in colour (a red and a magenta arrow are the same in
    grey). The whole-picture correlation alone is fooled by layout: two playing cards share a
    white card, a border and corner indices. The median over the tiles that hold content is
    not: the pips differ.
    """
    import cv2

    (ra, la), (rb, lb) = a, b
    low = la or lb
    h, w = min(ra.shape[0], rb.shape[0]), min(ra.shape[1], rb.shape[1])
    if h < TILES or w < TILES:
        return PairEvidence(False, low_information=low or "too small to compare")
    ga, gb = (
        cv2.GaussianBlur(cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA), (0, 0), 0.5)
        for x in (ra, rb)
    )
    corr = float(_zncc(ga.ravel(), gb.ravel()))
    th, tw = h // TILES, w // TILES

    def tiles(x: np.ndarray) -> np.ndarray:
        x = x[: th * TILES, : tw * TILES]
        return x.reshape(TILES, th, TILES, tw, 3).swapaxes(1, 2).reshape(TILES * TILES, -1)

    ta, tb = tiles(ga), tiles(gb)
    content = (ta.std(1) > BLANK_STD) | (tb.std(1) > BLANK_STD)  # white margins say nothing
    tiled = _zncc(ta[content], tb[content])
    # a tile with content on one side only is a disagreement, not a missing value
    tiled = np.where(np.isnan(tiled), 0.0, tiled)
    tile = float(np.median(tiled)) if len(tiled) else float("nan")
    ok = (
        low is None
        and np.isfinite(corr)
        and corr >= MIN_CORRELATION
        and np.isfinite(tile)
        and tile >= MIN_TILE_CORRELATION
    )
    return PairEvidence(bool(ok), corr, tile, low)


class PairVerifier:
    """Verifies row pairs on their pixels, decoding each picture about once.

    `load(row_id)` returns a PIL image or None (unreadable: no pair with it verifies).
    Prepared pictures are kept in a bounded cache; visit pairs in row order to make use of it.
    """

    def __init__(self, load: Callable[[int], Any]) -> None:
        self.load = load
        self.cache: OrderedDict[int, Any] = OrderedDict()
        self.pairs = 0

    def _prepared(self, row: int) -> Any:
        if row in self.cache:
            self.cache.move_to_end(row)
            return self.cache[row]
        img = self.load(row)
        self.cache[row] = None if img is None else prepare(img)
        if len(self.cache) > CACHE:
            self.cache.popitem(last=False)
        return self.cache[row]

    def __call__(self, u: int, v: int) -> PairEvidence:
        self.pairs += 1
        pu, pv = self._prepared(int(u)), self._prepared(int(v))
        if pu is None or pv is None:
            return PairEvidence(False, low_information="unreadable")
        return aligned_pixel_check(pu, pv)

    def many(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(verified, correlation, tile_correlation) of the pairs (a[k], b[k])."""
        ok = np.zeros(len(a), bool)
        corr = np.full(len(a), np.nan, np.float32)
        tile = np.full(len(a), np.nan, np.float32)
        for k in np.lexsort((b, a)):
            ev = self(a[k], b[k])
            ok[k], corr[k], tile[k] = ev.verified, ev.correlation, ev.tile_correlation
        return ok, corr, tile


def linked_clusters(
    n: int,
    a: np.ndarray,
    b: np.ndarray,
    near: Callable[[int, int], bool],
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Representative of each of n nodes (itself if unclustered), from verified edges a-b.

    Nodes are visited by decreasing degree (then `weight`, e.g. how many rows a node stands
    for, then lowest id); an unassigned node becomes a representative and takes, strongest
    first, each unassigned neighbour that is also near every member taken so far (complete
    linkage: an edge of the graph, or else `near(u, v)`, which may verify the pair on demand;
    checked against the first `COMPLETE` members). So any member may be kept for the whole
    cluster, and a chain A~B~C with A, C not near is {A, B} and {C}, never one cluster.

    >>> linked_clusters(3, np.array([0, 1]), np.array([1, 2]), lambda u, v: False).tolist()
    [1, 1, 2]
    """
    from scipy.sparse import coo_matrix

    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    keep = a != b
    a, b = a[keep], b[keep]
    g = coo_matrix((np.ones(2 * len(a), np.int8), (np.r_[a, b], np.r_[b, a])), shape=(n, n))
    g = g.tocsr()
    g.sum_duplicates()
    degree = np.diff(g.indptr)
    w = np.zeros(n) if weight is None else np.asarray(weight, np.float64)
    edges = set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist(), strict=True))
    rep = np.full(n, -1, np.int64)
    visit = np.lexsort((np.arange(n), -w, -degree))
    for node in visit[degree[visit] > 0]:
        if rep[node] >= 0:
            continue
        nb = g.indices[g.indptr[node] : g.indptr[node + 1]]
        nb = nb[rep[nb] < 0]
        members = [int(node)]
        for m in nb[np.lexsort((nb, -w[nb], -degree[nb]))].tolist():
            if all((min(m, x), max(m, x)) in edges or near(m, x) for x in members[1:COMPLETE]):
                members.append(m)
        if len(members) > 1:
            rep[members] = node
    alone = rep < 0
    rep[alone] = np.flatnonzero(alone)
    return rep
