"""Commands: ingest, query, status, roots (the workspace and its SQL surface)."""

from __future__ import annotations

from pathlib import Path

import click

from audit.cli.options import emit, json_option, library

INGEST = "audit.metadata:ingest"


@click.command()
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("sources", metavar="SOURCE...", nargs=-1)
@click.option("--dataset", help="Dataset name recorded in the manifest (default: the folder name).")
@library(INGEST, "rows_per_part", type=int, help="At most this many rows per metadata part.")
@library(
    INGEST, "max_pixels", type=int, help="Images with more pixels are decompression_bomb errors."
)
@library(
    INGEST,
    "verify_images",
    "--verify-images/--no-verify-images",
    help="Check whole images, not just headers (finds truncated files).",
)
@click.option("--url-col", help="Source column holding the image URL (img2dataset's --url_col).")
@click.option("--caption-col", help="Source column holding the caption (--caption_col).")
@json_option
def ingest(
    ws: Path,
    sources: tuple[str, ...],
    dataset: str | None,
    rows_per_part: int,
    max_pixels: int,
    verify_images: bool,
    url_col: str | None,
    caption_col: str | None,
    as_json: bool,
) -> None:
    """Ingest LAION-style parquet, img2dataset shards or image folders into workspace WS.

    SOURCE is a .parquet (images in a same-name .tar or folder beside it, or in a jpg column
    as img2dataset's parquet output has them), a metadata table (.txt URL list, .csv, .tsv,
    .jsonl; .gz/.bz2/.zst too), a .tar shard, a folder of shards, or a plain folder of images
    with .txt/.json sidecars. Metadata files and .tar shards can be remote (https://, s3://,
    gs://, hf://, file://, memory://: through fsspec, streaming). WS itself can be an fsspec
    URL too (see README "Storage"). Rerunning after an interruption continues after the last
    finished part.

    Example: audit ingest indexes/demo audit/data/sample/
    Example: audit ingest indexes/mine links.csv.gz --url-col image_link --caption-col alt
    """
    from audit import metadata

    s = metadata.ingest(
        ws,
        list(sources),
        dataset=dataset,
        rows_per_part=rows_per_part,
        max_pixels=max_pixels,
        verify_images=verify_images,
        url_col=url_col,
        caption_col=caption_col,
    )
    errors = ", ".join(f"{r} {n:,}" for r, n in s["errors"].items()) or "none"
    emit(
        s,
        as_json,
        lambda: (
            f"ingested {s['rows']:,} rows into {s['parts']} part(s) of {ws} in {s['seconds']} s; "
            f"images {s['images']['ok']:,} ok, {s['images']['missing']:,} missing, "
            f"{s['images']['error']:,} error; errors: {errors}"
        ),
    )
    if not s["rows"]:
        from audit.errors import AuditError

        raise AuditError(
            f"nothing was ingested: the sources hold no records ({s['skipped']} file(s) "
            "skipped). Check the SOURCE paths."
        )


@click.command()
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("sql", metavar="SQL")
@library(
    "audit.sql:export",
    "format",
    "--format",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    help="Output format; parquet needs --output.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE instead of stdout.",
)
def query(ws: Path, sql: str, format: str, output: Path | None) -> None:
    """Run SQL over the workspace views (metadata, errors, hashes, duplicates, optout, ...).

    Example: audit query indexes/demo "SELECT reason, count(*) AS n FROM errors GROUP BY 1"
    """
    from audit import sql as sql_

    if output is not None:
        sql_.check_output(ws, output)
    table = sql_.query(ws, sql)
    text = sql_.export(table, format=format, output=output)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {table.num_rows:,} rows to {output}", err=True)


@click.command()
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@library(
    "audit.sql:status",
    "verify",
    is_flag=True,
    help="Re-hash every output to catch files changed on disk.",
)
@json_option
def status(ws: Path, verify: bool, as_json: bool) -> None:
    """Rows, images, inputs, each stage done / stale / running (and why), error counts.

    Example: audit status indexes/demo --json
    """
    from audit import sql as sql_

    info = sql_.status(ws, verify=verify)
    emit(info, as_json, lambda: sql_.status_text(info).rstrip("\n"))


@click.command()
@click.argument("ws", metavar="WS", type=click.Path(path_type=Path))
@click.argument("name", metavar="NAME", required=False)
@click.argument("folder", metavar="NEW_PATH", required=False, type=click.Path(path_type=Path))
@json_option
def roots(ws: Path, name: str | None, folder: Path | None, as_json: bool) -> None:
    """List the input roots image locations are relative to; with NAME NEW_PATH, point one
    at the folder it moved to (the workspace itself can move freely).

    Example: audit roots indexes/demo
    Example: audit roots indexes/demo shards /mnt/shared/laion/shards
    """
    from audit import workspace

    found = workspace.roots(ws, name, folder)
    emit(
        found,
        as_json,
        lambda: (
            "\n".join(
                f"{n}  {r['found'] or 'NOT FOUND (recorded ' + str(r.get('absolute')) + ')'}"
                for n, r in found.items()
            )
            or f"{ws} records no input roots (its image locations are absolute or inside it)"
        ),
    )


COMMANDS: list = [ingest, query, status, roots]
