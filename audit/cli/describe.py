"""Commands that describe images: hash, embed, index, dedup.

Every option's default is read from the library signature (`options.library`).
"""

from __future__ import annotations

from pathlib import Path

import click

from audit.cli.options import WS, default, emit, engine_options, json_option, library


@click.command("hash")
@WS
@library(
    "audit.hashes:compute",
    "workers",
    type=int,
    help="Decoding processes (1 = in this process; default: the thread budget, --threads).",
)
@library(
    "audit.hashes:compute",
    "fast_decode",
    "--fast-decode/--exact-decode",
    help="Decode at reduced size or at full size, bit-identical to imagehash.",
)
@click.option(
    "--hashes",
    "which",
    default=",".join(default("audit.hashes:compute", "which")),
    show_default=True,
    help="Comma-separated subset of phash,dhash,whash,ahash (dedup needs phash,dhash, match "
    "all four).",
)
@engine_options("audit.hashes:compute")
@json_option
def hash_(
    ws: Path,
    workers: int,
    fast_decode: bool,
    which: str,
    engine: str,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """pHash, dHash, wHash and aHash of every image: hashes/part-*.parquet.

    Example: audit hash indexes/sample --workers 2
    """
    from audit import hashes

    chosen = [h.strip() for h in which.split(",") if h.strip()]
    s = hashes.compute(
        ws,
        workers=workers,
        fast_decode=fast_decode,
        which=chosen,
        engine=engine,
        ray_address=ray_address,
    )
    emit(
        s,
        as_json,
        lambda: (
            f"{s['hashed']} hashed ({','.join(s['hashes'])}), {s['errors']} error(s), "
            f"{s['resumed_parts']} part(s) resumed in {s['seconds']} s -> {ws}/hashes/"
        ),
    )
    if s["rows"] and not s["hashed"]:
        from audit.errors import AuditError

        raise AuditError(
            f"no image could be hashed: all {s['rows']:,} rows are errors (see: audit query {ws} "
            "\"SELECT reason, count(*) FROM errors WHERE stage = 'hash' GROUP BY 1\")."
        )


@click.command("embed")
@WS
@library(
    "audit.embeddings:compute", "model", help="open_clip architecture, or 'tiny' (built in code)."
)
@library(
    "audit.embeddings:compute",
    "pretrained",
    help="open_clip tag, a .bin/.safetensors path, or 'none'.",
)
@library("audit.embeddings:compute", "batch_size", type=int, help="Images per forward pass.")
@library(
    "audit.embeddings:compute",
    "workers",
    type=int,
    help="Decoding processes feeding the model (default: the thread budget, --threads).",
)
@library("audit.embeddings:compute", "device", help="torch device.")
@engine_options("audit.embeddings:compute")
@json_option
def embed(
    ws: Path,
    model: str,
    pretrained: str,
    batch_size: int,
    workers: int,
    device: str,
    engine: str,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """CLIP image and caption embeddings: embeddings/img-*.npy, txt-*.npy, scores-*.parquet.

    Example: audit embed indexes/sample --model ViT-B-32 --pretrained laion2b_s34b_b79k
    """
    from audit import embeddings
    from audit.reports import UNTRAINED_WARNING

    s = embeddings.compute(
        ws,
        model=model,
        pretrained=pretrained,
        batch_size=batch_size,
        workers=workers,
        device=device,
        engine=engine,
        ray_address=ray_address,
    )
    if not s["trained"]:
        click.secho(UNTRAINED_WARNING, fg="yellow", err=True)
    emit(
        s,
        as_json,
        lambda: (
            f"{s['embedded']} embedded, {s['errors']} error(s), dim {s['dim']}, "
            f"model {s['model']}/{s['pretrained']} -> {ws}/embeddings/"
        ),
    )


@click.command("index")
@WS
@library("audit.knn:build", "memory_budget_mb", type=int, help="Memory the image index may use.")
@library(
    "audit.knn:build",
    "kind",
    type=click.Choice(["auto", "flat", "ivf", "hnsw", "ivfpq"]),
    help="Index type (auto: chosen by size and memory budget).",
)
@engine_options("audit.knn:build")
@json_option
def index(
    ws: Path,
    memory_budget_mb: int,
    kind: str,
    engine: str,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """faiss indexes over image embeddings (inner product) and pHash codes: faiss/.

    Example: audit index indexes/sample --memory-budget-mb 512
    """
    from audit import knn

    s = knn.build(
        ws, memory_budget_mb=memory_budget_mb, kind=kind, engine=engine, ray_address=ray_address
    )
    recall = "n/a" if s.get("recall_at_10") is None else f"{s['recall_at_10']:.3f}"
    emit(
        s,
        as_json,
        lambda: (
            f"{s.get('image_vectors', 0)} image vectors in {s.get('image_index') or 'no'} "
            f"index (recall@10 {recall}), {s.get('hash_codes', 0)} phash codes -> {ws}/faiss/"
        ),
    )


@click.command("dedup")
@WS
@library(
    "audit.checks.duplicates:find",
    "hamming",
    type=int,
    help="Max pHash Hamming distance of a near duplicate.",
)
@library(
    "audit.checks.duplicates:find",
    "cosine",
    type=float,
    help="Min embedding cosine of a near duplicate.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where duplicates.md/.html go (default reports/<dataset>).",
)
@json_option
def dedup(ws: Path, hamming: int, cosine: float, report_dir: Path | None, as_json: bool) -> None:
    """Exact and near-duplicate clusters: duplicates.parquet (and a report page).

    Example: audit dedup indexes/sample --hamming 6 --report-dir reports/sample
    """
    from audit.checks import duplicates
    from audit.reports import default_dir, writable_dir
    from audit.reports import duplicates as page
    from audit.workspace import Workspace

    report_dir = writable_dir(report_dir or default_dir(Workspace.open(ws)))
    s = duplicates.find(ws, hamming=hamming, cosine=cosine)
    line = (
        f"{s['clusters']} cluster(s), {s['rows_in_clusters']} rows "
        f"({s['by_kind']}) -> {ws}/duplicates.parquet"
    )
    meta = s.get("metadata") or {}
    if meta:
        line += (
            f"; same URL: {meta['url']['groups']} group(s), {meta['url']['rows']} rows; same "
            f"caption: {meta['caption']['groups']} group(s), {meta['caption']['rows']} rows"
        )
    line += f"; report {page.write(ws, report_dir)}"
    emit(s, as_json, lambda: line)


@click.command("features")
@WS
@library(
    "audit.features:build", "per_image", type=int, help="Strongest SIFT descriptors kept per image."
)
@json_option
def features(ws: Path, per_image: int, as_json: bool) -> None:
    """Local-feature (RootSIFT) index of the training images, the copy candidates of `audit match`.

    `audit match` and `audit calibrate` build it when it is missing; run it ahead to pay the cost
    once. Example: audit features indexes/sample --per-image 64
    """
    from audit import features as local_features

    s = local_features.build(ws, per_image=per_image)
    emit(
        s,
        as_json,
        lambda: (
            f"{s['descriptors']} descriptors of {s['images']} images ({s['kind']}) "
            f"-> {ws}/faiss/features.faiss; {s['thumbnails']['images']} content thumbnails "
            f"({s['thumbnails']['kind']}) -> {ws}/faiss/thumbnails.faiss"
        ),
    )


COMMANDS: list = [hash_, embed, index, features, dedup]
