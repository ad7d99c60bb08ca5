"""Gather every signal for a row and decide, per use, whether the row may be used.

For each row, in this order (the order breaks ties between signals of the same state, so the
most specific source is the one quoted):

1. registries (`registry-url`, then `registry-domain`), matched in duckdb for the whole part;
2. embedded metadata in the image bytes (`iptc-xmp`, `c2pa`): `not_evaluable` when the row has
   no readable image;
3. with a crawl cache: the image URL's response headers (`x-robots-tag`, `tdm-header`,
   `content-usage`, `content-signal`); the page's HTML meta (`html-meta-robots`, `tdm-meta`;
   `not_evaluable` when the row has no `page_url`); the TDMRep file of the image's origin
   (`tdmrep.json`; a `tdm-reservation` header overrides it, TDMRep section 3); robots.txt and ai.txt
   of the image's origin. A resource missing from the cache, refused by the crawler or answering
   with an error is `unchecked`: never allowed. A robots.txt that could not be fetched because of
   a network error counts as unreachable (RFC 9309 2.3.1.4: disallow all), except when our own
   crawler refused the address, which is `unchecked`.

Decision for a use: the most restrictive state among the signals that cover the use
(reserved > unchecked > not_evaluable > allowed); the first such signal is quoted (signal,
location, evidence, agent). An allowed decision quotes signal "none" and an evidence string
saying how many signals allowed it and which sources were consulted, so "allowed" always says
on what basis.
Without a crawl cache no crawl-based source is consulted: the summary and every such evidence
string say "not consulted", rather than recording millions of `unchecked` rows for a choice
the user made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audit.images import ImageProblem, read_bytes
from audit.optouts import embedded, headers, htmlmeta, registry, robots, signature, tdmrep, urls
from audit.optouts.cache import CrawlCache, Response
from audit.optouts.signals import STATES, USES, Signal, expand_uses

CRAWL_SIGNALS = (
    "x-robots-tag",
    "tdm-header",
    "html-meta-robots",
    "tdmrep.json",
    "robots.txt",
    "ai.txt",
)
_RANK = {s: i for i, s in enumerate(STATES)}


@dataclass
class Context:
    """What a run consults, shared by every part: loaded registries, the cache, parsed host files."""

    registries: list[registry.Registry]
    cache: CrawlCache | None
    agents: tuple[str, ...]
    index_policy: bool = False
    rules: Any = None  # duckdb connection holding the registry rules
    host_files: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def consulted(self) -> str:
        names = [
            f"{r.unreadable_signal if r.error else 'registry'} {r.name}" for r in self.registries
        ]
        names.append("embedded XMP/C2PA")
        if self.cache is not None:
            names.append("crawl cache (headers, page meta, robots.txt, ai.txt, tdmrep.json)")
        text = "no reservation found; consulted: " + ", ".join(names)
        if self.cache is None:
            text += "; not consulted: crawl signals (no --cache)"
        return text


def _unchecked(name: str, where: str, why: str) -> Signal:
    return Signal(name, "unchecked", USES, where, why)


def _fetch_problem(resp: Response | None, what: str) -> str | None:
    """Why a cached response cannot be read for signals, or None if it can."""
    if resp is None:
        return f"{what} not in the crawl cache"
    if resp.error:
        return f"{what} not fetched: {resp.error}"
    if resp.status is None or not 200 <= resp.status < 300:
        return f"{what} answered HTTP {resp.status}"
    return None


def _fetch_status(resp: Response | None) -> tuple[int | None, bytes]:
    """(status, body) for the parsers' `from_status`: None = not fetched (not cached, or refused by
    our crawler: unchecked), 0 = network failure (robots.txt: unreachable, disallow all)."""
    if resp is None or (resp.error and resp.error.startswith("refused")):
        return None, b""
    if resp.error:
        return 0, b""
    return resp.status, resp.body or b""


def _host_file(ctx: Context, kind: str, url: str) -> Any:
    """Parsed robots.txt / ai.txt / tdmrep.json of `url`'s origin, parsed once per origin."""
    assert ctx.cache is not None
    key = (kind, urls.origin(url) or "")
    if key not in ctx.host_files:
        status, body = _fetch_status(ctx.cache.host_file(kind, url))
        if kind == "tdmrep":
            ctx.host_files[key] = tdmrep.from_status(status, body)
        else:
            ctx.host_files[key] = robots.from_status(
                status, body, kind="ai.txt" if kind == "ai.txt" else "robots.txt"
            )
    return ctx.host_files[key]


def crawl_signals(ctx: Context, url: str | None, page_url: str | None) -> list[Signal]:
    """Signals from the crawl cache for one row (image URL headers, page, host files)."""
    assert ctx.cache is not None
    out: list[Signal] = []
    if not url or urls.normalise(url) is None:
        why = f"malformed image URL: {str(url)[:200]!r}"
        return [Signal(n, "not_evaluable", USES, "url column", why) for n in CRAWL_SIGNALS]
    resp = ctx.cache.get("image", url)
    problem = _fetch_problem(resp, "image URL")
    resource: list[Signal] = []  # tdm-header / tdm-meta: they override tdmrep.json
    if problem:
        out += [_unchecked("x-robots-tag", url, problem), _unchecked("tdm-header", url, problem)]
    else:
        sigs = headers.signals(
            resp.headers,
            ctx.agents,
            index_policy=ctx.index_policy,  # type: ignore[union-attr]
            location=f"{url} response headers",
        )
        out += [s for s in sigs if s.signal != "tdm-header"]
        resource += [s for s in sigs if s.signal == "tdm-header"]
    if not page_url:
        out.append(
            Signal(
                "html-meta-robots",
                "not_evaluable",
                USES,
                "page_url column",
                "row has no page_url: page-level signals cannot be checked",
            )
        )
    else:
        page = ctx.cache.get("page", page_url)
        problem = _fetch_problem(page, "page")
        if problem:
            out.append(_unchecked("html-meta-robots", page_url, problem))
        else:
            sigs = htmlmeta.signals(
                page.body or b"",
                ctx.agents,
                index_policy=ctx.index_policy,  # type: ignore[union-attr]
                location=page_url,
            )
            out += [s for s in sigs if s.signal != "tdm-meta"]
            resource += [s for s in sigs if s.signal == "tdm-meta"]
    file_sigs = _host_file(ctx, "tdmrep", url).signals(url)
    out += tdmrep.combine(
        file_sigs,
        [s for s in resource if s.signal == "tdm-header"],
        [s for s in resource if s.signal == "tdm-meta"],
    )
    out += robots.signals(_host_file(ctx, "robots", url), url, agents=ctx.agents)
    out += robots.aitxt_signals(_host_file(ctx, "ai.txt", url), url, agents=ctx.agents)
    return out


def embedded_signals(row: dict[str, Any]) -> tuple[list[Signal], ImageProblem | None]:
    """XMP/C2PA signals from the row's image bytes; not_evaluable when there are no bytes."""
    if row.get("image_status") != "ok" or not row.get("image_path"):
        why = f"no image bytes (image_status={row.get('image_status')})"
        return [
            Signal(n, "not_evaluable", USES, "image bytes", why) for n in ("iptc-xmp", "c2pa")
        ], None
    try:
        data = read_bytes(row["image_path"], row.get("image_offset"), row.get("image_size"))
    except ImageProblem as p:
        why = f"image bytes unreadable: {p}"
        return [
            Signal(n, "not_evaluable", USES, str(row["image_path"]), why)
            for n in ("iptc-xmp", "c2pa")
        ], p
    # c2pa-python adds the signature status of C2PA signals (see optouts.signature).
    return signature.annotate(embedded.signals(data), data), None


def registry_signals(ctx: Context, hits: list[dict[str, Any]]) -> list[Signal]:
    out = [
        Signal(h["signal"], "reserved", expand_uses([h["use"]]), h["location"], h["evidence"])
        for h in hits
    ]
    for reg in ctx.registries:
        if reg.error:
            out.append(
                _unchecked(reg.unreadable_signal, reg.path, f"registry unreadable: {reg.error}")
            )
    return out


def decide(sigs: list[Signal], consulted: str) -> dict[str, dict[str, Any]]:
    """Per use: the decision and the signal that made it (the first of the most restrictive).

    An "allowed" decision quotes no single signal (signal "none"): it rests on all of them, and
    its evidence says how many signals covered the use and what was consulted.
    """
    out = {}
    for use in USES:
        best: Signal | None = None
        covering = 0
        for s in sigs:
            if use in s.uses:
                covering += 1
                if best is None or _RANK[s.state] < _RANK[best.state]:
                    best = s
        if best is None or best.state == "allowed":
            out[use] = {
                "decision": "allowed",
                "signal": "none",
                "location": "",
                "agent": "*",
                "evidence": f"{covering} signal(s) allow; {consulted}",
            }
        else:
            out[use] = {
                "decision": best.state,
                "signal": best.signal,
                "location": best.location,
                "evidence": best.evidence,
                "agent": best.agent,
            }
    return out


def evaluate_part(ctx: Context, table: Any) -> tuple[list[dict], list[dict], list[dict]]:
    """(signal rows, decision rows, error rows) for one metadata part (an Arrow table)."""
    import pyarrow as pa

    cols = {c: table.column(c) for c in ("row_id", "url")}
    cols["page_url"] = (
        table.column("page_url")
        if "page_url" in table.column_names
        else pa.nulls(table.num_rows, pa.string())
    )
    hits: dict[int, list[dict[str, Any]]] = {}
    for hit in registry.match(ctx.rules, pa.table(cols)):
        hits.setdefault(hit["row_id"], []).append(hit)
    wanted = [
        c
        for c in (
            "row_id",
            "url",
            "page_url",
            "source_file",
            "source_row",
            "image_status",
            "image_path",
            "image_offset",
            "image_size",
        )
        if c in table.column_names
    ]
    sig_rows, dec_rows, err_rows = [], [], []
    consulted = ctx.consulted
    for row in table.select(wanted).to_pylist():
        rid = row["row_id"]
        sigs = registry_signals(ctx, hits.get(rid, []))
        emb, problem = embedded_signals(row)
        sigs += emb
        if ctx.cache is not None:
            sigs += crawl_signals(ctx, row["url"], row.get("page_url"))
        for s in sigs:
            for use in s.uses:
                sig_rows.append(
                    {
                        "row_id": rid,
                        "signal": s.signal,
                        "state": s.state,
                        "use": use,
                        "location": s.location,
                        "evidence": s.evidence,
                        "agent": s.agent,
                    }
                )
        for use, d in decide(sigs, consulted).items():
            dec_rows.append({"row_id": rid, "use": use, **d})
        base = {
            "stage": "optout",
            "row_id": rid,
            "source_file": row.get("source_file"),
            "source_row": row.get("source_row"),
        }
        if problem is not None:
            err_rows.append({**base, "reason": problem.reason, "detail": problem.detail})
        if not row["url"] or urls.normalise(row["url"]) is None:
            err_rows.append({**base, "reason": "malformed_url", "detail": str(row["url"])[:300]})
    return sig_rows, dec_rows, err_rows


# -- files ------------------------------------------------------------------------------------
def _schemas() -> tuple[Any, Any]:
    import pyarrow as pa

    s = pa.string()
    signals = pa.schema(
        [
            ("row_id", pa.int64()),
            ("signal", s),
            ("state", s),
            ("use", s),
            ("location", s),
            ("evidence", s),
            ("agent", s),
        ]
    )
    decisions = pa.schema(
        [
            ("row_id", pa.int64()),
            ("use", s),
            ("decision", s),
            ("signal", s),
            ("location", s),
            ("evidence", s),
            ("agent", s),
        ]
    )
    return signals, decisions


def write_part(
    ws: Any, part: Any, sig_rows: list[dict], dec_rows: list[dict], err_rows: list[dict]
) -> list[Any]:
    """Write one part's signals, decisions and errors atomically; returns the `Output`s."""
    import pyarrow as pa

    from audit.schema import error_table
    from audit.workspace import Output, atomic_write_parquet

    sig_schema, dec_schema = _schemas()
    outputs = []
    for name, rows, schema in (
        ("signals", sig_rows, sig_schema),
        ("decisions", dec_rows, dec_schema),
    ):
        rel = f"optout/parts/{name}-{part.stem}.parquet"
        atomic_write_parquet(ws.path(rel), pa.Table.from_pylist(rows, schema=schema))
        outputs.append(Output(rel, rows=len(rows), row_offset=part.row_offset))
    if err_rows:
        rel = f"errors/optout-{part.stem}.parquet"
        atomic_write_parquet(ws.path(rel), error_table(err_rows))
        outputs.append(Output(rel, rows=len(err_rows), row_offset=part.row_offset))
    return outputs


def part_counts(sig_rows: list[dict], dec_rows: list[dict], err_rows: list[dict]) -> dict[str, Any]:
    """Counts for the summary: decisions per use and state; rows per signal and state; errors."""
    decisions: dict[str, dict[str, int]] = {}
    for d in dec_rows:
        per = decisions.setdefault(d["use"], {})
        per[d["decision"]] = per.get(d["decision"], 0) + 1
    signals: dict[str, dict[str, int]] = {}
    for _row, signal, state in {(r["row_id"], r["signal"], r["state"]) for r in sig_rows}:
        per = signals.setdefault(signal, {})
        per[state] = per.get(state, 0) + 1
    errors: dict[str, int] = {}
    for e in err_rows:
        errors[e["reason"]] = errors.get(e["reason"], 0) + 1
    return {"decisions": decisions, "signals": signals, "errors": errors}


def merge_parts(ws: Any, parts: list[Any]) -> list[tuple[str, int]]:
    """Concatenate the part files into `optout/signals.parquet` and `optout/decisions.parquet`."""
    import pyarrow.parquet as pq

    from audit.workspace import atomic_path

    merged = []
    for name, schema in zip(("signals", "decisions"), _schemas(), strict=True):
        rel, rows = f"optout/{name}.parquet", 0
        with atomic_path(ws.path(rel)) as tmp:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for part in parts:
                    table = pq.read_table(ws.path(f"optout/parts/{name}-{part.stem}.parquet"))
                    writer.write_table(table.cast(schema))
                    rows += table.num_rows
        merged.append((rel, rows))
    return merged
