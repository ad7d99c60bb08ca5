"""Commands: sample build."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from audit import sample as lib
from audit.cli.options import emit, json_option

_DEFAULTS = {k: v.default for k, v in inspect.signature(lib.build).parameters.items()}


@click.group("sample")
def sample() -> None:
    """The bundled real sample: public-domain clip art shaped like a LAION download.

    Example: audit sample build --n 300 --out /tmp/sample
    """


@sample.command("build")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=_DEFAULTS["out_dir"],
    show_default="audit/data/sample",
    help="Folder to write laion/, shards/ and README.md into.",
)
@click.option("--n", type=int, default=_DEFAULTS["n"], show_default=True, help="Number of rows.")
@click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True)
@click.option(
    "--max-side",
    type=int,
    default=_DEFAULTS["max_side"],
    show_default=True,
    help="Longer image side after resizing, in pixels.",
)
@click.option(
    "--source-root",
    type=click.Path(path_type=Path),
    default=_DEFAULTS["source_root"],
    show_default=True,
    help="Debian openclipart-png's png/ folder.",
)
@json_option
def build(
    out_dir: Path, n: int, seed: int, max_side: int, source_root: Path, as_json: bool
) -> None:
    """Pick N clip-art pictures and write them as LAION metadata + img2dataset shards.

    Example: audit sample build --n 5000 --out /tmp/sample5k
    """
    s = lib.build(out_dir, n=n, seed=seed, source_root=source_root, max_side=max_side)
    emit(
        s,
        as_json,
        lambda: (
            f"{s['rows']} rows ({s['png']} png, {s['jpg']} jpg, {s['rehosted']} re-hosted, "
            f"{s['embedded_optout']} embedded opt-outs), {s['bytes'] / 1e6:.1f} MB -> {out_dir}"
        ),
    )


COMMANDS = [sample]
