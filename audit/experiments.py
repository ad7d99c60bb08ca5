"""Composers for memorisation: `match`, `calibrate`, and the experiment that closes the loop.

`match` describes generated images with the training workspace's own descriptors and runs the
memorisation check; `calibrate` measures the check's descriptors on copies made from real
images; `memorisation` trains the small DDPM on a set with planted duplicates, samples it,
matches the samples and measures loss-based membership inference. Stages never import each
other; this module wires them (like `audit.pipeline`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.checks.memorisation import Thresholds
from audit.errors import AuditError
from audit.workspace import Output, Workspace, atomic_write_bytes, atomic_write_json


def _embed_params(ws: Workspace) -> tuple[str, str]:
    rec = ws.stage("embed")
    if not rec or rec.get("status") != "done":
        raise AuditError(f"{ws.root} has no finished embed stage, so its descriptors are unknown. "
                         f"Run: audit embed {ws.root} && audit hash {ws.root} && audit index {ws.root}")
    return rec["params"]["model"], rec["params"]["pretrained"]


def match(
    generated: str | Path,
    against: str | Path,
    name: str | None = None,
    k: int = 10,
    thresholds: Thresholds = Thresholds(),
    report_dir: str | Path | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Find the training images that generated images copy; returns the summary.

    `generated` is a folder, parquet or webdataset of images (or an already described
    workspace). Writes `<against>/memorisation/<name>/{generated/, matches.parquet, summary.json}`
    and the page `<report_dir>/memorisation.md|.html` (default `reports/<dataset>/`).

    >>> match("generated/sample", against="indexes/sample", name="ddpm")  # doctest: +SKIP
    {'generated': 64, 'counts': {'copy': 3, 'near': 5, 'novel': 56}, 'replication_rate': 0.047, ...}
    """
    from audit import knn, pipeline
    from audit.checks import memorisation
    from audit.reports import memorisation as report

    train = Workspace.open(against)
    model, pretrained = _embed_params(train)
    if not train.stage_fingerprint("index"):
        knn.build(train.root)  # the candidates come from the training indexes
    generated = Path(generated)
    if not generated.exists():
        raise AuditError(f"{generated} does not exist. Pass the folder (or parquet/webdataset) of generated images.")
    name = name or generated.name
    out_dir = train.path(f"memorisation/{name}")
    if (generated / "manifest.json").exists():
        gen_root = generated
    else:
        gen_root = out_dir / "generated"
        pipeline.describe(gen_root, [generated], model=model, pretrained=pretrained, dataset=name, workers=workers)
    run = train.start_stage(f"match-{name}", {"generated": str(generated.resolve()), "k": k,
                                              "thresholds": thresholds.to_dict()}, depends_on=["embed", "hash"])
    summary = memorisation.check(gen_root, train.root, knn.search_embeddings, knn.search_hashes, out_dir,
                                 k=k, thresholds=thresholds)
    rel = f"memorisation/{name}"
    run.finish({key: summary[key] for key in ("generated", "counts", "replication_rate", "replication_ci95")},
               [Output(f"{rel}/matches.parquet", rows=summary["generated"]), Output(f"{rel}/summary.json")])
    report.write_match_page(train.root, name, Path(report_dir or Path("reports") / train.dataset))
    return summary


def calibrate(ws: str | Path, n: int = 200, seed: int = 0, report_dir: str | Path | None = None) -> dict[str, Any]:
    """Measure each copy descriptor on `n` images of `ws` and their transformed copies.

    Writes `<report_dir>/calibration.json|.md|.html` (default `reports/<dataset>/`); returns
    the result with the thresholds it suggests and those in use.

    >>> calibrate("indexes/sample", n=200, seed=0)  # doctest: +SKIP
    """
    import numpy as np

    from audit import embeddings, hashes
    from audit.checks import calibrate as cal
    from audit.checks import memorisation as mem
    from audit.reports import memorisation as report

    if n < 3:
        raise AuditError(f"--n must be at least 3, got {n}.")
    w = Workspace.open(ws)
    model, pretrained = _embed_params(w)
    images, skipped = _distinct_images(w, n, seed)
    clip = embeddings.load_model(model, pretrained)
    trained = bool(clip.info.get("trained"))
    th = Thresholds()
    descriptors = cal.Descriptors(
        to_pixels=mem.to_pixels, tile_distance_matrix=mem.tile_distance_matrix,
        hash_images=hashes.hash_images, hamming=mem.hamming, embed_images=clip.embed_images,
        rule=lambda s: mem.decide(s["tile_l2"], s["tile_relative"], s["phash_hamming"], s.get("cosine"),
                                  th, use_cosine=trained)[0])
    result = cal.calibrate(images, descriptors, seed=seed)
    result.update(workspace=str(w.root), dataset=w.dataset, requested=n, skipped=skipped, model=clip.info,
                  suggested=cal.suggest_thresholds(result), in_use=th.to_dict(), cosine_votes=trained)
    if not trained:
        result["warning"] = "untrained embedding weights: cosine figures describe a random network"
    out = Path(report_dir or Path("reports") / w.dataset)
    atomic_write_json(out / "calibration.json", json.loads(json.dumps(result, default=_jsonable)))
    report.write_calibration_page(out)
    return result


def _jsonable(v: Any) -> Any:
    import numpy as np

    return v.item() if isinstance(v, np.generic) else str(v)


def _distinct_images(ws: Workspace, n: int, seed: int) -> tuple[list[Any], dict[str, int]]:
    """Up to n decoded images with distinct sha256 and some content (blank images are skipped:
    every blank picture is a 'copy' of every other, which says nothing about a descriptor)."""
    import numpy as np
    import pyarrow.parquet as pq

    from audit.checks.memorisation import to_pixels
    from audit.images import ImageProblem, decode, read_bytes

    cols = ["row_id", "image_path", "image_offset", "image_size", "image_status", "image_sha256"]
    rows = [r for p in ws.require_parts() for r in pq.read_table(ws.path(p.path), columns=cols).to_pylist()
            if r["image_status"] == "ok"]
    order = np.random.default_rng(seed).permutation(len(rows))
    seen, images, skipped = set(), [], {"duplicate": 0, "blank": 0, "unreadable": 0}
    for i in order:
        r = rows[i]
        if len(images) >= n:
            break
        if r["image_sha256"] in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(r["image_sha256"])
        try:
            img = decode(read_bytes(r["image_path"], r["image_offset"], r["image_size"]), draft_size=(256, 256))
        except ImageProblem:
            skipped["unreadable"] += 1
            continue
        img.thumbnail((256, 256))
        if to_pixels(img).std() < 0.02:
            skipped["blank"] += 1
            continue
        images.append(img)
    if len(images) < 3:
        raise AuditError(f"{ws.root} has only {len(images)} distinct, readable, non-blank images; calibration needs 3+.")
    return images, skipped
