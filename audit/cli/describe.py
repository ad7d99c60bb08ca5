"""Commands that describe images: hash, embed, index, dedup.

Defaults live in the library signatures; an option left out is not passed on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

WS = click.argument("ws", type=click.Path(file_okay=False, path_type=Path))


def _given(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@click.command("hash")
@WS
@click.option("--workers", type=int, help="Decoding processes (default 2; 1 = in this process).")
@click.option(
    "--fast-decode/--exact-decode",
    default=None,
    help="Decode at reduced size (default) or at full size, bit-identical to imagehash.",
)
@click.option(
    "--hashes",
    "which",
    help="Comma-separated subset of phash,dhash,whash,ahash (default all four; dedup needs "
    "phash,dhash, match all four).",
)
def hash_(ws: Path, workers: int | None, fast_decode: bool | None, which: str | None) -> None:
    """pHash, dHash, wHash and aHash of every image: hashes/part-*.parquet.

    Example: audit hash indexes/sample --workers 2
    """
    from audit import hashes

    chosen = [h.strip() for h in which.split(",") if h.strip()] if which is not None else None
    s = hashes.compute(ws, **_given(workers=workers, fast_decode=fast_decode, which=chosen))
    click.echo(
        f"{s['hashed']} hashed ({','.join(s['hashes'])}), {s['errors']} error(s), "
        f"{s['resumed_parts']} part(s) resumed "
        f"in {s['seconds']} s -> {ws}/hashes/"
    )


@click.command("embed")
@WS
@click.option("--model", help="open_clip architecture, or 'tiny' (built in code; default).")
@click.option("--pretrained", help="open_clip tag, a .bin/.safetensors path, or 'none' (default).")
@click.option("--batch-size", type=int, help="Images per forward pass (default 64).")
@click.option("--workers", type=int, help="Decoding processes feeding the model (default 2).")
@click.option("--device", help="torch device (default cpu).")
def embed(
    ws: Path,
    model: str | None,
    pretrained: str | None,
    batch_size: int | None,
    workers: int | None,
    device: str | None,
) -> None:
    """CLIP image and caption embeddings: embeddings/img-*.npy, txt-*.npy, scores-*.parquet.

    Example: audit embed indexes/sample --model ViT-B-32 --pretrained laion2b_s34b_b79k
    """
    from audit import embeddings
    from audit.reports import UNTRAINED_WARNING

    s = embeddings.compute(
        ws,
        **_given(
            model=model,
            pretrained=pretrained,
            batch_size=batch_size,
            workers=workers,
            device=device,
        ),
    )
    if not s["trained"]:
        click.secho(UNTRAINED_WARNING, fg="yellow", err=True)
    click.echo(
        f"{s['embedded']} embedded, {s['errors']} error(s), dim {s['dim']}, "
        f"model {s['model']}/{s['pretrained']} -> {ws}/embeddings/"
    )


@click.command("index")
@WS
@click.option("--memory-budget-mb", type=int, help="Memory the image index may use (default 1024).")
@click.option(
    "--kind",
    type=click.Choice(["auto", "flat", "ivf", "hnsw", "ivfpq"]),
    help="Index type (default auto: chosen by size and memory budget).",
)
def index(ws: Path, memory_budget_mb: int | None, kind: str | None) -> None:
    """faiss indexes over image embeddings (inner product) and pHash codes: faiss/.

    Example: audit index indexes/sample --memory-budget-mb 512
    """
    from audit import knn

    s = knn.build(ws, **_given(memory_budget_mb=memory_budget_mb, kind=kind))
    recall = "n/a" if s.get("recall_at_10") is None else f"{s['recall_at_10']:.3f}"
    click.echo(
        f"{s.get('image_vectors', 0)} image vectors in {s.get('image_index') or 'no'} index "
        f"(recall@10 {recall}), {s.get('hash_codes', 0)} phash codes -> {ws}/faiss/"
    )


@click.command("dedup")
@WS
@click.option(
    "--hamming", type=int, help="Max pHash Hamming distance of a near duplicate (default 6)."
)
@click.option(
    "--cosine", type=float, help="Min embedding cosine of a near duplicate (default 0.95)."
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where duplicates.md/.html go (default reports/<dataset>).",
)
def dedup(ws: Path, hamming: int | None, cosine: float | None, report_dir: Path | None) -> None:
    """Exact and near-duplicate clusters: duplicates.parquet (and a report page).

    Example: audit dedup indexes/sample --hamming 6 --report-dir reports/sample
    """
    from audit.checks import duplicates

    s = duplicates.find(ws, **_given(hamming=hamming, cosine=cosine))
    line = (
        f"{s['clusters']} cluster(s), {s['rows_in_clusters']} rows "
        f"({s['by_kind']}) -> {ws}/duplicates.parquet"
    )
    from audit.reports import default_dir
    from audit.reports import duplicates as page
    from audit.workspace import Workspace

    report_dir = report_dir or default_dir(Workspace.open(ws))
    line += f"; report {page.write(ws, report_dir)}"
    click.echo(line)


COMMANDS: list = [hash_, embed, index, dedup]
