"""The consent report: `reports/<dataset>/optout.md` and `.html`, from the optout stage's files.

Reads `optout/decisions.parquet`, `optout/signals.parquet`, the metadata and the manifest
(through `ws.connect()` views), and renders: decisions per use, rows per signal and state,
which signal decided the removals, the top 20 domains, examples with their evidence, and
thumbnails of a few reserved images. It computes nothing a stage should have written.
`audit optout` writes it at the end of its run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.images import ImageProblem, decode, read_bytes
from audit.reports import Section, default_dir, png_bytes, write_page
from audit.workspace import Workspace, atomic_write_bytes

STATES = ("reserved", "unchecked", "not_evaluable", "allowed")
USES = ("genai_training", "ai_training", "data_mining", "search_indexing", "ai_inference")
COVERAGE = ("evaluated", "missing", "absent", "not_consulted")
_HOST = "coalesce(nullif(lower(regexp_extract(m.url, '^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#:@]*)', 1)), ''), '(malformed)')"

_METHOD = (
    "Each row gets one decision per use (genai_training, ai_training, data_mining). Every signal found "
    "for the row (registries, XMP/C2PA in the image bytes, HTTP headers of the image URL, the page's meta "
    "tags, robots.txt, ai.txt and tdmrep.json of the host) has a state; the decision is the most restrictive: "
    "reserved (an evaluated signal reserves the use) > unchecked (a source that should have been consulted "
    "was unavailable) > allowed (at least one source was evaluated and none reserves) > not_evaluable "
    "(nothing could be evaluated). Sources that do not exist for a row (no page URL, no image bytes) do not "
    "decide; the coverage table says which they were. A reservation of data_mining also reserves "
    "ai_training and genai_training; search_indexing and ai_inference are reported as their own uses.\n\n"
    "robots.txt is a crawl permission, not a licence: a disallow for an AI-training crawler (GPTBot, CCBot, "
    "img2dataset...) counts as a reservation of AI training; a disallow for every crawler (*) or an "
    "unreachable robots.txt (RFC 9309: disallow all) counts as a reservation of all uses. C2PA signatures "
    "are checked with c2pa-python: the evidence starts with their state (untrusted, tampered...) and signer; "
    "a reservation counts whatever its signature."
)


def write(
    ws_root: str | Path, out_dir: str | Path | None = None, examples: int = 3, thumbnails: int = 8
) -> Path:
    """Render the opt-out report; returns the markdown path.

    >>> write("indexes/sample")  # doctest: +SKIP
    PosixPath('reports/sample/optout.md')
    """
    ws = Workspace.open(ws_root)
    rec = ws.stage("optout")
    if not rec or rec.get("status") != "done":
        raise AuditError(f"no finished optout stage in {ws.root}. Run: audit optout {ws.root}")
    out = Path(out_dir) if out_dir is not None else default_dir(ws)
    summary = rec.get("summary", {})
    con = ws.connect()
    sections = [
        Section(
            "Coverage: which sources could be evaluated",
            _coverage_text(summary),
            table=_coverage(summary),
        ),
        Section("Decisions per use", _consulted(summary), table=_decisions(con)),
        Section(
            "Rows per signal and state",
            "How many rows each source spoke about, and what it said.",
            table=_signals(con),
        ),
        Section(
            "What decided the removals (genai_training)",
            "For rows not allowed, the signal quoted by the decision.",
            table=_deciders(con),
        ),
        Section(
            "Top 20 domains (genai_training)",
            "Image URL hosts with the most rows.",
            table=_domains(con),
        ),
        Section(
            "Examples with evidence",
            "Reserved, unchecked and not-evaluable rows, a few per signal, "
            "with the exact text that decided them.",
            table=_examples(con, examples),
        ),
    ]
    thumbs = _thumbnails(con, out, thumbnails)
    if thumbs:
        sections.append(
            Section(
                "Some reserved images",
                "Thumbnails of rows reserved for genai_training.",
                images=thumbs,
            )
        )
    filt = ws.stage("filter")
    if filt and filt.get("status") == "done":
        s = filt.get("summary", {})
        sections.append(
            Section(
                "Consented subset",
                f"`audit filter` kept {s.get('kept')} of {s.get('rows')} rows "
                f"for {s.get('use')} (states kept: {', '.join(s.get('kept_states', []))}"
                f"{'; required sources: ' + ', '.join(s['required']) if s.get('required') else ''}); "
                f"written to {s.get('out')}.",
                table=[
                    {"removed because": k, "rows": v} for k, v in s.get("by_decision", {}).items()
                ],
            )
        )
    sections.append(Section("Method", _METHOD))
    intro = f"Dataset {ws.dataset}: {summary.get('rows', 0)} rows."
    return write_page(out, "optout", f"Consent audit: {ws.dataset}", sections, intro)


def _consulted(summary: dict[str, Any]) -> str:
    regs = (
        ", ".join(
            Path(r["path"]).name
            + (
                " (UNREADABLE: rows unchecked)"
                if r.get("error")
                else f" ({r['domains']} domain, {r['urls']} URL, {r.get('url_prefixes', 0)} URL prefix, "
                f"{r.get('hosts', 0)} host rules)"
            )
            for r in summary.get("registries", [])
        )
        or "none"
    )
    lines = [f"Registries: {regs}.", f"Crawl cache: {summary.get('cache') or 'none'}."]
    if summary.get("not_consulted"):
        lines.append(
            "Not consulted (no crawl cache given): "
            + ", ".join(summary["not_consulted"])
            + ". Allowed here means allowed by the sources that were consulted."
        )
    for err in summary.get("registry_errors", []):
        lines.append(f"Registry error: {err}")
    for r in summary.get("registries", []):
        if r.get("unmatched"):
            lines.append(
                f"Registry {Path(r['path']).name}: {r['unmatched']} of {r['rules']} rules matched "
                "no row, e.g. " + "; ".join(r.get("examples", [])[:5])
            )
    sp = summary.get("spawning")
    if sp:
        lines.append(
            f"Spawning API ({sp['endpoint']}): {sp['answered']} URLs answered, {sp['opted_out']} "
            f"opted out, {sp['unchecked']} unchecked"
            + (f"; warnings: {'; '.join(sp['warnings'][:3])}" if sp.get("warnings") else "")
        )
    return "\n\n".join(lines)


def _coverage_text(summary: dict[str, Any]) -> str:
    rows = summary.get("rows", 0)
    cov = summary.get("coverage", {})
    lines = [
        "Rows per source and coverage state. *evaluated*: the source was consulted for the row; "
        "*absent*: the source does not exist for the row (no page URL, no image bytes before "
        "download); *not_consulted*: not given to this run (no "
        "crawl cache, no registry, no Spawning check); *missing*: it should have been checked and "
        "was not (host missing from the crawl cache, fetch error, unreadable registry, embedded "
        "metadata present but unreadable) - those "
        "rows are `unchecked`, never allowed. Absent and not-consulted sources do not block a row; "
        "`audit filter --require page,embedded` makes them required."
    ]
    evaluated = summary.get("evaluable") or []
    lines.append(
        f"**Evaluated for at least one row: {', '.join(evaluated) or 'nothing'}.** "
        + (
            "Not evaluable for any row: "
            + ", ".join(
                f"{src} ({', '.join(f'{k} {v}' for k, v in sorted(per.items()))})"
                for src, per in cov.items()
                if per.get("evaluated", 0) == 0
            )
            + f" (of {rows} rows)."
            if any(per.get("evaluated", 0) == 0 for per in cov.values())
            else ""
        )
    )
    return "\n\n".join(lines)


def _coverage(summary: dict[str, Any]) -> list[dict[str, Any]]:
    sources = summary.get("coverage_sources", {})  # source -> its signal names
    notes = summary.get("coverage_notes", {})
    return [
        {
            "source": src,
            "signals": ", ".join(sources.get(src, ())),
            **{state: per.get(state, 0) for state in COVERAGE},
            "e.g. why not evaluated": "; ".join(
                f"{state}: {why}" for state, why in notes.get(src, {}).items()
            )[:160],
        }
        for src, per in summary.get("coverage", {}).items()
    ]


def _pivot(rows: list[tuple], key: str) -> list[dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for k, state, n in rows:
        table.setdefault(k, {key: k, **{s: 0 for s in STATES}})[state] = n
    return list(table.values())


def _decisions(con: Any) -> list[dict[str, Any]]:
    rows = con.execute("SELECT use, decision, count(*) FROM optout GROUP BY 1, 2").fetchall()
    order = {u: i for i, u in enumerate(USES)}
    return sorted(_pivot(rows, "use"), key=lambda r: order.get(r["use"], 99))


def _signals(con: Any) -> list[dict[str, Any]]:
    rows = con.execute(
        "SELECT signal, state, count(DISTINCT row_id) FROM optout_signals GROUP BY 1, 2"
    ).fetchall()
    return sorted(_pivot(rows, "signal"), key=lambda r: (-r["reserved"], r["signal"]))


def _deciders(con: Any) -> list[dict[str, Any]]:
    rows = con.execute(
        "SELECT signal, decision, count(*) FROM optout WHERE use = 'genai_training' "
        "AND decision <> 'allowed' GROUP BY 1, 2 ORDER BY 3 DESC"
    ).fetchall()
    return [{"signal": s, "decision": d, "rows": n} for s, d, n in rows]


def _domains(con: Any) -> list[dict[str, Any]]:
    rows = con.execute(
        f"SELECT {_HOST} AS host, d.decision, count(*) FROM optout d JOIN metadata m USING (row_id) "
        "WHERE d.use = 'genai_training' GROUP BY 1, 2"
    ).fetchall()
    table = _pivot(rows, "host")
    for r in table:
        r["rows"] = sum(r[s] for s in STATES)
    return sorted(table, key=lambda r: (-r["rows"], r["host"]))[:20]


def _examples(con: Any, per_signal: int) -> list[dict[str, Any]]:
    rows = con.execute(
        """SELECT row_id, signal, state, agent, location, evidence, url FROM (
             SELECT s.*, m.url, row_number() OVER (PARTITION BY s.signal, s.state ORDER BY s.row_id) AS k
             FROM (SELECT DISTINCT row_id, signal, state, agent, location, evidence FROM optout_signals
                   WHERE state <> 'allowed') s JOIN metadata m USING (row_id))
           WHERE k <= ? ORDER BY signal, state, row_id""",
        [per_signal],
    ).fetchall()
    return [
        {
            "row_id": r[0],
            "signal": r[1],
            "state": r[2],
            "agent": r[3],
            "where": r[4][:80],
            "evidence": r[5][:160],
            "url": r[6][:80] if r[6] else "",
        }
        for r in rows
    ]


def _thumbnails(con: Any, out: Path, n: int) -> list[tuple[str, str]]:
    rows = con.execute(
        """SELECT m.row_id, m.image_path, m.image_offset, m.image_size, d.signal, d.evidence
           FROM optout d JOIN metadata m USING (row_id)
           WHERE d.use = 'genai_training' AND d.decision = 'reserved' AND m.image_status = 'ok'
           ORDER BY d.signal, m.row_id"""
    ).fetchall()
    picked, seen = [], set()
    for r in rows:  # one per deciding signal first, then fill up
        if r[4] not in seen:
            seen.add(r[4])
            picked.append(r)
    picked += [r for r in rows if r not in picked]
    images = []
    for row_id, path, offset, size, signal, evidence in picked[:n]:
        try:
            img = decode(read_bytes(path, offset, size), mode="RGB")
        except ImageProblem:
            continue
        rel = f"optout/row-{row_id}.png"
        atomic_write_bytes(out / rel, png_bytes(img, max_side=128))
        images.append((rel, f"row {row_id}: {signal}: {evidence[:60]}"))
    return images
