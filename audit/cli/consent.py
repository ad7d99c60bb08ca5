"""Commands: consent (`audit optout`, its subcommands, `audit filter`)."""

from __future__ import annotations

import click

from audit.cli.options import emit, engine_options, json_option, library

CRAWL = "audit.optouts:crawl"


class _DefaultGroup(click.Group):
    """`audit optout WS ...` runs the `decide` subcommand; `audit optout crawl ...` the named one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["decide", *args]
        return super().parse_args(ctx, args)


@click.group("optout", cls=_DefaultGroup)
def optout() -> None:
    """Find AI-training opt-outs for every row: `audit optout WS [--registry F] [--cache DIR]`.

    Example: audit optout indexes/sample --registry audit/data/sample/optout/registry-domains.txt
    --cache audit/data/sample/optout/cache
    """


@optout.command("decide")
@click.argument("ws_root", type=click.Path(file_okay=False))
@click.option(
    "--registry",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Opt-out list (txt/csv/parquet: URL, URL prefix*, host:, domain rules); repeatable. "
    "Missing file -> error; unreadable -> rows unchecked.",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False),
    default=None,
    help="Crawl cache folder (audit optout crawl). Without it crawl signals are not consulted.",
)
@click.option(
    "--agent",
    multiple=True,
    help="User agent whose rules count; repeatable (default: AI crawlers + ours).",
)
@library(
    "audit.optouts:compute",
    "index_policy",
    is_flag=True,
    help="Also count noindex/noimageindex/none as a reservation.",
)
@click.option(
    "--spawning",
    is_flag=True,
    help="Also ask Spawning's do-not-train API (key in SPAWNING_OPTS_KEY; no key -> unchecked).",
)
@click.option(
    "--spawning-endpoint", default=None, help="Spawning API URL (default: the public one)."
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where optout.md/.html go (default reports/<dataset>).",
)
@engine_options("audit.optouts:compute")
@json_option
def decide(
    ws_root: str,
    registry: tuple[str, ...],
    cache: str | None,
    agent: tuple[str, ...],
    index_policy: bool,
    spawning: bool,
    spawning_endpoint: str | None,
    report_dir: str | None,
    engine: str,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Decide per row and use whether it was reserved; write optout/*.parquet and the report.

    Example: audit optout decide indexes/sample --registry audit/data/sample/optout/registry-urls.csv
    """
    from audit import optouts
    from audit.reports import optout as report
    from audit.reports import writable_dir

    if report_dir is not None:
        writable_dir(report_dir)  # before the stage records done, not after
    s = optouts.compute(
        ws_root,
        registry=list(registry),
        cache=cache,
        agent=list(agent),
        index_policy=index_policy,
        spawning=spawning,
        spawning_endpoint=spawning_endpoint,
        engine=engine,
        ray_address=ray_address,
    )
    page = report.write(ws_root, report_dir)
    for warning in (s.get("spawning") or {}).get("warnings", []):
        click.echo(f"warning: Spawning API: {warning}", err=True)
    g = s["decisions"].get("genai_training", {})
    emit(
        s,
        as_json,
        lambda: (
            f"{s['rows']} rows; genai_training: "
            + ", ".join(f"{k} {v}" for k, v in sorted(g.items()))
            + f"; evaluated sources: {', '.join(s['evaluable']) or 'none'}"
            + (f"; registry errors: {len(s['registry_errors'])}" if s["registry_errors"] else "")
            + ("; crawl signals not consulted (no --cache)" if s["not_consulted"] else "")
            + f"; report {page}"
        ),
    )


@optout.command("crawl")
@click.argument("ws_root", type=click.Path(file_okay=False))
@click.option(
    "--cache", required=True, type=click.Path(file_okay=False), help="Cache folder to fill."
)
@library(CRAWL, "rate", type=float, help="Requests per second per host.")
@library(CRAWL, "timeout", type=float, help="Seconds per request, in total.")
@library(CRAWL, "max_bytes", type=int, help="Body cap per response.")
@library(CRAWL, "agent", help="User-Agent header.")
@library(CRAWL, "workers", type=int, help="Parallel requests (across hosts).")
@library(CRAWL, "refresh", is_flag=True, help="Fetch again URLs already in the cache.")
@json_option
def crawl(
    ws_root: str,
    cache: str,
    rate: float,
    timeout: float,
    max_bytes: int,
    agent: str,
    workers: int,
    refresh: bool,
    as_json: bool,
) -> None:
    """Fetch robots.txt, ai.txt, tdmrep.json, image headers and pages into a crawl cache.

    Example: audit optout crawl indexes/mydata --cache indexes/mydata-cache --rate 0.5
    """
    from audit import optouts

    s = optouts.crawl(
        ws_root,
        cache,
        rate=rate,
        timeout=timeout,
        max_bytes=max_bytes,
        workers=workers,
        refresh=refresh,
        agent=agent,
    )
    errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "none"
    emit(
        s,
        as_json,
        lambda: (
            f"fetched {s['fetched']} of {s['targets']} ({s['cached_before']} cached before) from "
            f"{s['hosts']} hosts in {s['seconds']}s; errors: {errors}; cache {s['cache']}"
        ),
    )
    if s["fetched"] and sum(s["errors"].values()) == s["fetched"]:
        from audit.errors import AuditError

        raise AuditError(
            f"every one of the {s['fetched']} fetches failed ({errors}): the cache holds no "
            "response. Check the network, or the addresses the URLs resolve to."
        )


@optout.command("import-warc")
@click.argument("warc", type=click.Path(dir_okay=False))
@click.option(
    "--cache", required=True, type=click.Path(file_okay=False), help="Cache folder to add to."
)
@json_option
def import_warc(warc: str, cache: str, as_json: bool) -> None:
    """Add a WARC file's HTTP responses to a crawl cache.

    Example: audit optout import-warc crawl.warc.gz --cache indexes/mydata-cache
    """
    from audit import optouts

    s = optouts.import_warc(warc, cache)
    emit(
        s,
        as_json,
        lambda: (
            f"imported {s['imported']} responses ({s['skipped']} other records skipped) "
            f"into {s['cache']}"
        ),
    )


@optout.command("export-warc")
@click.argument("cache", type=click.Path(file_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="WARC file to write (.warc or .warc.gz).",
)
@json_option
def export_warc(cache: str, out: str, as_json: bool) -> None:
    """Write a crawl cache as a WARC file.

    Example: audit optout export-warc audit/data/sample/optout/cache --out sample.warc.gz
    """
    from audit import optouts

    s = optouts.export_warc(cache, out)
    emit(s, as_json, lambda: f"wrote {s['exported']} responses to {s['warc']}")


@click.command("filter")
@click.argument("ws_root", type=click.Path(file_okay=False))
@click.option(
    "--out", required=True, type=click.Path(), help="Consented subset (.parquet, or a folder)."
)
@library(
    "audit.optouts:filter_dataset",
    "use",
    type=click.Choice(["genai_training", "ai_training", "data_mining"]),
    help="Use to filter for.",
)
@click.option(
    "--keep",
    multiple=True,
    type=click.Choice(["unchecked", "not_evaluable"]),
    help="Also keep rows in this state (default: only allowed rows); repeatable.",
)
@click.option(
    "--require",
    multiple=True,
    help="Keep a row only if these sources were evaluated for it: page, embedded, headers, "
    "robots, ai_txt, tdmrep, registry, spawning, crawl (comma list or repeated).",
)
@click.option(
    "--exclude",
    multiple=True,
    type=click.Choice(["search_indexing", "ai_inference"]),
    help="Also remove rows reserved for this informational use; repeatable.",
)
@click.option(
    "--exclude-synthetic",
    is_flag=True,
    help="Also drop rows marked as generated (IPTC/C2PA; needs `audit provenance WS`).",
)
@library(
    "audit.optouts:filter_dataset",
    "format",
    type=click.Choice(["parquet", "webdataset", "img2dataset-parquet"]),
    help="parquet: the input's schema in one file; webdataset / img2dataset-parquet: "
    "training shards in folder --out.",
)
@library(
    "audit.optouts:filter_dataset",
    "samples_per_shard",
    type=int,
    help="Rows per shard for the shard formats.",
)
@json_option
def filter_(
    ws_root: str,
    out: str,
    use: str,
    keep: tuple[str, ...],
    require: tuple[str, ...],
    exclude: tuple[str, ...],
    exclude_synthetic: bool,
    format: str,
    samples_per_shard: int,
    as_json: bool,
) -> None:
    """Write the rows consented for a use, in the input's own schema, plus a removal manifest.

    Example: audit filter indexes/sample --out clean.parquet --use genai_training --require page
    Example: audit filter indexes/sample --out clean-shards/ --format webdataset
    Example: audit filter indexes/sample --out clean.parquet --exclude-synthetic
    """
    from audit import optouts

    s = optouts.filter_dataset(
        ws_root,
        out,
        use=use,
        keep=list(keep),
        require=list(require),
        exclude=list(exclude),
        exclude_synthetic=exclude_synthetic,
        format=format,
        samples_per_shard=samples_per_shard,
    )
    removed = dict(s["by_decision"])
    if "synthetic_removed" in s:
        removed["synthetic"] = s["synthetic_removed"]
    emit(
        s,
        as_json,
        lambda: (
            f"kept {s['kept']} of {s['rows']} rows for {use} -> {s['out']}; removed {s['removed']} "
            f"({', '.join(f'{k} {v}' for k, v in removed.items()) or 'none'}); "
            f"manifest {s['removed_manifest']}"
        ),
    )


COMMANDS: list = [optout, filter_]
