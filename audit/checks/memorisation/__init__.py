"""Memorisation check: does a generated image copy a training image?

Two steps, as in the literature. **Retrieval**: for every generated image, candidates from
the training workspace's embedding, pHash (query and mirror image) and local-feature
indexes, and from a learned copy descriptor when one is given; the searches come in as
functions, so this package imports no stage. **Verification**: every candidate is checked
geometrically (`audit.verify`: SIFT matches, a RANSAC similarity transform, the correlation
over the aligned overlap) and scored with the global descriptors of `core` (Carlini et al.'s
tiled l2 and relative criterion, pHash, embedding cosine). `matching` holds that logic,
shared with `audit calibrate`, and explains the verdicts: `copy`, `near`, `novel`, and
`low_information` for blank, near-uniform or tiny-foreground pictures, which no pixel
distance or hash can judge.

Somepalli et al. (2023, "Diffusion Art or Digital Forgery?") count a replication at SSCD
similarity >= 0.5; pass the SSCD TorchScript file (`audit match --descriptor PATH`) and its
vote reproduces their protocol. Without it the verifier decides, at thresholds measured by
`audit calibrate` on openclipart (see the README).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit import verify
from audit.checks.memorisation.core import (
    DEFAULT_THRESHOLDS,
    DEFAULTS_SOURCE,
    TILE_GRID,
    TILE_SIZE,
    Thresholds,
    bootstrap_rate,
    decide,
    hamming,
    load_embeddings,
    load_hashes,
    load_pixels,
    loss_auc,
    read_rows,
    relative_distances,
    tile_distance,
    tile_distance_matrix,
    tile_distances,
    to_pixels,
)
from audit.checks.memorisation.matching import VERDICTS, Query, Reference, load_image, match_images
from audit.errors import AuditError
from audit.images import ImageProblem
from audit.schema import HASHES, IMAGE_LOCATION
from audit.workspace import Workspace, atomic_write_bytes, atomic_write_json, atomic_write_parquet

__all__ = [
    "DEFAULTS_SOURCE",
    "DEFAULT_THRESHOLDS",
    "TILE_GRID",
    "TILE_SIZE",
    "VERDICTS",
    "Query",
    "Reference",
    "Thresholds",
    "bootstrap_rate",
    "check",
    "decide",
    "describe_rows",
    "hamming",
    "load_embeddings",
    "load_hashes",
    "load_image",
    "load_pixels",
    "loss_auc",
    "match_images",
    "read_rows",
    "relative_distances",
    "summarise",
    "tile_distance",
    "tile_distance_matrix",
    "tile_distances",
    "to_pixels",
]

PAIR_PNGS = 64  # aligned-overlap pictures written per match (copy first, then the others)

SearchEmbeddings = Callable[[Any, Any, int], tuple[Any, Any]]
SearchHashes = Callable[..., tuple[Any, Any]]


def check(
    generated: str | Path,
    training: str | Path,
    search_embeddings: SearchEmbeddings,
    search_hashes: SearchHashes,
    out_dir: str | Path,
    k: int = 10,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    reps: int = 2000,
    seed: int = 0,
    chunk: int = 64,
    search_features: Callable[..., Any] | None = None,
    hash_images: Callable[[list[Any]], Any] | None = None,
    descriptor: Any = None,
    search_thumbnails: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Match every image of the `generated` workspace against the `training` workspace.

    Both must be described (hash, embed, index) with the same model, and the training
    workspace needs its local-feature index (`audit.features.build`). `descriptor` is an
    optional learned copy descriptor (`audit.descriptors.load`); `search_thumbnails`
    (`audit.features.search_thumbnails`) adds the content-thumbnail candidates. Writes
    `<out_dir>/matches.parquet`, `<out_dir>/summary.json` and `<out_dir>/pairs/*.png`;
    returns the summary.

    >>> from audit import features, hashes, knn  # doctest: +SKIP
    >>> check("indexes/gen", "indexes/sample", knn.search_embeddings, knn.search_hashes,
    ...       "indexes/sample/memorisation/ddpm", search_features=features.search,
    ...       hash_images=hashes.hash_images)  # doctest: +SKIP
    """
    if search_features is None or hash_images is None:
        raise AuditError(
            "check needs search_features and hash_images (audit.features.search and "
            "audit.hashes.hash_images): the copy candidates come from local features too"
        )
    gen, train = Workspace.open(generated), Workspace.open(training)
    if k < 1:
        raise AuditError(f"k must be at least 1, got {k}")
    gen_emb, gen_info = load_embeddings(gen)
    train_emb, train_info = load_embeddings(train)
    if (gen_info.get("model"), gen_info.get("pretrained")) != (
        train_info.get("model"),
        train_info.get("pretrained"),
    ):
        raise AuditError(
            f"{gen.root} was embedded with {gen_info.get('model')}/{gen_info.get('pretrained')} but "
            f"{train.root} with {train_info.get('model')}/{train_info.get('pretrained')}: describe the "
            "generated images with the training workspace's model"
        )
    use_cosine = bool(train_info.get("trained", False))
    codes, codes_ok = load_hashes(train)
    ref = Reference(
        ws=train,
        search_hashes=search_hashes,
        search_features=search_features,
        codes=codes,
        codes_ok=codes_ok,
        embeddings=train_emb,
        search_embeddings=search_embeddings,
        use_cosine=use_cosine,
        search_thumbnails=search_thumbnails,
    )
    if descriptor is not None:
        ref.descriptor_vectors = describe_rows(train, descriptor)
        ref.descriptor_threshold = descriptor.threshold
    n = gen.num_rows
    gen_meta = read_rows(gen, range(n), ["key", "image_member", *IMAGE_LOCATION])
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    pngs = 0
    for start in range(0, n, chunk):
        ids = list(range(start, min(n, start + chunk)))
        imgs = [load_image(gen, {**gen_meta[i], "row_id": i}) for i in ids]
        descs = _describe(descriptor, imgs)
        queries = [
            Query(img, gen_emb[i], None if descs is None else descs[j])
            for j, (i, img) in enumerate(zip(ids, imgs, strict=True))
        ]
        for i, img, r in zip(
            ids, imgs, match_images(queries, ref, hash_images, k, thresholds), strict=True
        ):
            r["generated_row_id"] = i
            if r.get("train_row_id") is not None and r["verdict"] != "novel" and pngs < PAIR_PNGS:
                rel = f"pairs/{i:06d}.png"
                atomic_write_bytes(
                    out_dir / rel, _pair_png(img, ref.cache[r["train_row_id"]][0], r)
                )
                r["pair_png"] = rel
                pngs += 1
            rows.append(r)
    train_meta = read_rows(
        train,
        [r["train_row_id"] for r in rows if r.get("train_row_id") is not None],
        ["key", "url", "caption"],
    )
    for r in rows:
        g = gen_meta[r["generated_row_id"]]
        t = train_meta.get(r["train_row_id"], {}) if r.get("train_row_id") is not None else {}
        member = f"::{g['image_member']}" if g["image_member"] else ""
        r["generated_key"] = g["key"]
        # as the training workspace records paths (`Workspace.relative`): it moves with them
        r["generated_file"] = (
            f"{train.relative(g['image_path'])}{member}" if g["image_path"] else None
        )
        r.update(train_key=t.get("key"), train_url=t.get("url"), train_caption=t.get("caption"))
    atomic_write_parquet(out_dir / "matches.parquet", _table(rows))
    summary = summarise(rows, thresholds, reps, seed)
    summary.update(
        generated_workspace=train.relative(gen.root),  # both relative to the training workspace
        training=".",
        k=k,
        model=train_info,
        cosine_votes=use_cosine,
        defaults_source=DEFAULTS_SOURCE,
        verifier=verify.settings(),
        descriptor=(
            {**descriptor.info, "path": train.relative(descriptor.path)}
            if descriptor is not None
            else "none: pass --descriptor PATH (e.g. sscd_disc_mixup.torchscript.pt) for a "
            "learned copy descriptor; Somepalli et al. count SSCD >= 0.5 as a copy"
        ),
        low_information=int(sum(r["verdict"] == "low_information" for r in rows)),
    )
    if not use_cosine:
        summary["warning"] = (
            "the embedding model has untrained weights: cosine is reported but does not "
            "vote; verdicts rest on the geometric verifier, tiled l2 and phash"
        )
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _describe(descriptor: Any, imgs: list[Any]) -> Any:
    """Learned-descriptor vectors of the readable images (zeros for the others), or None."""
    import numpy as np

    if descriptor is None:
        return None
    good = [i for i, im in enumerate(imgs) if not isinstance(im, ImageProblem)]
    out = np.zeros((len(imgs), descriptor.dim), np.float32)
    if good:
        out[good] = descriptor.embed([imgs[i] for i in good])
    return out


def describe_rows(ws: Workspace, descriptor: Any, batch: int = 32) -> Any:
    """The learned descriptor of every row of `ws` (zeros where the image is unreadable)."""
    import numpy as np

    meta = read_rows(ws, range(ws.num_rows), list(IMAGE_LOCATION))
    out = np.zeros((ws.num_rows, descriptor.dim), np.float32)
    for start in range(0, ws.num_rows, batch):
        ids = list(range(start, min(ws.num_rows, start + batch)))
        imgs = [load_image(ws, {**meta[i], "row_id": i}) for i in ids]
        out[ids] = _describe(descriptor, imgs)
    return out


def _pair_png(query: Any, candidate: Any, row: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    verify.overlay(query, candidate, row["transform"], row["mirrored"]).save(buf, format="PNG")
    return buf.getvalue()


def _table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("generated_row_id", pa.int64()),
            ("generated_key", pa.string()),
            ("generated_file", pa.string()),
            ("train_row_id", pa.int64()),
            ("train_key", pa.string()),
            ("train_url", pa.string()),
            ("train_caption", pa.string()),
            ("verdict", pa.string()),
            ("reason", pa.string()),
            ("evidence", pa.string()),
            ("inliers", pa.int32()),
            ("matches", pa.int32()),
            ("hypothesis", pa.string()),
            ("mirrored", pa.bool_()),
            ("scale", pa.float32()),
            ("rotation", pa.float32()),
            ("correlation", pa.float32()),
            ("tile_correlation", pa.float32()),
            ("overlap", pa.float32()),
            ("unexplained", pa.float32()),
            ("fine_unexplained", pa.float32()),
            ("tile_distance", pa.float32()),
            ("relative_distance", pa.float32()),
            ("cosine", pa.float32()),
            ("descriptor_similarity", pa.float32()),
            *[(f"{h}_hamming", pa.int16()) for h in HASHES],
            ("votes", pa.int8()),
            ("candidates", pa.int16()),
            ("found_by", pa.string()),
            ("pair_png", pa.string()),
            ("error", pa.string()),
        ]
    )
    return pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in rows], schema=schema)


def summarise(
    rows: list[dict[str, Any]], th: Thresholds, reps: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Counts per verdict and the replication (copy) rate with a bootstrap interval."""
    import numpy as np

    verdicts = np.array([r["verdict"] for r in rows])
    rate, lo, hi = bootstrap_rate(verdicts == "copy", reps, seed)
    near, near_lo, near_hi = bootstrap_rate(np.isin(verdicts, ["copy", "near"]), reps, seed)
    copied = {r["train_row_id"] for r in rows if r["verdict"] == "copy"}
    return {
        "generated": len(rows),
        "counts": {v: int((verdicts == v).sum()) for v in VERDICTS},
        "errors": sum(1 for r in rows if r["error"]),
        "replication_rate": rate,
        "replication_ci95": [lo, hi],
        "copy_or_near_rate": near,
        "copy_or_near_ci95": [near_lo, near_hi],
        "training_images_copied": len(copied),
        "bootstrap": {
            "reps": reps,
            "seed": seed,
            "method": "percentile, resampling generated images",
        },
        "thresholds": th.to_dict(),
    }
