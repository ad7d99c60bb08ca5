"""Calibration of the memorisation check: precision and recall, per copy transformation.

The benchmark is the search a user runs. The workspace's images are deduplicated first
(same sha256, or near-identical 32x32 grey thumbnails: openclipart holds the same picture
under several names and long numbered series that differ by a line; and, with
`group_by`, equal metadata values such as openclipart's numbered variants of one drawing,
which recolour or redraw a detail and are copies of each other (`family_key`), and
pictures of one series whose thumbnails correlate (`series_key`, `SERIES_CORRELATION`): the
same king beside another suit, another phase of one moon drawing), then whole groups of
twins are drawn as *negatives* and removed from the searched set, so a negative has no
copy in it. Of the remaining groups, `sources` images become *positives*: each is put
through every copy transformation below, alone and in chains of 2-3, and the copy is
matched against the workspace like a generated image. A positive is found when the verdict
is `copy` and the matched image is its source or one of the source's twins; a `copy`
verdict on anything else (a negative, or the wrong source) is a false positive.

Reported for the final verdict and for each descriptor alone (what it would say about its
own best candidate at its copy threshold):
- per transformation: recall, and the copies it matched to the wrong source. No precision:
  the negatives are not made by any one transformation, so charging all of their false
  positives to every row (as an earlier version did) measured the negatives, not the row;
- on the negatives, once: how many were called a copy of anything (the false-positive rate);
- per pool (single transformations, crop/rotation/mirror, chains): recall, and precision
  = true / (true + wrong-source copies in the pool + copies called on the negatives), the
  negatives counted once per pool. It depends on how many negatives stand beside the
  pool's positives, so the report states both counts.
Candidate recall@k says how often the true source was among each search's candidates at
all. Every false positive and every missed copy is listed (query, matched row, evidence) for
inspection.

The matcher comes in as a function (`Match`), so this module imports no stage.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from audit.errors import AuditError

TWIN_RMS = 0.05  # 32x32 grey thumbnails closer than this (RMS, 0-1) are one picture
# Within one series (see `series_key`), thumbnails whose zero-mean correlation (as they are
# or one mirrored) reaches this are variants of one drawing: a recoloured car, the moon in
# another phase, the same king beside another suit, another pictogram in the same road-sign
# frame. Measured on the false positives of a 2,000-image calibration (reports/calibration-2000).
SERIES_CORRELATION = 0.8
# Content thumbnails (`features.content_thumbnail`: the drawing cut from its margin, 16x16,
# standardised) correlating this much, as they are or mirrored, are one drawing whatever
# the metadata says: a danger sign filed as `danger general yves` and as `DangerGeneral`,
# one paint roller with and without "Wet Paint". Chosen by looking at the pairs of a
# 2,000-image workspace: at 0.97 and above every pair is one drawing or one numbered
# series (stars, moon phases, card faces); between 0.95 and 0.97 two different globes.
CONTENT_CORRELATION = 0.97
CHAINS = 60  # chained queries per chain length (2 and 3)


# -- copy-style transformations: (image, rng) -> image -------------------------------------------
# The edits a copier makes, each at the strength the memorisation issue asks the check to
# survive: crops down to half the area, rotations up to 20 degrees with fill, mirroring,
# borders, rescaling, grey, blur, JPEG down to quality 15, overlaid text, colour shifts.
def crop(img: Any, rng: Any) -> Any:
    """Keep a random 50-90% of the area (any aspect), at the cropped size."""
    w, h = img.size
    area = rng.uniform(0.5, 0.9)
    aspect = rng.uniform(0.8, 1.25)
    fw, fh = min(1.0, np.sqrt(area * aspect)), min(1.0, np.sqrt(area / aspect))
    cw, ch = max(8, int(w * fw)), max(8, int(h * fh))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def rescale(img: Any, rng: Any) -> Any:
    """Down to 30-70% of the size (a thumbnail copy)."""
    f = rng.uniform(0.3, 0.7)
    return img.resize((max(8, int(img.width * f)), max(8, int(img.height * f))))


def jpeg(img: Any, rng: Any) -> Any:
    """Re-encode as JPEG at quality 15-50."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(15, 51)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def colour(img: Any, rng: Any) -> Any:
    """Brightness, contrast and saturation each scaled by 0.7-1.3."""
    from PIL import ImageEnhance

    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.7, 1.3))
    return img


def grey(img: Any, rng: Any) -> Any:
    """Greyscale (kept as RGB)."""
    return img.convert("L").convert("RGB")


def blur(img: Any, rng: Any) -> Any:
    """Gaussian blur of radius 0.5-1.5% of the longest side (1-4 px at 256)."""
    from PIL import ImageFilter

    return img.filter(ImageFilter.GaussianBlur(max(img.size) * rng.uniform(0.005, 0.015)))


def mirror(img: Any, rng: Any) -> Any:
    """Mirror left-right."""
    from PIL import ImageOps

    return ImageOps.mirror(img)


def rotation(img: Any, rng: Any) -> Any:
    """Rotate 5-20 degrees either way, corners filled white or a random colour."""
    angle = rng.uniform(5, 20) * rng.choice([-1, 1])
    fill = (255, 255, 255) if rng.random() < 0.5 else tuple(int(c) for c in rng.integers(0, 256, 3))
    return img.rotate(angle, fillcolor=fill, resample=_bilinear())


def border(img: Any, rng: Any) -> Any:
    """A frame of 5-20% of the size on every side, in a random colour."""
    from PIL import ImageOps

    pad = max(2, int(max(img.size) * rng.uniform(0.05, 0.2)))
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    return ImageOps.expand(img, border=pad, fill=fill)


def overlay_text(img: Any, rng: Any) -> Any:
    """A caption or watermark written over the image."""
    from PIL import ImageDraw, ImageFont

    img = img.copy()
    size = max(8, img.height // 8)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(0, max(1, img.height - size)))
    text = rng.choice(["(c) stock photo", "SAMPLE", "www.example.com", "meme caption here"])
    draw.text((2, y), str(text), fill=tuple(int(c) for c in rng.integers(0, 256, 3)), font=font)
    return img


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR


TRANSFORMS: dict[str, Callable[[Any, Any], Any]] = {
    "crop": crop,
    "rotation": rotation,
    "mirror": mirror,
    "border": border,
    "rescale": rescale,
    "grey": grey,
    "blur": blur,
    "jpeg": jpeg,
    "overlay_text": overlay_text,
    "colour": colour,
}
# The three the issue singles out (recall >= 0.90 each), beside the pooled >= 0.95.
GEOMETRIC = ("crop", "rotation", "mirror")


def chain(img: Any, rng: Any, names: tuple[str, ...]) -> Any:
    """Apply the named transformations in order."""
    for name in names:
        img = TRANSFORMS[name](img, rng)
    return img


def random_chain(rng: Any, length: int) -> tuple[str, ...]:
    """`length` distinct transformations in a random order."""
    return tuple(str(n) for n in rng.choice(list(TRANSFORMS), size=length, replace=False))


Match = Callable[[list[Any], frozenset[int]], list[dict[str, Any]]]


def thumbnail(img: Any) -> Any:
    """The 32x32 grey thumbnail (float32 in [0, 1]) that twin detection compares."""
    from PIL import Image

    return np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX), np.float32) / 255


def family_key(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The key under which rows are variants of one picture: the metadata values, the last
    (a title) by its first word of letters, case-folded, so numbered and named variants of
    one drawing agree ('arrow04' / 'arrow05', 'dodge neon green' / 'dodge neon pink').
    Missing values agree with each other; None when every value is missing."""
    if all(v is None for v in values):
        return None
    *head, last = values
    words = re.findall(r"[a-z]+", str(last).casefold()) if last is not None else []
    return (*head, words[0] if words else last)


def name_key(title: Any) -> str | None:
    """A title's first word of letters, case-folded ('Hummer H2 yellow' -> 'hummer'): the
    name that one drawing keeps when it is filed under two category paths."""
    words = re.findall(r"[a-z]+", str(title).casefold()) if title is not None else []
    return words[0] if words else None


def series_key(value: Any) -> str | None:
    """A category path cut to its first two levels ('recreation / games / cards / simple' ->
    'recreation / games'): the pictures that one series of drawings spreads over."""
    return None if value is None else " / ".join(p.strip() for p in str(value).split("/")[:2])


def twin_groups(
    sha256: list[Any],
    thumbs: Any,
    rms: float = TWIN_RMS,
    block: int = 1024,
    families: list[Any] | None = None,
    series: list[Any] | None = None,
    series_correlation: float = SERIES_CORRELATION,
    names: list[Any] | None = None,
    content: Any = None,
    content_correlation: float = CONTENT_CORRELATION,
) -> Any:
    """Group ids (smallest member index) joining same-sha256 images, near-identical
    thumbnails, near-identical `content` thumbnails ((n, side*side) unit vectors of
    `features.content_thumbnail`, as they are or mirrored, at `content_correlation`), equal
    `families` values (None = no family) and, when `series` or `names` is
    given, rows of one series or of one name whose thumbnails correlate (as they are or
    mirrored) at `series_correlation`. `names` catches the drawing filed twice, under two
    category paths, with one title ('hummer' in vehicles and in clothing): the same name and
    the same thumbnail. None of these asks the verifier, so the negatives it leaves do not
    depend on it."""
    n = len(sha256)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    def join(close: Any, rows: Any, cols: Any) -> None:
        """Union the (rows[i], cols[j]) pairs where `close` holds, each pair once."""
        for i, j in zip(*np.nonzero(close), strict=True):
            if rows[i] < cols[j]:
                union(int(rows[i]), int(cols[j]))

    for keys in (sha256, families or []):
        first: dict[Any, int] = {}
        for i, h in enumerate(keys):
            if h is not None:
                union(i, first.setdefault(h, i))
    everyone = np.arange(n)
    x = np.asarray(thumbs, np.float32).reshape(n, -1)
    sq = (x * x).sum(1)
    limit = rms * rms * x.shape[1]
    for s in range(0, n, block):
        d = sq[s : s + block, None] + sq[None, :] - 2 * x[s : s + block] @ x.T
        join(d <= limit, everyone[s : s + block], everyone)
    if content is not None:
        c = np.asarray(content, np.float32).reshape(n, -1)
        cm = _mirrored(c)
        for s in range(0, n, block):
            sim = np.maximum(c[s : s + block] @ c.T, c[s : s + block] @ cm.T)
            join(sim >= content_correlation, everyone[s : s + block], everyone)
    keyed = [k for k in (series, names) if k is not None]
    if keyed:
        z, zm = _standardised(x), _standardised(_mirrored(x))
    for keys in keyed:
        members: dict[Any, list[int]] = {}
        for i, key in enumerate(keys):
            if key is not None:
                members.setdefault(key, []).append(i)
        for idx in members.values():
            a = np.asarray(idx)
            join(np.maximum(z[a] @ z[a].T, z[a] @ zm[a].T) >= series_correlation, a, a)
    return np.array([find(i) for i in range(n)])


def _mirrored(x: Any) -> Any:
    """Rows of square thumbnails (n, side*side), each mirrored left-right."""
    side = int(np.sqrt(x.shape[1]))
    return x.reshape(len(x), side, side)[:, :, ::-1].reshape(len(x), -1)


def _standardised(x: Any) -> Any:
    """Rows shifted to mean 0 and scaled to unit length (a flat row stays 0)."""
    z = x - x.mean(axis=1, keepdims=True)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-6)


def plan(
    groups: Any, usable: Any, sources: int, negatives: int, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(source indices, negative indices): negatives are whole twin groups drawn at random
    (every member is removed from the search); sources are one usable image per remaining
    group."""
    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    rng.shuffle(ids)
    negatives = min(negatives, len(ids) // 3)  # a small workspace keeps most groups searchable
    neg_groups = set(ids[:negatives].tolist())
    neg = [int(i) for i in np.flatnonzero(np.isin(groups, list(neg_groups)))]
    reps = []
    for g in ids[negatives:]:
        members = np.flatnonzero((groups == g) & usable)
        if members.size:
            reps.append(int(members[0]))
        if len(reps) >= sources:
            break
    return reps, neg


def calibrate(
    images: list[Any],
    row_ids: list[int],
    groups: Any,
    sources: list[int],
    negatives: list[int],
    match: Match,
    seed: int = 0,
    chains: int = CHAINS,
) -> dict[str, Any]:
    """Run the benchmark: `images[i]` is workspace row `row_ids[i]`, `groups[i]` its twin
    group; `sources` / `negatives` index into them (see `plan`).

    Returns {"per_transform": {name: {descriptor: stats}}, "pooled": {...}, "candidates":
    {name: {search: recall@k}}, "counts": ...}; descriptor "verdict" is the check's.
    """
    if len(sources) < 3 or not negatives:
        raise AuditError(
            f"calibration needs at least 3 source images and 1 negative, got {len(sources)} "
            f"and {len(negatives)}: pass a larger --n or use a larger workspace"
        )
    rng = np.random.default_rng(seed)
    group_of_row = {int(r): int(g) for r, g in zip(row_ids, groups, strict=True)}
    # (transformation, image, source group or None for a negative, row it was made from)
    queries: list[tuple[str, Any, int | None, int]] = []
    for name, fn in TRANSFORMS.items():
        queries += [(name, fn(images[i].copy(), rng), int(groups[i]), row_ids[i]) for i in sources]
    for length in (2, 3):
        for i in rng.choice(sources, size=min(chains, len(sources)), replace=False):
            names = random_chain(rng, length)
            queries.append(
                ("+".join(names), chain(images[i].copy(), rng, names), int(groups[i]), row_ids[i])
            )
    for i in negatives:
        name = str(rng.choice(list(TRANSFORMS)))
        queries.append(
            (f"negative:{name}", TRANSFORMS[name](images[i].copy(), rng), None, row_ids[i])
        )
    excluded = frozenset(int(row_ids[i]) for i in negatives)
    rows = match([q[1] for q in queries], excluded)
    outcomes = _outcomes(queries, rows, group_of_row)
    kinds = {q[0] for q in queries if q[2] is not None}
    singles = [k for k in TRANSFORMS if k in kinds]
    chained = sorted(k for k in kinds if "+" in k)
    per = {t: _stats(outcomes, {t}) for t in [*singles, *chained]}
    pooled = {
        "single": _stats(outcomes, set(singles), pooled=True),
        "chains": _stats(outcomes, set(chained), pooled=True),
        "geometric": _stats(outcomes, set(GEOMETRIC), pooled=True),
    }
    chain_lengths = {
        str(n): _stats(outcomes, {k for k in chained if k.count("+") == n - 1}, pooled=True)
        for n in (2, 3)
    }
    return {
        "seed": seed,
        "transforms": list(TRANSFORMS),
        "counts": {
            "queries": len(queries),
            "sources": len(sources),
            "negatives": len(negatives),
            "per_transform": len(sources),
            "chains_per_length": min(chains, len(sources)),
            "searched_rows": len(row_ids) - len(excluded),
            "twin_groups": int(len(np.unique(groups))),
        },
        "per_transform": per,
        "pooled": pooled,
        "chain_lengths": chain_lengths,
        "candidates": _candidate_recall(outcomes, [*singles, "chains"]),
        "negatives": _negative_stats(outcomes),
        "false_positives": [
            {k: o[k] for k in ("kind", "query_row_id", "train_row_id", "evidence")}
            for o in outcomes
            if o["judged"]["verdict"] == "fp"
        ],
        # what the verdict called the copies it missed, to see why (a row the
        # verifier held back says `near` and its unexplained blob)
        "missed": [
            {k: o[k] for k in ("kind", "query_row_id", "train_row_id", "verdict", "evidence")}
            for o in outcomes
            if o["positive"] and o["judged"]["verdict"] == "miss"
        ],
        "low_information_queries": {
            t: int(sum(o["low_information"] for o in outcomes if o["kind"] == t))
            for t in sorted(kinds | {"negative"})
        },
    }


def _outcomes(
    queries: list[Any], rows: list[dict[str, Any]], group_of_row: dict[int, int]
) -> list[dict[str, Any]]:
    """Per query: for the verdict and each descriptor, 'tp', 'fp' (copy of the wrong
    picture) or 'miss'; and for each search whether it held the source."""
    out = []
    for (kind, _, src, origin), r in zip(queries, rows, strict=True):
        said = {"verdict": (r.get("train_row_id"), r.get("verdict") == "copy")}
        said.update({k: v for k, v in r.get("_alone", {}).items()})
        judged = {}
        for name, (rid, copy) in said.items():
            right = rid is not None and src is not None and group_of_row.get(int(rid)) == src
            judged[name] = "tp" if copy and right else "fp" if copy else "miss"
        found = {
            s: src is not None and any(group_of_row.get(int(x)) == src for x in ids)
            for s, ids in r.get("_found", {}).items()
        }
        found["any"] = any(found.values())
        out.append(
            {
                "kind": "negative" if src is None else kind,
                "query_row_id": int(origin),
                "train_row_id": r.get("train_row_id"),
                "evidence": f"{kind}: {r.get('evidence')}",
                "positive": src is not None,
                "judged": judged,
                "found": found,
                "verdict": r.get("verdict"),
                "low_information": r.get("verdict") == "low_information",
            }
        )
    return out


def _stats(
    outcomes: list[dict[str, Any]], kinds: set[str], pooled: bool = False
) -> dict[str, dict[str, Any]]:
    """Per descriptor over the positives of `kinds`: recall and wrong-source copies; pooled,
    also the copies called on the negatives (counted once) and the precision with them."""
    pos = [o for o in outcomes if o["kind"] in kinds]
    neg = [o for o in outcomes if not o["positive"]]
    if not pos:
        return {}
    out = {}
    for name in pos[0]["judged"]:
        tp = sum(o["judged"].get(name) == "tp" for o in pos)
        wrong = sum(o["judged"].get(name) == "fp" for o in pos)
        s: dict[str, Any] = {
            "positives": len(pos),
            "recall": tp / len(pos),
            "true_positives": tp,
            "wrong_source": wrong,
        }
        if pooled:
            on_neg = sum(o["judged"].get(name) == "fp" for o in neg)
            s.update(
                negatives=len(neg),
                false_positives_on_negatives=on_neg,
                precision=tp / (tp + wrong + on_neg) if tp + wrong + on_neg else None,
            )
        out[name] = s
    return out


def _candidate_recall(outcomes: list[dict[str, Any]], groups: list[str]) -> dict[str, Any]:
    out = {}
    for g in groups:
        pos = [
            o
            for o in outcomes
            if o["positive"] and (o["kind"] == g or (g == "chains" and "+" in o["kind"]))
        ]
        if pos:
            searches = sorted({s for o in pos for s in o["found"]})
            out[g] = {s: sum(o["found"].get(s, False) for o in pos) / len(pos) for s in searches}
    single = [o for o in outcomes if o["positive"] and o["kind"] in TRANSFORMS]
    if single:
        out["single"] = {"any": sum(o["found"]["any"] for o in single) / len(single)}
    return out


def _negative_stats(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """The negatives once: how many each descriptor called a copy (the false-positive rate)."""
    neg = [o for o in outcomes if not o["positive"]]
    names = list(neg[0]["judged"]) if neg else []
    called = {d: sum(o["judged"].get(d) == "fp" for o in neg) for d in names}
    return {
        "queries": len(neg),
        "called_copy": called.get("verdict", 0),
        "false_positive_rate": called.get("verdict", 0) / len(neg) if neg else None,
        "called_copy_by": called,
        "low_information": sum(o["low_information"] for o in neg),
    }
