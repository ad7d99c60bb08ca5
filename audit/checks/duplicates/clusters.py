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

The pixel verification is `verify_pairs.compare`: both thumbnails in colour at a common size,
rejecting solid blobs of difference, differences on both sides (another drawing rather than
an overlay) and differences above re-encoding noise. It needs no SIFT (~1 ms a pair), and
each row is decoded once into a bounded cache of thumbnails.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from audit.checks.duplicates.verify_pairs import PairEvidence, Thumb, compare, thumbnail

COMPLETE = 32  # a new member must be near this many members already in its cluster
CACHE = 8192  # thumbnails kept while pairs are verified (48 KB each at 128 px: ~400 MB)
EVIDENCE = ("correlation", "blob", "two_sided", "noise")


class PairVerifier:
    """Verifies row pairs on their pixels, decoding each picture about once.

    `load(row_id)` returns a PIL image or None (unreadable: no pair with it verifies).
    Thumbnails are kept in a bounded cache; visit pairs in row order to make use of it.
    """

    def __init__(self, load: Callable[[int], Any]) -> None:
        self.load = load
        self.cache: OrderedDict[int, Thumb | None] = OrderedDict()
        self.pairs = 0
        self.reasons: dict[str, int] = {}

    def _thumb(self, row: int) -> Thumb | None:
        if row in self.cache:
            self.cache.move_to_end(row)
            return self.cache[row]
        img = self.load(row)
        self.cache[row] = None if img is None else thumbnail(img)
        if len(self.cache) > CACHE:
            self.cache.popitem(last=False)
        return self.cache[row]

    def __call__(self, u: int, v: int) -> PairEvidence:
        self.pairs += 1
        tu, tv = self._thumb(int(u)), self._thumb(int(v))
        ev = (
            PairEvidence(False, low_information="unreadable", reason="unreadable")
            if tu is None or tv is None
            else compare(tu, tv)
        )
        if ev.reason:
            self.reasons[ev.reason] = self.reasons.get(ev.reason, 0) + 1
        return ev

    def many(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(verified, {measurement: values}) of the pairs (a[k], b[k]); see `EVIDENCE`."""
        ok = np.zeros(len(a), bool)
        ev = {k: np.full(len(a), np.nan, np.float32) for k in EVIDENCE}
        for k in np.lexsort((b, a)):
            e = self(a[k], b[k])
            ok[k] = e.verified
            for name in EVIDENCE:
                ev[name][k] = getattr(e, name)
        return ok, ev


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
