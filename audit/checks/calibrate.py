"""Calibration of the copy descriptors: how well does each one tell a copy from another image?

Positives are real images put through one copy-style transformation each (crop, rescale,
JPEG, colour shift, flip, rotation, overlaid text), paired with their original; negatives
are the same transformed image paired with every *other* original of the set, so a set of
n images gives n positives and n(n-1) negatives per transformation. That 1:(n-1) ratio is
the situation of a nearest-neighbour search, harsher than a balanced benchmark, so a
threshold that keeps 99% precision here is conservative.

For each descriptor (tiled l2, the four perceptual hashes, embedding cosine, and their
combination) we report, pooled and per transformation: ROC AUC, the threshold that
maximises F1 with its precision and recall, and the recall reachable at >= 99% precision
with its threshold. These numbers set the defaults of `audit.checks.memorisation`.

The descriptors come in as functions (`Descriptors`), so this module imports no stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit.errors import AuditError
from audit.schema import HASHES

RELATIVE_NEIGHBOURS = 20


# -- copy-style transformations: (image, rng) -> image -------------------------------------------
def crop(img: Any, rng: Any) -> Any:
    """Keep a random 75-90% of each side, then back to the original size."""
    w, h = img.size
    f = rng.uniform(0.75, 0.9)
    cw, ch = max(1, int(w * f)), max(1, int(h * f))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)).resize((w, h))


def rescale(img: Any, rng: Any) -> Any:
    """Down to 30-70% of the size (a thumbnail copy)."""
    f = rng.uniform(0.3, 0.7)
    return img.resize((max(8, int(img.width * f)), max(8, int(img.height * f))))


def jpeg(img: Any, rng: Any) -> Any:
    """Re-encode as JPEG at quality 20-60."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(20, 61)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def colour(img: Any, rng: Any) -> Any:
    """Brightness, contrast and saturation each scaled by 0.7-1.3."""
    from PIL import ImageEnhance

    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.7, 1.3))
    return img


def flip(img: Any, rng: Any) -> Any:
    """Mirror left-right."""
    from PIL import ImageOps

    return ImageOps.mirror(img)


def rotation(img: Any, rng: Any) -> Any:
    """Rotate 5-15 degrees either way, corners filled white."""
    angle = rng.uniform(5, 15) * rng.choice([-1, 1])
    return img.rotate(angle, fillcolor=(255, 255, 255))


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


TRANSFORMS: dict[str, Callable[[Any, Any], Any]] = {
    "crop": crop,
    "rescale": rescale,
    "jpeg": jpeg,
    "colour": colour,
    "flip": flip,
    "rotation": rotation,
    "overlay_text": overlay_text,
}


@dataclass(frozen=True)
class Descriptors:
    """The functions that describe images, passed in by the composer.

    `rule(scores) -> verdict codes` (0 copy, 1 near, 2 novel) is the memorisation check's
    decision at its current thresholds, given the score matrices of `pair_scores`; it is
    measured like one more descriptor.
    """

    to_pixels: Callable[[Any], Any]
    tile_distance_matrix: Callable[[Any, Any], Any]
    hash_images: Callable[[list[Any]], Any]
    hamming: Callable[[Any, Any], Any]
    embed_images: Callable[[list[Any]], Any] | None = None
    rule: Callable[[dict[str, Any]], Any] | None = None


# Lower is more similar for distances; every score is turned into "higher = more similar".
LOWER_IS_CLOSER = {
    "tile_l2": True,
    "tile_relative": True,
    **{f"{h}_hamming": True for h in HASHES},
    "cosine": False,
    "combined": False,
}


def pair_scores(originals: list[Any], copies: list[Any], d: Descriptors) -> dict[str, Any]:
    """(n, n) score matrices, copies x originals, one per descriptor; the diagonal holds the positives."""
    import numpy as np

    orig_px = np.stack([d.to_pixels(im) for im in originals])
    copy_px = np.stack([d.to_pixels(im) for im in copies])
    tile = d.tile_distance_matrix(copy_px, orig_px)
    scores: dict[str, Any] = {"tile_l2": tile, "tile_relative": relative_matrix(tile)}
    oh, ch = np.asarray(d.hash_images(originals)), np.asarray(d.hash_images(copies))
    for j, h in enumerate(HASHES):
        scores[f"{h}_hamming"] = d.hamming(ch[:, j][:, None], oh[:, j][None, :]).astype(np.float32)
    if d.embed_images is not None:
        scores["cosine"] = (
            np.asarray(d.embed_images(copies)) @ np.asarray(d.embed_images(originals)).T
        )
    # a simple combination: mean of the similarities, each mapped onto [0, 1]
    parts = [1 - scores["tile_l2"], 1 - scores["phash_hamming"] / 64]
    if "cosine" in scores:
        parts.append((scores["cosine"] + 1) / 2)
    scores["combined"] = np.mean(parts, axis=0)
    return scores


def relative_matrix(
    distances: Any, neighbours: int = RELATIVE_NEIGHBOURS, alpha: float = 0.5
) -> Any:
    """Carlini et al.'s relative distance of every pair: d / (alpha * mean of the row's nearest n).

    The match verifies up to 2k = 20 candidates per generated image, so n = 20 here too.
    """
    import numpy as np

    d = np.asarray(distances, dtype=np.float64)
    n = min(neighbours, d.shape[1])
    mean = np.sort(d, axis=1)[:, :n].mean(axis=1, keepdims=True)
    return d / np.maximum(alpha * mean, 1e-9)


def pr_stats(
    similarity: Any, labels: Any, lower_is_closer: bool = False
) -> dict[str, float | None]:
    """ROC AUC, best-F1 threshold and recall at >= 99% precision for one descriptor.

    Thresholds are reported in the descriptor's own unit (a distance: pass when <=).
    """
    import numpy as np
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    s = np.asarray(similarity, dtype=np.float64)
    s = -s if lower_is_closer else s
    y = np.asarray(labels, dtype=bool)
    precision, recall, thr = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = np.where(
        precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0
    )
    b = int(np.argmax(f1))
    ok = np.flatnonzero(precision >= 0.99)
    p99 = int(ok[np.argmax(recall[ok])]) if ok.size else None
    sign = -1.0 if lower_is_closer else 1.0
    return {
        "auc": float(roc_auc_score(y, s)),
        "best_f1": float(f1[b]),
        "best_f1_threshold": sign * float(thr[b]),
        "precision_at_best_f1": float(precision[b]),
        "recall_at_best_f1": float(recall[b]),
        "recall_at_p99": float(recall[p99]) if p99 is not None else 0.0,
        "threshold_at_p99": sign * float(thr[p99]) if p99 is not None else None,
        "chance_recall_at_best_f1": float(np.mean(s[~y] >= thr[b])),  # = false-positive rate
    }


def calibrate(
    images: list[Any],
    descriptors: Descriptors,
    seed: int = 0,
    transforms: dict[str, Callable[[Any, Any], Any]] | None = None,
) -> dict[str, Any]:
    """Measure every descriptor on `images` (PIL, RGB) and their transformed copies.

    Returns {"pooled": {descriptor: stats}, "per_transform": {transform: {descriptor: stats}},
    "rule": {transform: {copy_recall, copy_false_positive_rate, ...}}, "pairs": counts}.
    """
    import numpy as np

    transforms = transforms or TRANSFORMS
    if len(images) < 3:
        raise AuditError(
            f"calibration needs at least 3 images, got {len(images)}: pass a larger --n"
        )
    n = len(images)
    rng = np.random.default_rng(seed)
    eye = np.eye(n, dtype=bool)
    pooled: dict[str, list[Any]] = {}
    per_transform: dict[str, dict[str, Any]] = {}
    rule: dict[str, dict[str, float]] = {}
    all_codes: list[Any] = []
    for name, fn in transforms.items():
        copies = [fn(im, rng) for im in images]
        scores = pair_scores(images, copies, descriptors)
        per_transform[name] = {
            k: pr_stats(v.ravel(), eye.ravel(), LOWER_IS_CLOSER[k]) for k, v in scores.items()
        }
        for k, v in scores.items():
            pooled.setdefault(k, []).append(v.ravel())
        if descriptors.rule is not None:
            codes = np.asarray(descriptors.rule(scores))
            rule[name] = _rule_stats(codes, eye)
            all_codes.append(codes)
    labels = np.tile(eye.ravel(), len(transforms))
    result = {
        "images": n,
        "seed": seed,
        "transforms": list(transforms),
        "pairs": {
            "positives": int(n * len(transforms)),
            "negatives": int(n * (n - 1) * len(transforms)),
        },
        "pooled": {
            k: pr_stats(np.concatenate(v), labels, LOWER_IS_CLOSER[k]) for k, v in pooled.items()
        },
        "per_transform": per_transform,
    }
    if rule:
        rule["pooled"] = _rule_stats(
            np.concatenate(all_codes), np.concatenate([eye] * len(all_codes))
        )
        result["rule"] = rule
    return result


def _rule_stats(codes: Any, eye: Any) -> dict[str, float]:
    """Recall and false-positive rate of the verdicts `copy` and `copy or near` on one transform."""

    copy, flagged = codes == 0, codes <= 1
    # precision at the search's base rate: among pairs flagged, how many are the true original
    return {
        "copy_recall": float(copy[eye].mean()),
        "copy_false_positive_rate": float(copy[~eye].mean()),
        "copy_precision": float(copy[eye].sum() / max(1, copy.sum())),
        "near_or_copy_recall": float(flagged[eye].mean()),
        "near_or_copy_false_positive_rate": float(flagged[~eye].mean()),
        "near_or_copy_precision": float(flagged[eye].sum() / max(1, flagged.sum())),
    }


def suggest_thresholds(result: dict[str, Any]) -> dict[str, float | None]:
    """Copy thresholds at >= 99% precision, near thresholds at the best F1 (pooled)."""
    p = result["pooled"]
    out: dict[str, float | None] = {
        "copy_tile": p["tile_l2"]["threshold_at_p99"],
        "near_tile": p["tile_l2"]["best_f1_threshold"],
        "copy_relative": p["tile_relative"]["threshold_at_p99"],
        "near_relative": p["tile_relative"]["best_f1_threshold"],
        "copy_hamming": p["phash_hamming"]["threshold_at_p99"],
        "near_hamming": p["phash_hamming"]["best_f1_threshold"],
    }
    if "cosine" in p:
        out.update(
            copy_cosine=p["cosine"]["threshold_at_p99"],
            near_cosine=p["cosine"]["best_f1_threshold"],
        )
    return out
