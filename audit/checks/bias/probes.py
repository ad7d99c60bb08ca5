"""Perceived-attribute probes: CLIP zero-shot prompts over the image embeddings.

These describe how images *appear* to a CLIP model, in the words of the prompts below, never
anyone's identity; they inherit CLIP's own biases (Agarwal et al. 2021, "Evaluating CLIP")
and are only as good as the weights. They run only when the embeddings come from trained
weights (`embeddings/model.json` says `"trained": true`) and the caller passes that model's
text encoder; otherwise the report prints the prompts and says why they were skipped.

Method: cosine between each image and each prompt, times CLIP's logit scale (100), softmax
within a probe. An image enters the appearance probes only if the "person" prompt wins the
gate probe with probability > 0.5. Each image is assigned its most probable prompt; shares
have bootstrap intervals over images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from audit.checks.bias import stats

LOGIT_SCALE = 100.0
GATE = (
    "a photo of a person",
    "a photo of an object, an animal, a landscape or a drawing with no people",
)
PROBES: dict[str, tuple[str, ...]] = {
    "perceived gender presentation": (
        "a photo of a person with a feminine appearance",
        "a photo of a person with a masculine appearance",
        "a photo of a person with an androgynous appearance",
    ),
    "perceived age group": (
        "a photo of a person who appears to be a child",
        "a photo of a person who appears to be a young adult",
        "a photo of a person who appears to be middle-aged",
        "a photo of a person who appears to be elderly",
    ),
    "perceived skin tone": (
        "a photo of a person with light skin",
        "a photo of a person with medium skin",
        "a photo of a person with dark skin",
    ),
}


def model_info(ws_root: Path) -> dict[str, Any] | None:
    """Contents of `embeddings/model.json` (model, pretrained, trained, dim), or None."""
    path = Path(ws_root) / "embeddings" / "model.json"
    if not path.exists():
        return None
    return json.loads(path.read_text("utf-8"))


def prompts() -> dict[str, list[str]]:
    return {"gate: person present": list(GATE), **{k: list(v) for k, v in PROBES.items()}}


def run(
    embeddings: list[np.ndarray],
    encode_texts: Callable[[list[str]], np.ndarray] | None,
    info: dict[str, Any] | None,
    reps: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Probe results, or a `skipped` reason. `embeddings`: per-part (rows, D) image arrays."""
    base: dict[str, Any] = {"prompts": prompts(), "logit_scale": LOGIT_SCALE, "model": info}
    if info is None or not embeddings:
        return {
            **base,
            "skipped": "no image embeddings in the workspace; run `audit embed` with real weights",
        }
    if not info.get("trained"):
        return {
            **base,
            "skipped": (
                f"the embeddings come from model {info.get('model')!r} with pretrained="
                f"{info.get('pretrained')!r}, which is untrained (random weights); "
                "zero-shot probes would be noise, so they were not run"
            ),
        }
    if encode_texts is None:
        return {
            **base,
            "skipped": "the text encoder of the embedding model could not be loaded here",
        }
    x = np.concatenate([np.asarray(e, dtype=np.float32) for e in embeddings])
    norms = np.linalg.norm(x, axis=1)
    x = x[norms > 1e-6] / norms[norms > 1e-6, None]  # zero rows = images that failed to embed
    gate_p = _softmax(x @ _texts(encode_texts, list(GATE)).T)[:, 0]
    people = x[gate_p > 0.5]
    out = {
        **base,
        "images": int(x.shape[0]),
        "images_with_person": int(people.shape[0]),
        "person_share": float(people.shape[0] / x.shape[0]) if x.shape[0] else None,
        "probes": {},
    }
    for name, texts in PROBES.items():
        if people.shape[0] == 0:
            out["probes"][name] = []
            continue
        winner = _softmax(people @ _texts(encode_texts, list(texts)).T).argmax(1)
        counts = np.bincount(winner, minlength=len(texts))
        n = int(counts.sum())
        out["probes"][name] = [
            {
                "prompt": t,
                "images": int(c),
                "share": float(c / n),
                "ci95": stats.bootstrap_cells(counts, _column_share(i, n), reps, rng),
            }
            for i, (t, c) in enumerate(zip(texts, counts, strict=False))
        ]
    return out


def _column_share(i: int, n: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda d: d[:, i] / n


def _texts(encode_texts: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    t = np.asarray(encode_texts(texts), dtype=np.float32)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


def _softmax(cos: np.ndarray) -> np.ndarray:
    z = LOGIT_SCALE * cos
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
