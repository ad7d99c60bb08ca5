"""Commands: run (every stage, in order)."""

from __future__ import annotations

from pathlib import Path

import click

from audit import pipeline


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
    help="Where reports go (default reports/<dataset>).",
)
@click.option(
    "--model",
    default="tiny",
    show_default=True,
    help="open_clip model name, or 'tiny' (built in code, untrained).",
)
@click.option(
    "--pretrained",
    default="none",
    show_default=True,
    help="open_clip pretrained tag or checkpoint path; 'none' = untrained.",
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
@click.option("--workers", type=int, default=2, show_default=True)
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
    workers,
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
    if train_steps is not None:
        options.train_steps = train_steps
    results = pipeline.run(workspace, options, echo=click.echo)
    click.echo(
        f"ran {len(results)} stages on {workspace}; reports in {options.report_dir or 'reports/' + workspace.name}"
    )


COMMANDS = [run]
