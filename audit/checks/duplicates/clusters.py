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

The pixel verification is the shared copy verifier, `audit.verify` (SIFT + RANSAC similarity
fit, aligned zero-normalised correlation over the picture and per tile, low-information
guard), at stricter thresholds than a copy needs (`check_pair`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# A near-duplicate is stricter than a copy: `verify.is_copy` accepts a crop or a recoloured
# copy at correlation 0.8; a duplicate to remove must also match over the picture and per tile
# (thresholds read off 1,000 openclipart images with 100 planted copies, seed 7, not the
# benchmark's seed: copies sit at correlation ~0.99).
MIN_CORRELATION = 0.93  # aligned zero-normalised correlation over the picture
MIN_TILE_CORRELATION = 0.97  # median over tiles with content: the pips of two cards differ
COMPLETE = 32  # a new member must be near this many members already in its cluster
CACHE = 1024  # prepared pictures kept while pairs are verified (SIFT features: ~0.5 MB each)


@dataclass(frozen=True)
class PairEvidence:
    """What the verifier found for one pair: correlations -1..1 (nan if not compared)."""

    verified: bool
    correlation: float = float("nan")
    tile_correlation: float = float("nan")
    low_information: str | None = None
    inliers: int = 0


def prepare(img: Any) -> tuple[Any, Any, str | None]:
    """A PIL image -> (features, mirrored features, low-information reason) for `verify`."""
    from audit import verify

    # the guard first, on a grey thumbnail: blank and tiny-foreground pictures (most of the
    # pairs dHash proposes on clip art) never verify, so they need no SIFT features
    low = verify.information(np.asarray(img.convert("L").resize((64, 64)), np.uint8))
    if low is not None:
        return None, None, low
    f = verify.extract(img)
    if f.low_information is not None:  # never a duplicate: skip describing the mirror image
        return f, None, f.low_information
    return f, verify.extract(img, mirrored=True), None


def check_pair(a: tuple[Any, Any, str | None], b: tuple[Any, Any, str | None]) -> PairEvidence:
    """`verify.verify` on two prepared pictures, at the near-duplicate thresholds above."""
    from audit import verify

    low = a[2] or b[2]
    if low is not None:
        return PairEvidence(False, low_information=low)
    e = verify.verify(None, None, query_features=(a[0], a[1]), candidate_features=b[0])
    ok = (
        verify.is_copy(e)
        and e.correlation >= MIN_CORRELATION
        and np.nan_to_num(e.tile_correlation, nan=-1.0) >= MIN_TILE_CORRELATION
    )
    return PairEvidence(bool(ok), e.correlation, e.tile_correlation, e.low_information, e.inliers)


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
        return check_pair(pu, pv)

    def many(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
        """(verified, correlation, tile_correlation, inliers) of the pairs (a[k], b[k])."""
        ok = np.zeros(len(a), bool)
        inliers = np.zeros(len(a), np.int32)
        corr = np.full(len(a), np.nan, np.float32)
        tile = np.full(len(a), np.nan, np.float32)
        for k in np.lexsort((b, a)):
            ev = self(a[k], b[k])
            ok[k], corr[k], tile[k] = ev.verified, ev.correlation, ev.tile_correlation
            inliers[k] = ev.inliers
        return ok, corr, tile, inliers


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
