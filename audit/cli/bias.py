"""Commands: bias (dataset and generated-image reports, `bias grid`), card.

`audit bias WS ...` and `audit bias --generated DIR ...` run the default subcommand `run`;
`audit bias grid --out grid.csv` writes the default prompt grid.
Defaults are read from the library signatures (`options.library`), or not passed on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from audit.cli.options import emit, given, json_option, library

_given = given
BIAS = "audit.checks.bias:compute"


class _DefaultRun(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to `run`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("bias", cls=_DefaultRun, no_args_is_help=True)
def bias() -> None:
    """Bias reports: captions, sources, languages, images; or generated images across prompts.

    \b
    Examples:
      audit bias indexes/sample --bootstrap 1000 --seed 0
      audit bias grid --out grid.csv
      audit bias --generated generated/ --prompts grid.csv --model tiny --pretrained none
    """


@bias.command("run")
@click.argument("ws", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the pages go (default reports/<dataset>/bias).",
)
@library(BIAS, "bootstrap", type=int, help="Bootstrap resamples per interval (0 = none).")
@library(BIAS, "seed", type=int, help="Seed of the bootstrap and clustering.")
@click.option(
    "--generated",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder of generated images to analyse instead of a dataset.",
)
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --generated: prompt table (file, prompt, profession, descriptor, seed).",
)
@click.option("--model", help="With --generated: embedding model (default tiny).")
@click.option("--pretrained", help="With --generated: its weights (default none = untrained).")
@json_option
def run(
    ws: Path | None,
    report_dir: Path | None,
    bootstrap: int,
    seed: int,
    generated: Path | None,
    prompts: Path | None,
    model: str | None,
    pretrained: str | None,
    as_json: bool,
) -> None:
    """Dataset report for WS, or (with --generated) the generated-image report.

    With --generated, WS is where the images are described (default indexes/<folder>-generated).

    Example: audit bias indexes/sample --report-dir reports/sample/bias
    """
    from audit.errors import AuditError

    opts = _given(report_dir=report_dir, bootstrap=bootstrap, seed=seed)
    if generated is None:
        if ws is None or prompts is not None:
            raise AuditError(
                "pass a workspace (audit bias indexes/NAME), or --generated DIR with --prompts GRID.csv"
            )
        from audit.checks import bias as check

        s = check.compute(ws, encode_texts=_text_encoder(ws), **opts)
        emit(
            s,
            as_json,
            lambda: (
                f"{s['captions']} captions, {s['domains']} domains, female:male {_num(s['female_to_male_ratio'])}, "
                f"probes {s['probes']} -> {s['report_dir']}/bias.md"
            ),
        )
        return
    if prompts is None:
        raise AuditError(
            "--generated needs --prompts GRID.csv (write one with: audit bias grid --out grid.csv)"
        )
    from audit import pipeline
    from audit.checks.bias import generated as bias_generated

    ws = ws or Path("indexes") / f"{generated.name}-generated"
    from audit.checks.bias import probes

    pipeline.describe(ws, [generated], index=False, **_given(model=model, pretrained=pretrained))
    if not (probes.model_info(ws) or {}).get("trained", True):
        from audit.reports import UNTRAINED_WARNING

        click.secho(UNTRAINED_WARNING, fg="yellow", err=True)
    s = bias_generated.compute(ws, prompts, generated_dir=generated, **opts)
    emit(
        s,
        as_json,
        lambda: (
            f"{s['images']} images in {s['k']} clusters over {s['prompts']} prompts "
            f"({s['unmatched_prompt_rows']} prompt rows without an image) -> {s['report_dir']}/bias_generated.md"
        ),
    )


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _text_encoder(ws: Path) -> Any:
    """The text encoder of the model that made WS's embeddings, if it has trained weights here."""
    from audit.checks.bias import probes
    from audit.errors import MissingWeightsError

    info = probes.model_info(ws)
    if not info or not info.get("trained"):
        return None
    from audit import embeddings

    try:
        return embeddings.load_model(info["model"], info["pretrained"]).embed_texts
    except MissingWeightsError as e:
        click.secho(f"perceived-attribute probes skipped: {e}", fg="yellow", err=True)
        return None


@bias.command("grid")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("grid.csv"),
    show_default=True,
    help="CSV to write.",
)
@library("audit.checks.bias.generated:write_grid", "seeds", type=int, help="Seeds per prompt.")
@json_option
def grid(out: Path, seeds: int, as_json: bool) -> None:
    """Write the default prompt grid (professions x identity descriptors x seeds).

    Example: audit bias grid --out grid.csv --seeds 4
    """
    from audit.checks.bias import generated as bias_generated

    path = bias_generated.write_grid(out, seeds=seeds)
    rows = sum(1 for _ in open(path, encoding="utf-8")) - 1
    emit({"rows": rows, "out": path}, as_json, lambda: f"{rows} prompt rows -> {path}")


@click.command("card")
@click.argument("ws", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder written by `audit train` (config.json).",
)
@click.option(
    "--bias-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Bias report folder (default: the one `audit bias` recorded).",
)
@click.option(
    "--memorisation-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of memorisation results (default WS/memorisation).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Card to write (default MODEL-DIR/MODEL_CARD.md or reports/<dataset>/MODEL_CARD.md).",
)
@click.option(
    "--license",
    "license_",
    help="Hub licence id for the weights, e.g. apache-2.0 (default: the training images' licence when they share one).",
)
@json_option
def card(
    ws: Path,
    model_dir: Path | None,
    bias_dir: Path | None,
    memorisation_dir: Path | None,
    out: Path | None,
    license_: str | None,
    as_json: bool,
) -> None:
    """Merge training, opt-out, memorisation and bias results into one Hugging Face model card.

    Example: audit card indexes/sample --model-dir models/sample --out MODEL_CARD.md
    """
    from audit import cards

    s = cards.build_model_card(
        ws,
        **_given(
            model_dir=model_dir,
            bias_dir=bias_dir,
            memorisation_dir=memorisation_dir,
            out=out,
            license=license_,
        ),
    )
    parts = [k for k in ("model_details", "bias", "optout", "filter") if s[k]]
    emit(
        s,
        as_json,
        lambda: (
            f"model card -> {s['out']} (with: {', '.join(parts) or 'nothing'}; "
            f"{s['memorisation_results']} memorisation result(s); the rest marked not run; "
            f"license {s['license']})"
        ),
    )


COMMANDS = [bias, card]
