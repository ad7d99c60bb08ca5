"""Gather every signal for a row, record which sources could be evaluated, and decide per use.

For each row, in this order (the order breaks ties between signals of the same state, so the
most specific source is the one quoted):

1. registries (`registry-url`, then `registry-domain`), matched in duckdb for the whole part;
   then the Spawning do-not-train API when asked for (`spawning-api`);
2. embedded metadata in the image bytes (`iptc-xmp`, `c2pa`);
3. with a crawl cache: the image URL's response headers (`x-robots-tag`, `tdm-header`,
   `content-usage`, `content-signal`); the page's HTML meta (`html-meta-robots`); the TDMRep file,
   robots.txt and ai.txt of the image's origin *and of every origin its URL redirected through*.
   A `tdm-reservation` meta in the page is left out: the TDMRep HTML technique scopes it to that
   HTML document, not to the images it shows.

Coverage. Every row gets, for every source in `signals.SOURCES`, one of:
`evaluated` (consulted; it reserved or allowed), `absent` (the source does not exist for this
row: no page URL, no image bytes before download, image bytes that cannot be read, a malformed URL),
`not_consulted` (the user gave no crawl cache / registry / Spawning check), or `missing` (it
should have been checked and was not: a resource missing from the crawl cache, a fetch error,
an unreadable registry, a URL the Spawning API did not answer for, embedded metadata that is
present but cannot be read).

Decision for a use: `reserved` when an evaluated signal reserves it (the first one is quoted);
else `unchecked` when some source is `missing` (never allowed); else `allowed` when at least one
source was evaluated, with an evidence string naming the evaluated sources and the ones that had
no source; else `not_evaluable` (nothing could be looked at). `absent` and `not_consulted` sources
do not block a row: `audit filter --require page,embedded` does, per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audit.images import ImageProblem, read_bytes
from audit.optouts import embedded, headers, htmlmeta, registry, robots, signature, tdmrep, urls
from audit.optouts.cache import CrawlCache, Response
from audit.optouts.signals import ALL_USES, SOURCES, USES, Signal, expand_uses

CRAWL_SOURCES = ("headers", "page", "robots", "ai_txt", "tdmrep")
CRAWL_SIGNALS = tuple(n for src in CRAWL_SOURCES for n in SOURCES[src])
_SOURCE_OF = {name: src for src, names in SOURCES.items() for name in names}


@dataclass
class Context:
    """What a run consults, shared by every part: loaded registries, the cache, parsed host files."""

    registries: list[registry.Registry]
    cache: CrawlCache | None
    agents: tuple[str, ...]
    index_policy: bool = False
    rules: Any = None  # duckdb connection holding the registry rules
    host_files: dict[tuple[str, str], Any] = field(default_factory=dict)
    spawning: Any = None  # spawning.Result when the Spawning API was asked, else None
    has_page_column: bool = True


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
    if resp.error and ("redirect" in resp.error):
        # Older crawls recorded "more than 5 redirects" as an error. RFC 9309 2.3.1.2: after more
        # than five consecutive redirects the file MAY be assumed unavailable; 300 stands for that.
        return 300, b""
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


def hop_urls(resp: Response | None, url: str) -> list[str]:
    """The image URL and every URL it redirected through (in order, each origin once)."""
    chain = [url, *((resp.redirects or []) if resp else [])]
    if resp is not None and resp.final_url:
        chain.append(resp.final_url)
    out, seen = [], set()
    for hop in chain:
        origin = urls.origin(hop)
        if origin and origin not in seen:
            seen.add(origin)
            out.append(hop)
    return out


def crawl_signals(ctx: Context, url: str | None, page_url: str | None) -> list[Signal]:
    """Signals from the crawl cache for one row (image URL headers, page, host files)."""
    assert ctx.cache is not None
    out: list[Signal] = []
    if not url or urls.normalise(url) is None:
        why = f"malformed image URL: {str(url)[:200]!r}"
        return [Signal(n, "not_evaluable", USES, "url column", why) for n in CRAWL_SIGNALS]
    resp = ctx.cache.get("image", url)
    problem = _fetch_problem(resp, "image URL")
    header_tdm: list[Signal] = []  # tdm-header overrides tdmrep.json (TDMRep section 3)
    if problem:
        out += [_unchecked("x-robots-tag", url, problem), _unchecked("tdm-header", url, problem)]
    else:
        sigs = headers.signals(
            resp.headers,  # type: ignore[union-attr]
            ctx.agents,
            index_policy=ctx.index_policy,
            location=f"{url} response headers",
        )
        out += [s for s in sigs if s.signal != "tdm-header"]
        header_tdm += [s for s in sigs if s.signal == "tdm-header"]
    if not page_url:
        why = (
            "row has no page_url: page-level signals cannot be checked"
            if ctx.has_page_column
            else "the dataset has no page URL column: page-level signals cannot be checked"
        )
        out.append(Signal("html-meta-robots", "not_evaluable", USES, "page_url column", why))
    else:
        page = ctx.cache.get("page", page_url)
        problem = _fetch_problem(page, "page")
        if problem:
            out.append(_unchecked("html-meta-robots", page_url, problem))
        else:
            sigs = htmlmeta.signals(
                page.body or b"",  # type: ignore[union-attr]
                ctx.agents,
                index_policy=ctx.index_policy,
                location=page_url,
            )
            out += [s for s in sigs if s.signal != "tdm-meta"]
    hops = hop_urls(resp, url)
    # The header speaks for the resource, whichever host's tdmrep.json it overrides.
    out += tdmrep.combine(
        [s for hop in hops for s in _host_file(ctx, "tdmrep", hop).signals(hop)], header_tdm
    )
    for hop in hops:
        out += robots.signals(_host_file(ctx, "robots", hop), hop, agents=ctx.agents)
        out += robots.aitxt_signals(_host_file(ctx, "ai.txt", hop), hop, agents=ctx.agents)
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
    # Metadata that is there but cannot be read (a refused or broken XMP packet, an unreadable
    # C2PA store, a value outside the PLUS vocabulary) was not checked: unchecked, never allowed.
    # c2pa-python adds the signature status of C2PA signals (see optouts.signature).
    return [
        Signal(s.signal, "unchecked", USES, s.location, f"{s.evidence} (present but unreadable)")
        if s.state == "not_evaluable"
        else s
        for s in signature.annotate(embedded.signals(data), data)
    ], None


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


def spawning_signals(ctx: Context, url: str | None) -> list[Signal]:
    """The Spawning do-not-train answer for the row's URL (never allowed without an answer)."""
    result = ctx.spawning
    answer = result.answer(url) if url else None
    if answer is None:
        why = result.why_unchecked(url)
        return [Signal("spawning-api", "unchecked", USES, result.endpoint, why)]
    if answer:
        evidence = f"Spawning API: optOut true for {url}"
        return [
            Signal(
                "spawning-api", "reserved", expand_uses(["ai_training"]), result.endpoint, evidence
            )
        ]
    return [Signal("spawning-api", "allowed", USES, result.endpoint, f"optOut false for {url}")]


def coverage(
    ctx: Context, sigs: list[Signal], page_url: str | None = "?", url_ok: bool = True
) -> dict[str, tuple[str, str]]:
    """(state, why) per source for one row's signals (see the module doc for the states).

    `url_ok` False (a malformed image URL): a registry can only have matched the page URL, and
    nothing can be asked about the image URL, so those sources are absent unless a rule hit."""
    by_source: dict[str, list[Signal]] = {src: [] for src in SOURCES}
    for s in sigs:
        by_source[_SOURCE_OF[s.signal]].append(s)
    out: dict[str, tuple[str, str]] = {}
    for src, found in by_source.items():
        if src == "page" and not page_url:
            # With or without a crawl cache: a row without a page URL has no page to read.
            why = "no page_url" if ctx.has_page_column else "the dataset has no page URL column"
            out[src] = ("absent", why)
        elif src == "registry" and not ctx.registries:
            out[src] = ("not_consulted", "no --registry")
        elif src == "spawning" and ctx.spawning is None:
            out[src] = ("not_consulted", "Spawning API not asked (--spawning)")
        elif src in CRAWL_SOURCES and ctx.cache is None:
            out[src] = ("not_consulted", "no crawl cache (--cache)")
        elif any(s.state == "unchecked" for s in found):
            out[src] = ("missing", next(s.evidence for s in found if s.state == "unchecked"))
        elif src in ("registry", "spawning") and not url_ok and not found:
            out[src] = ("absent", "malformed image URL: it cannot be looked up")
        elif src == "registry" or any(s.state in ("reserved", "allowed") for s in found):
            out[src] = ("evaluated", "")
        else:
            why = next((s.evidence for s in found), "no signal from this source")
            out[src] = ("absent", why)
    return out


def decide(
    sigs: list[Signal], cover: dict[str, tuple[str, str]], consulted: str = ""
) -> dict[str, dict[str, Any]]:
    """Per use (`ALL_USES`): the decision and the signal that made it (see the module doc)."""
    evaluated = [src for src, (state, _) in cover.items() if state == "evaluated"]
    absent = [src for src, (state, _) in cover.items() if state == "absent"]
    unchecked = next((s for s in sigs if s.state == "unchecked"), None)
    out = {}
    for use in ALL_USES:
        reserving = next((s for s in sigs if s.state == "reserved" and use in s.uses), None)
        best = reserving or unchecked
        if best is not None:
            out[use] = {
                "decision": best.state,
                "signal": best.signal,
                "location": best.location,
                "evidence": best.evidence,
                "agent": best.agent,
            }
            continue
        allowing = sum(1 for s in sigs if s.state == "allowed")
        basis = f"evaluated: {', '.join(evaluated) or 'nothing'}"
        if absent:
            basis += f"; no source for this row: {', '.join(absent)}"
        not_consulted = [src for src, (state, _) in cover.items() if state == "not_consulted"]
        if not_consulted:
            basis += f"; not consulted: {', '.join(not_consulted)}"
        if consulted:
            basis += f"; {consulted}"
        out[use] = {
            "decision": "allowed" if evaluated else "not_evaluable",
            "signal": "none",
            "location": "",
            "agent": "*",
            "evidence": (
                f"no reservation ({allowing} signal(s) allow); {basis}"
                if evaluated
                else f"nothing could be evaluated; {basis}"
            ),
        }
    return out


_ROW_COLUMNS = (
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


def evaluate_part(
    ctx: Context, table: Any
) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(signal rows, decision rows, error rows, coverage rows) for one metadata part (Arrow)."""
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
    wanted = [c for c in _ROW_COLUMNS if c in table.column_names]
    sig_rows, dec_rows, err_rows, cov_rows = [], [], [], []
    for row in table.select(wanted).to_pylist():
        rid = row["row_id"]
        url_ok = bool(row["url"]) and urls.normalise(row["url"]) is not None
        sigs = registry_signals(ctx, hits.get(rid, []))
        if ctx.spawning is not None:
            sigs += spawning_signals(ctx, row["url"]) if url_ok else []
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
        cover = coverage(ctx, sigs, row.get("page_url"), url_ok)
        cov_rows.append(
            {
                "row_id": rid,
                **{src: state for src, (state, _) in cover.items()},
                "_why": {src: (state, why) for src, (state, why) in cover.items()},
                "not_evaluated": "; ".join(
                    f"{src}: {state}" + (f" ({why})" if why else "")
                    for src, (state, why) in cover.items()
                    if state != "evaluated"
                )[:1000],
            }
        )
        for use, d in decide(sigs, cover).items():
            dec_rows.append({"row_id": rid, "use": use, **d})
        base = {
            "stage": "optout",
            "row_id": rid,
            "source_file": row.get("source_file"),
            "source_row": row.get("source_row"),
        }
        if problem is not None:
            err_rows.append({**base, "reason": problem.reason, "detail": problem.detail})
        if not url_ok:
            err_rows.append({**base, "reason": "malformed_url", "detail": str(row["url"])[:300]})
    return sig_rows, dec_rows, err_rows, cov_rows
