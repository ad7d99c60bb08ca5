"""Commands: import-embeddings, export-embeddings (clip-retrieval's layout in and out)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("import-embeddings")
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("folder", metavar="FOLDER", type=click.Path(path_type=Path))
@click.option("--model-name", required=True, help="The model that made them, as you name it.")
@click.option("--pretrained", default="unknown", show_default=True, help="Its weights tag.")
@click.option(
    "--trained/--untrained",
    default=True,
    help="Untrained: random-weight embeddings (checks that need meaning skip them).",
)
def import_embeddings(
    ws: Path, folder: Path, model_name: str, pretrained: str, trained: bool
) -> None:
    """Use clip-retrieval inference output (img_emb/, text_emb/, metadata/) as the embed stage.

    Rows are matched by key / image_path, never by position.

    Example: audit import-embeddings indexes/mine clip_out/ --model-name ViT-B-32/laion2b_s34b_b79k
    """
    from audit import clip_retrieval

    s = clip_retrieval.import_embeddings(
        ws, folder, model_name=model_name, pretrained=pretrained, trained=trained
    )
    click.echo(
        f"imported {s['matched']:,} of {s['rows']:,} rows' embeddings (dim {s['dim']}, matched by "
        f"{s['matched_by']}, model {s['model']}); {s['unmatched_embeddings']:,} embedding(s) "
        f"named no row, {s['ambiguous']:,} ambiguous -> {ws}/embeddings/"
    )


@click.command("export-embeddings")
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
def export_embeddings(ws: Path, out: Path) -> None:
    """Write embeddings, metadata and image.index in clip-retrieval's layout (for clip back).

    Example: audit export-embeddings indexes/sample exports/sample-clip-index
    """
    from audit import clip_retrieval

    s = clip_retrieval.export_embeddings(ws, out)
    click.echo(
        f"exported {s['vectors']:,} vectors (dim {s['dim']}, {s['index_key']} index) in "
        f"{s['partitions']} partition(s) to {out}"
    )


COMMANDS: list = [import_embeddings, export_embeddings]
