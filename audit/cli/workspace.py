"""Commands: ingest, query, status (the workspace and its SQL surface)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _given(**kw: Any) -> dict[str, Any]:
    """Options the user set; the rest keep the library's defaults."""
    return {k: v for k, v in kw.items() if v is not None}


@click.command()
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("sources", metavar="SOURCE...", nargs=-1)
@click.option("--dataset", help="Dataset name recorded in the manifest (default: the folder name).")
@click.option(
    "--rows-per-part", type=int, help="At most this many rows per metadata part [100000]."
)
@click.option(
    "--max-pixels", type=int, help="Images with more pixels are decompression_bomb errors."
)
@click.option(
    "--verify-images/--no-verify-images",
    default=None,
    help="Check whole images, not just headers (finds truncated files) [on].",
)
@click.option("--url-col", help="Source column holding the image URL (img2dataset's --url_col).")
@click.option("--caption-col", help="Source column holding the caption (--caption_col).")
def ingest(
    ws: Path,
    sources: tuple[str, ...],
    dataset: str | None,
    rows_per_part: int | None,
    max_pixels: int | None,
    verify_images: bool | None,
    url_col: str | None,
    caption_col: str | None,
) -> None:
    """Ingest LAION-style parquet, img2dataset shards or image folders into workspace WS.

    SOURCE is a .parquet (images in a same-name .tar or folder beside it, or in a jpg column
    as img2dataset's parquet output has them), a metadata table (.txt URL list, .csv, .tsv,
    .jsonl; .gz/.bz2/.zst too), a .tar shard, a folder of shards, or a plain folder of images
    with .txt/.json sidecars. Metadata files can be remote (https://, s3://, gs://, hf://,
    file://, memory://: read through fsspec, streaming). Rerunning after an interruption
    continues after the last finished part.

    Example: audit ingest indexes/demo audit/data/sample/
    Example: audit ingest indexes/mine links.csv.gz --url-col image_link --caption-col alt
    """
    from audit import metadata

    s = metadata.ingest(
        ws,
        list(sources),
        **_given(
            dataset=dataset,
            rows_per_part=rows_per_part,
            max_pixels=max_pixels,
            verify_images=verify_images,
            url_col=url_col,
            caption_col=caption_col,
        ),
    )
    errors = ", ".join(f"{r} {n:,}" for r, n in s["errors"].items()) or "none"
    click.echo(
        f"ingested {s['rows']:,} rows into {s['parts']} part(s) of {ws} in {s['seconds']} s; "
        f"images {s['images']['ok']:,} ok, {s['images']['missing']:,} missing, "
        f"{s['images']['error']:,} error; errors: {errors}"
    )


@click.command()
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("sql", metavar="SQL")
@click.option(
    "--format",
    "format",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    help="Output format [table]; parquet needs --output.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE instead of stdout.",
)
def query(ws: Path, sql: str, format: str | None, output: Path | None) -> None:
    """Run SQL over the workspace views (metadata, errors, hashes, duplicates, optout, ...).

    Example: audit query indexes/demo "SELECT reason, count(*) AS n FROM errors GROUP BY 1"
    """
    from audit import sql as sql_

    table = sql_.query(ws, sql)
    text = sql_.export(table, **_given(format=format, output=output))
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {table.num_rows:,} rows to {output}", err=True)


@click.command()
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.option(
    "--verify",
    is_flag=True,
    default=None,
    help="Re-hash every output to catch files changed on disk.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(ws: Path, verify: bool | None, as_json: bool) -> None:
    """Rows, images, inputs, each stage done / stale / running (and why), error counts.

    Example: audit status indexes/demo --json
    """
    from audit import sql as sql_

    info = sql_.status(ws, **_given(verify=verify or None))
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        click.echo(sql_.status_text(info), nl=False)


COMMANDS: list = [ingest, query, status]
