"""Check `dedup`: exact and near-duplicate clusters, written to `duplicates.parquet`.

Three kinds of link between rows propose duplicate pairs:
  * exact: same `image_sha256`;
  * near_hash: pHash Hamming distance <= `hamming` (default 6 of 64 bits; optionally dHash
    within `dhash` bits too). A low-information pHash (fewer than 16 or more than 48 bits
    set: flat colour, stripes, thin outlines, where DCT terms tie at the median) must also
    agree on dHash within `hamming` bits: on the bundled sample, a flag, a gradient and a
    light bulb otherwise share the code 8000000000000000. dHash is checked on the first row
    of each distinct pHash. imagededup's hashing default is 10 bits; 6 is stricter because
    ordinary re-encodes and resizes move pHash by <= 4 bits (tests/test_hashes.py, and fast
    decoding drifts ~0.5 bit on average) while unrelated images sit near 32;
  * near_embedding: image-embedding cosine >= `cosine` (default 0.95; fastdup links components
    at 0.96 and imagededup's CNN default is 0.90), searched through the `index` stage's faiss
    index when present (k nearest per row), else exactly. Only with a trained model unless
    `embeddings="always"`: random-weight embeddings put unrelated images close together.

Near pHash pairs are found without comparing all pairs (multi-index hashing, Norouzi et al.):
split the 64 bits into m bands; two codes within `hamming` bits agree to within
floor(hamming/m) bits on at least one band (pigeonhole). Each band is a direct-address table;
every code probes its own band value and the values within that radius, and candidates are
verified with a popcount. m is picked by an estimate of probes plus candidates (for small sets
that is m = hamming+1 exact bands; for 10^6 codes and 6 bits, 4 bands of 16 bits probed within
1 bit: ~25 s on two busy cores).
Identical codes are collapsed first, so a thousand blank images cost nothing extra.

Hashes only propose pairs. With `verify` (the default) every proposed pair between two
sha256 groups (pHash within `hamming` bits, dHash within `dhash_candidates` bits, or
embeddings) is checked on its pixels before it may join (`verify_pairs.compare`: colour
thumbnails at a common size; no solid blob of difference, no difference on both sides, no
difference above JPEG re-encoding noise outside a thin overlay; never on a blank or
tiny-foreground picture), and clusters are complete-linkage around a representative
(`clusters.linked_clusters`): no A~B~C chains. Each row is decoded once into a bounded
cache of 128 px thumbnails.

Output `duplicates.parquet`, one row per row that has at least one duplicate:
row_id, cluster_id (0 = largest cluster), cluster_size, kind (how the row is tied to its
representative: exact | near_hash | near_embedding; the representative carries its
cluster's strongest kind), representative (most verified neighbours), distance (Hamming bits
to the representative for exact/near_hash rows, 1 - cosine for near_embedding rows), hamming
(pHash bits to the representative), cosine (when embeddings were used), correlation, blob,
two_sided, noise (the pixel check of the tie, `verify_pairs.PairEvidence`), verified (the tie
was confirmed).

Example:
    >>> from audit.checks import duplicates
    >>> duplicates.find("indexes/sample", hamming=6, cosine=0.95)      # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from itertools import combinations
from typing import Any

import numpy as np

from audit.checks.duplicates.clusters import EVIDENCE, PairVerifier, linked_clusters
from audit.errors import AuditError
from audit.workspace import Output, Workspace, atomic_write_parquet

STAGE = "dedup"
MAX_TABLE_BITS = 22  # a band's direct-address table: 2^22 int32 starts = 16 MB
PAIR_CHUNK = 4_000_000  # candidate pairs verified per numpy step (bounded memory)
# A probe pass costs about 3 candidate verifications per code (measured on 10^6 random codes:
# 3 bands x 254 probes took 48 s, 4 bands x 17 probes 23 s).
LOOKUP_COST = 3.0
DHASH_MIN_BITS = 8  # dHash codes with fewer bits set propose no pairs (near-flat pictures)
LOW_INFORMATION_BITS = 16  # pHash with < 16 or > 48 bits set: also needs dHash agreement


def _bands(m: int) -> list[tuple[int, int]]:
    """(shift, width) of m bands covering the 64 bits, widths differing by at most one."""
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def choose_bands(n: int, radius: int) -> int:
    """The number of bands m minimising estimated probes + candidate pairs for n codes."""
    best, best_cost = 64, math.inf  # replaced by the first m tried: every cost is finite
    for m in range(max(2, math.ceil(64 / MAX_TABLE_BITS)), 65):
        r = radius // m
        cost = 0.0
        for _, w in _bands(m):
            probes = sum(math.comb(w, k) for k in range(r + 1))
            cost += probes * (LOOKUP_COST * n + n * n / 2.0**w)
        if cost < best_cost:
            best, best_cost = m, cost
        if r == 0:  # more bands than radius+1 only add candidates
            break
    return int(best)


def near_pairs(
    codes: np.ndarray, radius: int, bands: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j of *distinct* uint64 codes within `radius` bits: (i, j, distance).

    Exact (no false negatives, no false positives) by the pigeonhole argument above; cost is
    about linear in len(codes) for random codes.

    >>> i, j, d = near_pairs(np.array([0b1011, 0b0011, 1 << 40], np.uint64), 2)
    >>> list(zip(i.tolist(), j.tolist(), d.tolist()))
    [(0, 1, 1)]
    """
    codes = np.asarray(codes, np.uint64)
    n = len(codes)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if n < 2 or radius < 0:
        return empty
    if radius >= 64:
        i, j = np.triu_indices(n, 1)
        return (
            i.astype(np.int64),
            j.astype(np.int64),
            np.bitwise_count(codes[i] ^ codes[j]).astype(np.int64),
        )
    m = bands or choose_bands(n, radius)
    r = radius // m
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for shift, w in _bands(m):
        key = ((codes >> np.uint64(shift)) & np.uint64((1 << w) - 1)).astype(np.int64)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        if w <= MAX_TABLE_BITS:  # direct-address table: start and count of every band value
            counts = np.bincount(key, minlength=1 << w)
            starts = np.cumsum(counts) - counts
        for k in range(r + 1):
            for bits in combinations(range(w), k):
                q = key ^ sum(1 << b for b in bits)
                if w <= MAX_TABLE_BITS:
                    lo, hi = starts[q], starts[q] + counts[q]
                else:
                    lo, hi = (
                        np.searchsorted(sorted_key, q, "left"),
                        np.searchsorted(sorted_key, q, "right"),
                    )
                _expand(codes, order, lo, hi, radius, found_i, found_j)
    if not found_i:
        return empty
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    pair = np.unique(i * n + j)
    i, j = pair // n, pair % n
    return i, j, np.bitwise_count(codes[i] ^ codes[j]).astype(np.int64)


def _expand(
    codes: np.ndarray,
    order: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    radius: int,
    found_i: list[np.ndarray],
    found_j: list[np.ndarray],
) -> None:
    """Verify the candidates order[lo[q]:hi[q]] of every query q, in bounded chunks."""
    lengths = hi - lo
    queries = np.flatnonzero(lengths)
    if not len(queries):
        return
    cum = np.cumsum(lengths[queries])
    cuts = np.searchsorted(cum, np.arange(PAIR_CHUNK, cum[-1], PAIR_CHUNK))
    for qs in np.split(queries, cuts + 1):
        if not len(qs):
            continue
        lens = lengths[qs]
        total = int(lens.sum())
        i = np.repeat(qs, lens)
        starts = np.repeat(lo[qs] - (np.cumsum(lens) - lens), lens)
        j = order[starts + np.arange(total)]
        keep = i < j
        i, j = i[keep], j[keep]
        keep = np.bitwise_count(codes[i] ^ codes[j]) <= radius
        if keep.any():
            found_i.append(i[keep])
            found_j.append(j[keep])


def _read_rows(ws: Workspace, n: int) -> dict[str, Any]:
    """Per row: sha256 group id (-1 none), phash and dhash (valid mask), image location."""
    ws.require_hashes(["phash", "dhash"], by="audit dedup")
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    meta = pa.concat_tables(
        [
            ws.read_part(
                p,
                columns=[
                    "row_id",
                    "image_sha256",
                    "image_status",
                    "image_path",
                    "image_offset",
                    "image_size",
                ],
            )
            for p in ws.require_parts()
        ]
    )
    sha = pc.if_else(
        pc.equal(meta["image_status"], "ok"), meta["image_sha256"], pa.scalar(None, pa.string())
    )
    enc = pc.dictionary_encode(sha).combine_chunks()
    group = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    out: dict[str, Any] = {"sha_group": np.full(n, -1, np.int64)}
    ids = meta["row_id"].to_numpy()
    out["sha_group"][ids] = group
    # where each image is, for the pixel verification of candidate pairs
    ok = pc.equal(meta["image_status"], "ok").fill_null(False).to_numpy(zero_copy_only=False)
    for name in ("image_path", "image_offset", "image_size"):
        out[name] = np.full(n, None, object)
        out[name][ids] = np.array(meta[name].to_pylist(), object)
    out["image_path"][ids[~ok]] = None
    for name in ("phash", "dhash"):
        out[name] = np.zeros(n, np.uint64)
        out[name + "_ok"] = np.zeros(n, bool)
    for p in ws.require_parts():
        path = ws.path(f"hashes/part-{p.stem}.parquet")
        t = pq.read_table(path, columns=["row_id", "phash", "dhash"])
        ids = t["row_id"].to_numpy()
        for name in ("phash", "dhash"):
            out[name][ids] = t[name].fill_null(0).to_numpy()
            out[name + "_ok"][ids] = t[name].is_valid().to_numpy(zero_copy_only=False)
    return out


def _embedding_edges(
    ws: Workspace, n: int, cosine: float, neighbours: int
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Row pairs (a, b) with cosine >= `cosine` among each row's `neighbours` nearest, and
    (row_ids, float32 vectors) of the rows that have an embedding."""
    import faiss

    ids, vecs = [], []
    for p in ws.require_parts():
        v = np.load(ws.path(f"embeddings/img-{p.stem}.npy"))
        keep = np.flatnonzero(np.any(v != 0, axis=1))
        ids.append(p.row_offset + keep)
        vecs.append(v[keep].astype(np.float32))
    row_ids, x = np.concatenate(ids).astype(np.int64), np.concatenate(vecs)
    index_path = ws.path("faiss/img.faiss")
    if ws.stage_fingerprint("index") and index_path.exists():
        index = faiss.read_index(str(index_path))
        info = json.loads(ws.path("faiss/info.json").read_text()).get("image", {})
        if "nprobe" in info:
            faiss.extract_index_ivf(index).nprobe = info["nprobe"]
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
        index.add_with_ids(x, row_ids)
    a, b = [], []
    k = min(neighbours + 1, len(row_ids))
    for s in range(0, len(row_ids), 8192):
        scores, found = index.search(x[s : s + 8192], k)
        src = np.repeat(row_ids[s : s + 8192], k)
        hit = (scores.reshape(-1) >= cosine) & (found.reshape(-1) >= 0) & (found.reshape(-1) != src)
        a.append(src[hit])
        b.append(found.reshape(-1)[hit])
    return np.concatenate(a), np.concatenate(b), (row_ids, x)


def find(
    ws_root: str | os.PathLike[str],
    hamming: int = 6,
    cosine: float = 0.95,
    dhash: int | None = None,
    embeddings: str = "trained",
    neighbours: int = 10,
    verify: bool = True,
    dhash_candidates: int = 10,
) -> dict[str, Any]:
    """Cluster exact and near duplicates (stage `dedup`); returns the summary.

    `embeddings`: "trained" (use image embeddings only if the model was trained), "always", "never".
    `verify`: check every near pair on its pixels before it may join (False: hashes alone,
    for comparison; low-information pictures then cluster again).
    `dhash_candidates`: with `verify`, dHash within this many bits also proposes pairs (-1: no).
    """
    if not 0 <= hamming <= 64:
        raise AuditError(f"hamming must be between 0 and 64 bits (got {hamming}).")
    if not -1 <= cosine <= 1:
        raise AuditError(f"cosine must be between -1 and 1 (got {cosine}).")
    if embeddings not in ("trained", "always", "never"):
        raise AuditError(f"embeddings must be trained, always or never (got {embeddings!r}).")
    ws = Workspace.open(ws_root)
    n = ws.num_rows
    if not ws.stage_fingerprint("hash"):
        raise AuditError(f"dedup needs perceptual hashes first. Run: audit hash {ws.root}")
    use_emb, why = False, "embed stage not run"
    if ws.stage_fingerprint("embed"):
        trained = bool(json.loads(ws.path("embeddings/model.json").read_text()).get("trained"))
        use_emb = embeddings == "always" or (embeddings == "trained" and trained)
        why = (
            "used"
            if use_emb
            else ("embeddings='never'" if embeddings == "never" else "embedding model is untrained")
        )
    deps = (
        ["ingest", "hash"]
        + (["embed"] if use_emb else [])
        + (["index"] if use_emb and ws.stage_fingerprint("index") else [])
    )
    params = {"hamming": hamming, "cosine": cosine, "dhash": dhash, "embeddings": embeddings}
    params.update(neighbours=neighbours, verify=verify, dhash_candidates=dhash_candidates)
    run = ws.start_stage(STAGE, params, depends_on=deps)
    t0 = time.perf_counter()
    rows = _read_rows(ws, n)

    # exact: every row of a sha256 group stands behind its first row (the group's leader);
    # near pairs are searched and verified between leaders only
    g = rows["sha_group"]
    has = np.flatnonzero(g >= 0)
    order = has[np.argsort(g[has], kind="stable")]
    grp = g[order]
    head = np.concatenate([[True], grp[1:] != grp[:-1]]) if len(order) else np.zeros(0, bool)
    leader_of = np.arange(n)
    if len(order):
        leader_of[order] = order[np.maximum.accumulate(np.where(head, np.arange(len(order)), 0))]
    is_leader = leader_of == np.arange(n)

    # near_hash candidates: collapse identical codes, multi-index search over distinct codes
    valid = np.flatnonzero(rows["phash_ok"] & is_leader)
    uniq, inverse = np.unique(rows["phash"][valid], return_inverse=True)
    bands = choose_bands(len(uniq), hamming) if len(uniq) > 1 else None
    ci, cj, _ = near_pairs(uniq, hamming, bands)
    a, b = _row_pairs(valid, inverse, ci, cj)
    # A pHash with few (or many) set bits comes from an image with almost no low-frequency
    # structure (flat colour, stripes, a thin outline): many DCT terms tie at the median, and
    # unrelated flags, gradients and outlines share codes. Such pairs must agree on dHash too.
    bits = np.bitwise_count(rows["phash"])
    weak = (bits < LOW_INFORMATION_BITS) | (bits > 64 - LOW_INFORMATION_BITS)
    limit = hamming if dhash is None else dhash
    dh = np.bitwise_count(rows["dhash"][a] ^ rows["dhash"][b]) <= limit
    dh &= rows["dhash_ok"][a] & rows["dhash_ok"][b]
    keep = dh | ((dhash is None) & ~weak[a] & ~weak[b])
    pairs = {p: 2 for p in zip(a[keep].tolist(), b[keep].tolist(), strict=True)}
    if verify and dhash_candidates >= 0:
        # dHash proposes pairs too: on clip art and line drawings it moves less than pHash
        # under a re-encode or a drawn line (planted openclipart copies: 98% within 10 dHash
        # bits, 78% within 6 pHash bits). Near-flat codes (few bits set: blank or tiny
        # pictures, which never verify) propose nothing, or they would propose everything.
        dv = np.flatnonzero(
            rows["dhash_ok"] & is_leader & (np.bitwise_count(rows["dhash"]) >= DHASH_MIN_BITS)
        )
        duniq, dinv = np.unique(rows["dhash"][dv], return_inverse=True)
        di, dj, _ = near_pairs(duniq, dhash_candidates)
        da, db = _row_pairs(dv, dinv, di, dj)
        for p in zip(da.tolist(), db.tolist(), strict=True):
            pairs.setdefault(p, 2)

    emb = None
    if use_emb:
        ea, eb, emb = _embedding_edges(ws, n, cosine, neighbours)
        ea, eb = leader_of[ea], leader_of[eb]
        for p in zip(np.minimum(ea, eb).tolist(), np.maximum(ea, eb).tolist(), strict=True):
            if p[0] != p[1]:
                pairs.setdefault(p, 1)
    both = np.array(list(pairs), np.int64).reshape(-1, 2)
    pa_, pb_ = both[:, 0], both[:, 1]
    kind_of = np.array(list(pairs.values()), np.int8)
    checker = PairVerifier(_loader(rows)) if verify else None
    if checker is not None:
        ok, measured = checker.many(pa_, pb_)
        joins = ok
    else:  # hashes alone: every candidate joins, none is verified
        ok, joins = np.zeros(len(pa_), bool), np.ones(len(pa_), bool)
        measured = {k: np.full(len(pa_), np.nan, np.float32) for k in EVIDENCE}

    def near(u: int, v: int) -> bool:  # a pair no hash proposed, met inside a cluster
        if checker is not None:
            return checker(u, v).verified
        return bool(np.bitwise_count(rows["phash"][u] ^ rows["phash"][v]) <= hamming)

    group_rows = np.bincount(leader_of, minlength=n)
    rep = linked_clusters(n, pa_[joins], pb_[joins], near, weight=group_rows)[leader_of]
    ties = {p: k for k, p in enumerate(pairs)}
    summary = _write(ws, rows, leader_of, rep, ties, kind_of, ok, measured, emb)
    summary.update(
        rows=n,
        near_hash_pairs=int(len(ci)),
        candidate_pairs=int(len(pa_)),
        verified_pairs=int(ok.sum()) if verify else None,
        rejected_pairs=int((~ok).sum()) if verify else None,
        pixel_checks=checker.pairs if checker is not None else 0,
        rejected_by=dict(sorted(checker.reasons.items())) if checker is not None else None,
        verifier="colour thumbnails (verify_pairs)" if verify else "none (hashes alone)",
        bands=bands,
        embeddings=why,
        seconds=round(time.perf_counter() - t0, 3),
    )
    summary["metadata"] = metadata_duplicates(ws)  # same URL / caption: needs no image
    run.finish(
        summary,
        [
            Output("duplicates.parquet", summary["rows_in_clusters"]),
            Output(METADATA_DUPLICATES, sum(v["rows"] for v in summary["metadata"].values())),
        ],
    )
    return summary


# Rows sharing one code: all pairs up to MAX_GROUP rows, else a star from the first. Two near
# codes: all cross pairs up to MAX_PRODUCT, else their first rows. A series of look-alikes
# shares codes (openclipart's star polygons: dHash groups of 20-70 rows), and a copy of one
# of them must still meet its original, not only the group's first row; a verified pair
# costs ~1 ms. A thousand blank images still make a star.
MAX_GROUP = 128
MAX_PRODUCT = 1024


def _row_pairs(
    rows: np.ndarray, code: np.ndarray, ci: np.ndarray, cj: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a < b) behind code pairs (ci, cj) and behind rows sharing one code.

    Verification is per pair of rows, so rows with one code are expanded; a large group of
    one code (a thousand blank images) is expanded as a star, which cannot chain anyway.
    """
    order = np.argsort(code, kind="stable")
    srt = rows[order]
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cnt = np.bincount(code)
    start = np.cumsum(cnt) - cnt
    single = (cnt[ci] == 1) & (cnt[cj] == 1)  # the usual case, vectorised
    a, b = [srt[start[ci[single]]]], [srt[start[cj[single]]]]
    for c in np.flatnonzero(cnt > 1):
        m = srt[start[c] : start[c] + cnt[c]]
        x, y = (
            np.triu_indices(len(m), 1)
            if len(m) <= MAX_GROUP
            else (np.zeros(len(m) - 1, int), np.arange(1, len(m)))
        )
        a.append(m[x])
        b.append(m[y])
    for c, d in zip(ci[~single].tolist(), cj[~single].tolist(), strict=True):
        mi, mj = srt[start[c] : start[c] + cnt[c]], srt[start[d] : start[d] + cnt[d]]
        if len(mi) * len(mj) > MAX_PRODUCT:
            mi, mj = mi[:1], mj[:1]
        a.append(np.repeat(mi, len(mj)))
        b.append(np.tile(mj, len(mi)))
    a_, b_ = np.concatenate(a).astype(np.int64), np.concatenate(b).astype(np.int64)
    return np.minimum(a_, b_), np.maximum(a_, b_)


def _loader(rows: dict[str, Any]) -> Any:
    """row_id -> PIL image (RGB, decoded at a reduced size when JPEG allows) or None."""
    from audit.images import ImageProblem, decode, read_bytes

    def load(row: int) -> Any:
        path = rows["image_path"][row]
        if path is None:
            return None
        try:
            data = read_bytes(path, rows["image_offset"][row], rows["image_size"][row])
            return decode(data, draft_size=(256, 256))
        except ImageProblem:
            return None

    return load


def _write(
    ws: Workspace,
    rows: dict[str, np.ndarray],
    leader_of: np.ndarray,
    rep: np.ndarray,
    ties: dict[tuple[int, int], int],
    kind_of: np.ndarray,
    ok: np.ndarray,
    measured: dict[str, np.ndarray],
    emb: Any,
) -> dict[str, Any]:
    """duplicates.parquet: one row per clustered row, with the pair that ties it to its
    representative (the representative row itself carries its cluster's strongest kind)."""
    import pyarrow as pa

    n = len(rep)
    sizes = np.bincount(rep, minlength=n)
    members = np.flatnonzero(sizes[rep] > 1)
    r = rep[members]
    # per member: 3 exact (same sha256 group as the representative), else the pair's kind
    k = np.zeros(len(members), np.int8)
    tie = {name: np.full(len(members), np.nan, np.float32) for name in EVIDENCE}
    verified = np.ones(len(members), bool)
    same = leader_of[members] == r
    k[same] = 3
    for idx in np.flatnonzero(~same).tolist():
        u, v = int(leader_of[members[idx]]), int(r[idx])
        t = ties.get((min(u, v), max(u, v)))
        if t is None:  # cannot happen: a member is adjacent to its representative
            raise AssertionError(f"row {members[idx]} has no pair with representative {v}")
        k[idx], verified[idx] = kind_of[t], ok[t]
        for name in EVIDENCE:
            tie[name][idx] = measured[name][t]
    is_rep = members == r
    strongest = np.zeros(n, np.int8)
    np.maximum.at(strongest, r[~is_rep], k[~is_rep])
    k[is_rep] = strongest[members[is_rep]]
    # clusters numbered by size (largest first), then by representative
    reps = np.unique(r)
    rank = np.lexsort((reps, -sizes[reps]))
    cluster_id = np.empty(n, np.int64)
    cluster_id[reps[rank]] = np.arange(len(reps))
    hok = rows["phash_ok"][members] & rows["phash_ok"][r]
    ham = np.bitwise_count(rows["phash"][members] ^ rows["phash"][r]).astype(np.int16)
    cos, cos_ok = np.zeros(len(members), np.float32), np.zeros(len(members), bool)
    if emb is not None:
        emb_ids, x = emb
        pos = np.full(n, -1, np.int64)
        pos[emb_ids] = np.arange(len(emb_ids))
        cos_ok = (pos[members] >= 0) & (pos[r] >= 0)
        cos[cos_ok] = np.einsum("ij,ij->i", x[pos[members[cos_ok]]], x[pos[r[cos_ok]]])
    kind = np.array(["", "near_embedding", "near_hash", "exact"], dtype=object)[k]
    distance = np.where(kind == "exact", 0.0, ham.astype(np.float32))
    distance = np.where(kind == "near_embedding", 1 - cos, distance)
    o = np.lexsort((members, cluster_id[r]))
    table = pa.table(
        {
            "row_id": pa.array(members[o], pa.int64()),
            "cluster_id": pa.array(cluster_id[r][o], pa.int64()),
            "cluster_size": pa.array(sizes[r][o], pa.int32()),
            "kind": pa.array(kind[o].tolist(), pa.string()),
            "representative": pa.array(r[o], pa.int64()),
            "distance": pa.array(distance[o], pa.float32()),
            "hamming": pa.array(ham[o], pa.int16(), mask=~hok[o]),
            "cosine": pa.array(cos[o], pa.float32(), mask=~cos_ok[o]),
            **{
                name: pa.array(tie[name][o], pa.float32(), mask=np.isnan(tie[name][o]))
                for name in EVIDENCE
            },
            "verified": pa.array(verified[o], pa.bool_()),
        }
    )
    atomic_write_parquet(ws.path("duplicates.parquet"), table)
    by_kind = {name: int((kind == name).sum()) for name in ("exact", "near_hash", "near_embedding")}
    return {
        "clusters": int(len(reps)),
        "rows_in_clusters": int(len(members)),
        "by_kind": by_kind,
        "largest_cluster": int(sizes.max()) if len(reps) else 0,
    }


# -- metadata duplicates: the same URL or the same caption ---------------------------------------
METADATA_DUPLICATES = "duplicates-metadata.parquet"
# A URL is compared after the normalisation every HTTP client would agree on: surrounding
# spaces and the fragment dropped, scheme and host lower-cased, the default port dropped, an
# empty path made "/". Path and query keep their case (servers may treat them as distinct).
_URL_SQL = r"""
    CASE WHEN regexp_matches(u, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]+')
    THEN regexp_replace(regexp_replace(
            lower(regexp_extract(u, '^([A-Za-z][A-Za-z0-9+.-]*://[^/?#]+)', 1)),
            '^(http://[^/]*):80$|^(https://[^/]*):443$', '\1\2')
         || CASE WHEN regexp_extract(u, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]+(.*)$', 1) = ''
                 THEN '/' ELSE regexp_extract(u, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]+(.*)$', 1) END,
         '', '')
    ELSE u END"""
# Captions: case and runs of white space do not make a caption different.
_CAPTION_SQL = "lower(trim(regexp_replace(caption, '\\s+', ' ', 'g')))"


def metadata_duplicates(ws: Workspace) -> dict[str, Any]:
    """Groups of rows sharing a normalised URL or a caption; writes `duplicates-metadata.parquet`.

    Works on metadata alone (no image needed), so a URL list or a LAION parquet without its
    images still shows repeated downloads and boilerplate captions. One row per (row, kind)
    in a group of two or more: row_id, kind (url | caption), group_id (0 = largest of its
    kind), group_size, representative (lowest row_id), value (the normalised URL or caption,
    at most 200 characters).
    """
    import duckdb

    files = [str(ws.path(p.path)) for p in ws.require_parts()]
    con = duckdb.connect()
    con.execute("SET memory_limit='1GB'")
    con.execute(
        "CREATE TEMP VIEW m AS SELECT row_id, "
        f"trim(regexp_replace(url, '#.*$', '')) AS u, caption FROM read_parquet({_quote(files)})"
    )
    table = con.sql(
        f"""
        WITH v AS (
            SELECT row_id, 'url' AS kind, {_URL_SQL} AS value FROM m WHERE u IS NOT NULL AND u <> ''
            UNION ALL
            SELECT row_id, 'caption', {_CAPTION_SQL} FROM m
            WHERE caption IS NOT NULL AND trim(caption) <> ''
        ), g AS (
            SELECT row_id, kind, value, count(*) OVER w AS group_size, min(row_id) OVER w AS rep
            FROM v WINDOW w AS (PARTITION BY kind, value)
        )
        SELECT row_id, kind,
               dense_rank() OVER (PARTITION BY kind ORDER BY group_size DESC, rep) - 1 AS group_id,
               group_size::INTEGER AS group_size, rep AS representative, left(value, 200) AS value
        FROM g WHERE group_size > 1 ORDER BY kind DESC, group_id, row_id
        """
    ).to_arrow_table()
    atomic_write_parquet(ws.path(METADATA_DUPLICATES), table)
    con.register("found", table)
    counts = con.sql(
        "SELECT kind, count(DISTINCT group_id) AS groups, count(*) AS rows, "
        "count(*) - count(DISTINCT group_id) AS extra FROM found GROUP BY kind"
    ).fetchall()
    by = {k: {"groups": 0, "rows": 0, "extra_copies": 0} for k in ("url", "caption")}
    for kind, groups, rows, extra in counts:
        by[kind] = {"groups": int(groups), "rows": int(rows), "extra_copies": int(extra)}
    return by


def _quote(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
