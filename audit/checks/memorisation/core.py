"""The global copy descriptors of the memorisation check, and its reading helpers.

The candidates of a generated image (see `matching`) are scored with these beside the
geometric verifier (`audit.verify`):

- *tiled l2* (Carlini et al. 2023, "Extracting Training Data from Diffusion Models"): both
  images to 64x64 in [0, 1], cut into a 4x4 grid of 16x16 tiles, distance = max over tiles
  of the tile's root-mean-square difference, so 0 = identical and 1 = black vs white. The
  max makes one copied-and-altered region count, where a whole-image l2 would average it
  away. Their *relative* criterion divides by alpha times the mean distance to the n
  nearest training images (alpha = 0.5): a copy must be much closer than its neighbours.
  We take the mean over the verified candidates, duplicates by sha256 collapsed so a
  duplicated image does not hide its own copy.
- *phash Hamming distance* (64 bits): robust to rescaling and JPEG, not to flips or crops.
- *embedding cosine*: the workspace's own model; with untrained weights it carries no
  meaning and does not vote. A learned copy descriptor (SSCD) comes in through
  `audit.descriptors` instead.

`decide` combines them: `copy` when one passes its copy threshold or two their near
thresholds, `near` when one passes its near threshold. Since the geometric verifier, this
global rule decides no verdict on its own (see `matching`): a pixel distance or one hash
alone calls blank pictures copies of each other, and its near votes made 37-41% of the
calibration's negatives `near`; only one descriptor at its copy threshold still makes a
pair `near`. The near thresholds stay for the evidence line (which descriptor voted how). Its defaults were measured with `audit
calibrate` on the bundled clip-art sample (`DEFAULTS_SOURCE`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from audit.errors import AuditError
from audit.images import ImageProblem, decode, read_bytes
from audit.schema import HASHES, IMAGE_LOCATION
from audit.workspace import Workspace

TILE_SIZE = 64
TILE_GRID = 4

DEFAULTS_SOURCE = (
    "audit calibrate on the bundled openclipart sample (tiny model, n=200 distinct non-blank "
    "images, seed=0, 7 copy transformations, every other image a negative): copy thresholds at "
    ">= 99% precision, near thresholds at the best F1, pooled; cosine thresholds not calibrated"
)


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds per descriptor. Distances pass when <=, cosine when >=.

    `copy_*` is one descriptor's evidence strong enough alone; `near_*` is moderate evidence,
    two of which together also make a copy.
    """

    # From `audit calibrate` on the bundled sample (DEFAULTS_SOURCE), rounded: copy = the
    # threshold at >= 99% precision, near = the best-F1 threshold, pooled over transformations.
    copy_tile: float | None = 0.04
    near_tile: float | None = 0.12
    copy_relative: float | None = 0.33
    near_relative: float | None = 1.33
    copy_hamming: int | None = 1
    near_hamming: int | None = 12
    # Not calibrated: no real weights offline, and random weights do not vote. With real
    # weights, run `audit calibrate` and pass its suggested cosine thresholds.
    copy_cosine: float | None = 0.95
    near_cosine: float | None = 0.90
    alpha: float = 0.5  # Carlini et al.'s relative criterion: d / (alpha * mean of the n nearest)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_THRESHOLDS = Thresholds()


# -- descriptors on arrays -------------------------------------------------------------------
def to_pixels(img: Any, size: int = TILE_SIZE) -> Any:
    """A PIL image as a float32 (size, size, 3) array in [0, 1] (aspect ratio not kept)."""
    import numpy as np
    from PIL import Image

    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def tile_distances(a: Any, b: Any, grid: int = TILE_GRID) -> Any:
    """Paired tiled l2: for (N, S, S, C) arrays in [0, 1] -> (N,) max over tiles of tile RMS."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.ndim == 3:
        a, b = a[None], b[None]
    n, s, _, c = a.shape
    if b.shape != a.shape or s % grid:
        raise AuditError(
            f"tile_distances needs equal (N, S, S, C) arrays with S divisible by {grid}; "
            f"got {a.shape} and {b.shape}"
        )
    t = s // grid
    d = (a - b).reshape(n, grid, t, grid, t, c)
    per_tile = np.sqrt(np.mean(d * d, axis=(2, 4, 5)))
    return per_tile.reshape(n, -1).max(axis=1)


def tile_distance(a: Any, b: Any, grid: int = TILE_GRID) -> float:
    """Tiled l2 of two (S, S, C) arrays or two PIL images, in [0, 1]."""
    if hasattr(a, "convert"):
        a, b = to_pixels(a), to_pixels(b)
    return float(tile_distances(a, b, grid)[0])


def tile_distance_matrix(queries: Any, refs: Any, grid: int = TILE_GRID) -> Any:
    """(N, S, S, C) x (M, S, S, C) -> (N, M) tiled l2, without materialising N*M images."""
    import numpy as np

    queries, refs = np.asarray(queries, np.float32), np.asarray(refs, np.float32)
    out = np.empty((len(queries), len(refs)), dtype=np.float32)
    for i, q in enumerate(queries):
        out[i] = tile_distances(np.broadcast_to(q, refs.shape), refs, grid)
    return out


def relative_distances(distances: Any, neighbours: Any = None, alpha: float = 0.5) -> Any:
    """Carlini et al.'s relative criterion: each distance / (alpha * mean of the n nearest).

    `neighbours` are the distances to the n nearest *distinct* training images (default: the
    given distances). Fewer than two finite neighbours leave it undefined (NaN): a single
    candidate has nothing to be compared with.
    """
    import numpy as np

    d = np.asarray(distances, dtype=np.float64)
    nb = d if neighbours is None else np.asarray(neighbours, dtype=np.float64)
    nb = nb[np.isfinite(nb)]
    if nb.size < 2:
        return np.full(d.shape, np.nan)
    return d / max(alpha * nb.mean(), 1e-9)


def hamming(a: Any, b: Any) -> Any:
    """Bitwise Hamming distance of 64-bit codes (any integer dtype, broadcasting)."""
    import numpy as np

    a = np.asarray(a).astype(np.int64, copy=False).view(np.uint64)
    b = np.asarray(b).astype(np.int64, copy=False).view(np.uint64)
    return np.bitwise_count(a ^ b).astype(np.int16)


def bootstrap_rate(
    flags: Any, reps: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Rate of True in `flags` with a percentile bootstrap interval (resampling the items).

    The mean of n Bernoulli items resampled with replacement is Binomial(n, p)/n exactly, so
    drawing that is the same bootstrap as resampling indices, at O(reps) instead of O(reps*n).
    """
    import numpy as np

    flags = np.asarray(flags, dtype=bool)
    n = flags.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p = float(flags.mean())
    draws = np.random.default_rng(seed).binomial(n, p, size=reps) / n
    lo, hi = np.percentile(draws, [50 * (1 - level), 100 - 50 * (1 - level)])
    return p, float(lo), float(hi)


def loss_auc(
    member_losses: Any, other_losses: Any, reps: int = 2000, seed: int = 0
) -> tuple[float, list[float]]:
    """Loss-based membership inference: ROC AUC of -loss (members positive), with a percentile
    bootstrap interval resampling each group's images. 0.5 = members look like the others."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(member_losses, np.float64), np.asarray(other_losses, np.float64)
    if pos.size == 0 or neg.size == 0:
        raise AuditError(
            f"loss_auc needs losses of members and of others (got {pos.size} and {neg.size})"
        )
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    rng = np.random.default_rng(seed)
    boot = [
        roc_auc_score(y, -np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        for _ in range(reps)
    ]
    return float(roc_auc_score(y, -np.r_[pos, neg])), [
        float(v) for v in np.percentile(boot, [2.5, 97.5])
    ]


def decide(
    tile: Any, relative: Any, ham: Any, cos: Any, th: Thresholds, use_cosine: bool = True
) -> tuple[Any, Any]:
    """Verdict codes (0 copy, 1 near, 2 novel) and the number of near-level votes, per pair.

    copy: one descriptor passes its copy threshold, or two pass their near thresholds;
    near: one passes its near threshold. NaN scores (an unreadable image) never vote.
    """
    import numpy as np

    tile, relative, ham = (np.asarray(x, dtype=np.float64) for x in (tile, relative, ham))
    cos = (
        np.full(tile.shape, np.nan)
        if cos is None or not use_cosine
        else np.asarray(cos, np.float64)
    )

    def passes(x: Any, limit: float | None, upper: bool = True) -> Any:
        if limit is None:  # this descriptor never votes at this level
            return np.zeros(x.shape, bool)
        with np.errstate(invalid="ignore"):
            return x <= limit if upper else x >= limit

    strong = (
        passes(tile, th.copy_tile)
        | passes(relative, th.copy_relative)
        | passes(ham, th.copy_hamming)
        | passes(cos, th.copy_cosine, upper=False)
    )
    votes = (
        passes(tile, th.near_tile).astype(np.int8)
        + passes(relative, th.near_relative)
        + passes(ham, th.near_hamming)
        + passes(cos, th.near_cosine, upper=False)
    )
    return np.where(strong | (votes >= 2), 0, np.where(votes >= 1, 1, 2)).astype(np.int8), votes


# -- reading a workspace ------------------------------------------------------------------------
def read_rows(
    ws: Workspace, row_ids: Sequence[int] | Any, columns: list[str]
) -> dict[int, dict[str, Any]]:
    """Metadata columns for the given row_ids, reading only the parts that hold them."""
    import numpy as np

    wanted = np.unique(np.asarray(row_ids, dtype=np.int64))
    out: dict[int, dict[str, Any]] = {}
    for part in ws.require_parts():
        sel = wanted[(wanted >= part.row_offset) & (wanted < part.row_offset + part.rows)]
        if sel.size:
            table = ws.read_part(part, columns=["row_id", *columns]).take(sel - part.row_offset)
            for rec in table.to_pylist():
                out[int(rec["row_id"])] = rec
    return out


def load_embeddings(ws: Workspace) -> tuple[Any, dict[str, Any]]:
    """All image embeddings (float32, rows = row_ids) and `embeddings/model.json`."""
    import numpy as np

    info_path = ws.path("embeddings/model.json")
    if not info_path.exists():
        raise AuditError(f"{ws.root} has no embeddings. Run: audit embed {ws.root}")
    arrays = [
        np.load(ws.path(f"embeddings/img-{p.stem}.npy"), mmap_mode="r") for p in ws.require_parts()
    ]
    emb = np.concatenate(arrays).astype(np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1), json.loads(info_path.read_text("utf-8"))


def load_hashes(ws: Workspace) -> tuple[Any, Any]:
    """(rows, 4) int64 codes in `HASHES` order and a (rows,) validity mask, by row_id."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ws.require_hashes(HASHES, by="audit match")
    n = ws.num_rows
    codes, valid = np.zeros((n, len(HASHES)), np.int64), np.zeros(n, bool)
    for part in ws.require_parts():
        path = ws.path(f"hashes/part-{part.stem}.parquet")
        if not path.exists():
            raise AuditError(f"{path} is missing. Run: audit hash {ws.root}")
        t = pq.read_table(path, columns=["row_id", *HASHES])
        ids = t["row_id"].to_numpy()
        ok = pc.is_valid(t["phash"]).to_numpy(zero_copy_only=False)
        for j, h in enumerate(HASHES):
            col = np.asarray(pc.fill_null(t[h], 0).to_numpy())
            codes[ids, j] = col.view(np.int64) if col.dtype == np.uint64 else col.astype(np.int64)
        valid[ids] = ok
    return codes, valid


def load_pixels(ws: Workspace, row_ids: Sequence[int], size: int = TILE_SIZE) -> dict[int, Any]:
    """Decoded (size, size, 3) arrays by row_id; unreadable images map to an ImageProblem."""
    cols = [*IMAGE_LOCATION, "image_sha256"]
    out: dict[int, Any] = {}
    for rid, rec in read_rows(ws, row_ids, cols).items():
        if rec["image_status"] != "ok" or not rec["image_path"]:
            out[rid] = ImageProblem("image_missing", f"row {rid} has no usable image")
            continue
        try:
            data = read_bytes(rec["image_path"], rec["image_offset"], rec["image_size"])
            out[rid] = to_pixels(decode(data, draft_size=(size, size)), size)
        except ImageProblem as p:
            out[rid] = p
    return out
