"""Commands: import-embeddings, export-embeddings (clip-retrieval's layout in and out)."""

from __future__ import annotations

from pathlib import Path

import click

from audit.cli.options import emit, json_option, library

IMPORT = "audit.clip_retrieval:import_embeddings"


@click.command("import-embeddings")
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("folder", metavar="FOLDER", type=click.Path(path_type=Path))
@click.option("--model-name", required=True, help="The model that made them, as you name it.")
@library(IMPORT, "pretrained", help="Its weights tag, as you name it.")
@library(
    IMPORT,
    "trained",
    "--trained/--untrained",
    help="Untrained: random-weight embeddings (checks that need meaning skip them).",
)
@json_option
def import_embeddings(
    ws: Path, folder: Path, model_name: str, pretrained: str, trained: bool, as_json: bool
) -> None:
    """Use clip-retrieval inference output (img_emb/, text_emb/, metadata/) as the embed stage.

    Rows are matched by key / image_path, never by position.

    Example: audit import-embeddings indexes/mine clip_out/ --model-name ViT-B-32/laion2b_s34b_b79k
    """
    from audit import clip_retrieval

    s = clip_retrieval.import_embeddings(
        ws, folder, model_name=model_name, pretrained=pretrained, trained=trained
    )
    emit(
        s,
        as_json,
        lambda: (
            f"imported {s['matched']:,} of {s['rows']:,} rows' embeddings (dim {s['dim']}, "
            f"matched by {s['matched_by']}, model {s['model']}); {s['unmatched_embeddings']:,} "
            f"embedding(s) named no row, {s['ambiguous']:,} ambiguous -> {ws}/embeddings/"
        ),
    )


@click.command("export-embeddings")
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@json_option
def export_embeddings(ws: Path, out: Path, as_json: bool) -> None:
    """Write embeddings, metadata and image.index in clip-retrieval's layout (for clip back).

    Example: audit export-embeddings indexes/sample exports/sample-clip-index
    """
    from audit import clip_retrieval

    s = clip_retrieval.export_embeddings(ws, out)
    emit(
        s,
        as_json,
        lambda: (
            f"exported {s['vectors']:,} vectors (dim {s['dim']}, {s['index_key']} index) in "
            f"{s['partitions']} partition(s) to {out}"
        ),
    )


COMMANDS: list = [import_embeddings, export_embeddings]
