"""Commands: run (every stage of `audit.stages.STAGES`, in order)."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from audit import pipeline, stages
from audit.cli.options import emit, json_option, library

OPTIONS = "audit.pipeline:RunOptions"


@click.command("run")
@click.argument("workspace", type=click.Path(path_type=Path))
@click.argument("sources", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--demo",
    is_flag=True,
    help="Use the bundled openclipart sample with its opt-out signals, and train the small model.",
)
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where reports go (default: reports/<dataset> beside the workspace's indexes/ folder, else WS/reports).",
)
@library(OPTIONS, "model", help="open_clip model name, or 'tiny' (built in code, untrained).")
@library(
    OPTIONS, "pretrained", help="open_clip pretrained tag or checkpoint path; 'none' = untrained."
)
@click.option(
    "--registry",
    "registries",
    multiple=True,
    type=click.Path(exists=True),
    help="Opt-out registry file (repeatable).",
)
@click.option(
    "--crawl-cache",
    type=click.Path(exists=True),
    default=None,
    help="Crawl cache folder for header/robots/TDMRep signals.",
)
@click.option(
    "--train-steps",
    type=int,
    default=None,
    help="Train the small diffusion model for this many steps (0 = skip).",
)
@click.option(
    "--train-minutes",
    type=float,
    default=None,
    help="Train the small diffusion model for this wall-clock budget instead (--demo: "
    f"{pipeline.DEMO_TRAIN_MINUTES:g}).",
)
@library(OPTIONS, "workers", type=int)
@json_option
def run(
    workspace,
    sources,
    demo,
    report_dir,
    model,
    pretrained,
    registries,
    crawl_cache,
    train_steps,
    train_minutes,
    workers,
    as_json,
):
    """Run every stage on a dataset and write its reports.

    Example: audit run indexes/sample --demo
    """
    options = pipeline.RunOptions.demo() if demo else pipeline.RunOptions(sources=list(sources))
    if sources and demo:
        raise click.UsageError("pass SOURCES or --demo, not both")
    options.report_dir = str(report_dir) if report_dir else None
    options.model, options.pretrained, options.workers = model, pretrained, workers
    options.registries = list(registries) or options.registries
    options.crawl_cache = crawl_cache or options.crawl_cache
    if train_steps is not None:  # by steps: exactly reproducible
        options.train_steps, options.train_minutes = train_steps, 0.0
    if train_minutes is not None:
        options.train_steps, options.train_minutes = 0, train_minutes
    results = pipeline.run(workspace, options, echo=click.echo if not as_json else _quiet)
    emit(
        results,
        as_json,
        lambda: (
            f"ran {len(results)} stages on {workspace}; "
            f"reports in {pipeline.run_values(Path(workspace), options)['report_dir']}"
        ),
    )


def _quiet(line: str) -> None:
    click.echo(line, err=True)  # with --json, stdout holds the JSON alone


# The stages `audit run` can run, in order, for its --help.
run.help = (
    inspect.cleandoc(run.help or "")
    + "\n\nStages, in order: "
    + ", ".join(s.name for s in stages.STAGES if s.when != "never")
    + "."
)


COMMANDS = [run]
