"""Commands: match, calibrate, experiment (memorisation)."""

from __future__ import annotations

import dataclasses

import click

from audit.cli.options import default, emit, json_option


def _default(fn_name: str, param: str):  # type: ignore[no-untyped-def]
    """Defaults live in the library signature (the composer imports nothing heavy)."""
    module = "audit.experiments" if fn_name == "memorisation" else "audit.pipeline"
    return default(f"{module}:{fn_name}", param)


_HELP = {
    "tile": "tiled l2 (0..1) <=",
    "relative": "relative tiled l2 (Carlini et al.) <=",
    "hamming": "phash Hamming bits <=",
    "cosine": "embedding cosine >= (votes only with trained weights)",
}


def _threshold_options(f):  # type: ignore[no-untyped-def]
    """One option per field of `Thresholds`, named like the field; 'none' switches a vote off."""
    from audit.checks.memorisation import Thresholds

    for field in reversed(dataclasses.fields(Thresholds)):
        default = getattr(Thresholds(), field.name)
        level, _, descriptor = field.name.partition("_")
        text = (
            f"{_HELP[descriptor]} this: {'copy on its own' if level == 'copy' else 'near; two nears = copy'}"
            "; 'none' = no vote."
            if descriptor in _HELP
            else "alpha of Carlini et al.'s relative criterion."
        )
        f = click.option(
            f"--{field.name.replace('_', '-')}",
            field.name,
            default=str(default).lower(),
            show_default=True,
            help=text,
        )(f)
    return f


def _thresholds(options: dict):  # type: ignore[no-untyped-def]
    from audit.checks.memorisation import Thresholds
    from audit.errors import AuditError

    values = {}
    for field in dataclasses.fields(Thresholds):
        raw = options.pop(field.name)
        try:
            values[field.name] = (
                None if raw == "none" else (int(raw) if "hamming" in field.name else float(raw))
            )
        except ValueError as e:
            raise AuditError(
                f"--{field.name.replace('_', '-')} must be a number or 'none', got {raw!r}"
            ) from e
    return Thresholds(**values)  # type: ignore[arg-type]


def _descriptor_options(f):  # type: ignore[no-untyped-def]
    f = click.option(
        "--descriptor-threshold",
        type=float,
        default=0.5,
        show_default=True,
        help="Copy at descriptor similarity >= this (0.5: Somepalli et al.'s SSCD threshold).",
    )(f)
    return click.option(
        "--descriptor",
        type=click.Path(dir_okay=False),
        default=None,
        help="A learned copy descriptor: TorchScript (.pt) or ONNX (.onnx) file, e.g. "
        "sscd_disc_mixup.torchscript.pt. Votes copy at --descriptor-threshold; never downloaded.",
    )(f)


@click.command("match")
@click.argument("generated", type=click.Path(exists=True))
@click.option(
    "--against",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="The training workspace (hashed, embedded).",
)
@click.option("--name", default=None, help="Name of this check (default: GENERATED's folder name).")
@click.option(
    "--k",
    type=int,
    default=_default("match", "k"),
    show_default=True,
    help="Candidates per index (embedding and phash).",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where memorisation.md/.html go (default reports/<dataset>/).",
)
@_threshold_options
@_descriptor_options
@json_option
def match_command(generated: str, against: str, as_json: bool, **options) -> None:  # type: ignore[no-untyped-def]
    """Find which generated images copy a training image of workspace --against.

    Example: audit match generated/sample --against indexes/sample --name ddpm
    """
    from audit import pipeline

    th = _thresholds(options)
    s = pipeline.match(generated, against, thresholds=th, **options)
    lo, hi = s["replication_ci95"]
    emit(
        s,
        as_json,
        lambda: (
            f"{s['generated']} generated images: {s['counts']}; replication rate {s['replication_rate']:.2%} "
            f"(95% CI {lo:.2%}-{hi:.2%}) -> {against}/memorisation/"
        ),
    )


@click.command("calibrate")
@click.argument("ws", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--n",
    type=int,
    default=_default("calibrate", "n"),
    show_default=True,
    help="Source images, each put through every transformation.",
)
@click.option(
    "--negatives",
    type=int,
    default=_default("calibrate", "negatives"),
    show_default=True,
    help="Held-out images (whole twin groups) matched as negatives.",
)
@click.option(
    "--group-by",
    default="",
    help="Comma-separated metadata columns whose equal values mark variants of one picture, "
    "kept out of the negatives with their twins: the first a category path (pictures of one "
    "series whose thumbnails correlate are variants too), the last a title compared by its first "
    "word (audit sample workspaces: category,title).",
)
@click.option("--seed", type=int, default=_default("calibrate", "seed"), show_default=True)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where calibration.json/.md/.html go (default reports/<dataset>/).",
)
@_descriptor_options
@json_option
def calibrate_command(ws: str, as_json: bool, **options) -> None:  # type: ignore[no-untyped-def]
    """Precision and recall of the memorisation check on copies of WS's own images
    (every transformation, alone and chained) and on held-out images.

    Example: audit calibrate indexes/sample --n 150 --negatives 400
    """
    from audit import pipeline

    group_by = tuple(c.strip() for c in options.pop("group_by").split(",") if c.strip())
    r = pipeline.calibrate(ws, group_by=group_by, **options)
    one, geo = r["pooled"]["single"]["verdict"], r["pooled"]["geometric"]["verdict"]
    chains = r["pooled"].get("chains", {}).get("verdict", {"recall": 0, "precision": None})
    emit(
        r,
        as_json,
        lambda: (
            f"{r['counts']['sources']} images x {len(r['transforms'])} transforms, "
            f"{r['counts']['negatives']} negatives: verdict copy recall {one['recall']:.1%} at "
            f"precision {one['precision'] or 0:.3f} (single), {geo['recall']:.1%} (crop, rotation, "
            f"mirror), {chains['recall']:.1%} (chains); {r['negatives']['called_copy']} "
            f"negative(s) called copy -> {r['report']}"
        ),
    )


@click.command("experiment")
@click.argument("name", type=click.Choice(["memorisation"]))
@click.option(
    "--sample",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Sample folder (default: the bundled audit/data/sample).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=_default("memorisation", "out"),
    show_default=True,
)
@click.option("--quick", is_flag=True, help="A smaller set and fewer steps (a few minutes).")
@click.option("--seed", type=int, default=_default("memorisation", "seed"), show_default=True)
@click.option(
    "--steps", type=int, default=None, help="Training steps (default 2500, 400 with --quick)."
)
@json_option
def experiment_command(name: str, as_json: bool, **options) -> None:  # type: ignore[no-untyped-def]
    """Train the small DDPM on planted duplicates, then measure what it copied.

    Example: audit experiment memorisation --quick --out reports/experiments/memorisation
    """
    from audit import experiments

    s = experiments.memorisation(**options)
    emit(
        s,
        as_json,
        lambda: (
            f"replication rate {s['replication_rate']:.2%}; by duplication {s['copied_share_by_duplication']}; "
            f"MIA AUC members vs held-out {s['mia']['auc_members_vs_heldout']:.3f} -> {options['out']}"
        ),
    )


COMMANDS = [match_command, calibrate_command, experiment_command]
