"""Commands: provenance (generated images in a dataset, by their IPTC and C2PA marks)."""

from __future__ import annotations

import click

from audit.cli.options import emit, json_option


@click.command("provenance")
@click.argument("ws_root", metavar="WS", type=click.Path(file_okay=False))
@click.option(
    "--trust-anchors",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM CA certificates whose C2PA signers count as trusted (default: none are).",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where synthetic.md/.html go (default reports/<dataset>).",
)
@json_option
def provenance_command(
    ws_root: str, trust_anchors: str | None, report_dir: str | None, as_json: bool
) -> None:
    """Find images marked as generated (IPTC digital source type, C2PA actions) in workspace WS.

    Writes provenance/synthetic-*.parquet (view `synthetic`) and the synthetic report;
    `audit filter WS --out X.parquet --exclude-synthetic` then drops them.

    Example: audit provenance indexes/sample
    """
    from audit import provenance
    from audit.reports import provenance as report

    s = provenance.detect(ws_root, trust_anchors=trust_anchors)
    page = report.write(ws_root, report_dir)
    emit(
        s,
        as_json,
        lambda: (
            f"{s['rows']} rows; {s['synthetic']} marked as generated "
            f"({', '.join(f'{k} {v}' for k, v in s['by_mark'].items()) or 'none'}); "
            f"C2PA: {', '.join(f'{k} {v}' for k, v in s['c2pa_states'].items()) or 'no manifests'}; "
            f"{s['unknown']} without image; report {page}"
        ),
    )


COMMANDS: list = [provenance_command]
