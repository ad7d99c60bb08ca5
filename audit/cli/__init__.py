"""The `audit` command line: thin click commands over the library.

This package is the only place that imports click. Each module holds the commands of one
area and lists them in `COMMANDS`; they are registered here explicitly, in README order.
"""

from __future__ import annotations

import sys

import click

from audit import __version__
from audit.cli import (
    bias,
    consent,
    describe,
    diffusion,
    memorisation,
    pipeline,
    provenance,
    sample,
    workspace,
)
from audit.cli import interop as interop_cli
from audit.errors import AuditError


class AuditGroup(click.Group):
    """Turns `AuditError` (and `OSError`: a path that cannot be written) into a one-line
    message and exit code 1 (traceback with --debug). Invalid option values exit 2 (click)."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except AuditError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"Error: {e}", fg="red", err=True)
            sys.exit(1)
        except OSError as e:
            # an unwritable --report-dir, an --output under a file, a full disk: the path
            # and the reason, not a traceback
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f"{e.filename}: " if e.filename else ""
            click.secho(f"Error: {where}{e.strerror or e}. Check the path.", fg="red", err=True)
            sys.exit(1)
        except Exception as e:
            # a damaged workspace file (a truncated parquet part) surfaces as a pyarrow or
            # duckdb error from whichever stage reads it first: say what to run, not a traceback
            if (ctx.obj and ctx.obj.get("debug")) or not _unreadable_file(e):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            click.secho(
                f"Error: a file could not be read ({first}). Run `audit status WS --verify` to "
                "name damaged files, then re-run the stage that wrote them.",
                fg="red",
                err=True,
            )
            sys.exit(1)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # registration order, not alphabetical


def _unreadable_file(e: Exception) -> bool:
    """True for the errors pyarrow and duckdb raise on a damaged or truncated file."""
    name = f"{type(e).__module__}.{type(e).__name__}"
    return name in (
        "pyarrow.lib.ArrowInvalid",
        "_duckdb.IOException",
        "_duckdb.InvalidInputException",
        "duckdb.IOException",
        "duckdb.InvalidInputException",
    )


@click.group(cls=AuditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="audit")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option(
    "--threads",
    envvar="AUDIT_THREADS",
    default="auto",
    show_default=True,
    help="CPU threads for the whole run (torch, faiss, BLAS, worker processes); auto: the CPUs "
    "this process may use (affinity, cgroup quota). Also $AUDIT_THREADS.",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, threads: str) -> None:
    """Audit image-text training data for provenance, consent, duplicates, memorisation and bias.

    Start with `audit ingest indexes/mydata my.parquet shards/`, then `audit status indexes/mydata`.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    from audit import threads as thread_budget

    try:  # before any command imports torch or faiss: the OpenMP wait policy is read at load
        ctx.obj["threads"] = thread_budget.configure(threads)
    except AuditError as e:
        raise click.BadParameter(str(e), param_hint="--threads") from e


for _module in (
    workspace,
    describe,
    consent,
    provenance,
    diffusion,
    memorisation,
    bias,
    pipeline,
    sample,
):
    for _command in _module.COMMANDS:
        cli.add_command(_command)
for _command in interop_cli.COMMANDS:  # clip-retrieval's layout in and out
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="audit")
