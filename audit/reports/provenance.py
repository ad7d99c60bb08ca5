"""The synthetic-images report: `reports/<dataset>/synthetic.md` and `.html`.

Reads the provenance stage's `synthetic` view joined to the metadata and renders: how many rows
are marked as generated and by which mark, the state of their C2PA signatures, the share of
generated images per source domain, and examples with their evidence. Computes nothing a stage
should have written. `audit provenance` writes it at the end of its run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.reports import Section, write_page
from audit.workspace import Workspace

_HOST = (
    "coalesce(nullif(lower(regexp_extract(m.url, '^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#:@]*)', 1)), ''), "
    "'(no host)')"
)
_METHOD = (
    "A row is synthetic when its image says it was generated: XMP Iptc4xmpExt:DigitalSourceType, or "
    "the digitalSourceType of an action in its C2PA manifest, is one of IPTC's generated-media codes "
    "(trainedAlgorithmicMedia, compositeSynthetic, algorithmicMedia, compositeWithTrainedAlgorithmicMedia). "
    "A mark counts whatever its signature; the C2PA state is shown beside it (trusted: chains to a "
    "trust anchor given with --trust-anchors; untrusted: valid signature from a certificate no trust "
    "list we hold vouches for; tampered: the image or manifest changed after signing). Unmarked is "
    "not the same as real: most generators, and any tool that strips metadata, leave no mark. "
    "`audit filter --exclude-synthetic` drops the marked rows."
)


def write(ws_root: str | Path, out_dir: str | Path | None = None, examples: int = 10) -> Path:
    """Render the synthetic-images report; returns the markdown path.

    >>> write("indexes/sample")  # doctest: +SKIP
    PosixPath('reports/sample/synthetic.md')
    """
    ws = Workspace.open(ws_root)
    rec = ws.stage("provenance")
    if not rec or rec.get("status") != "done":
        raise AuditError(
            f"no finished provenance stage in {ws.root}. Run: audit provenance {ws.root}"
        )
    out = Path(out_dir) if out_dir is not None else Path("reports") / ws.dataset
    con = ws.connect()
    s = rec.get("summary", {})
    rows, synthetic = s.get("rows", 0), s.get("synthetic", 0)
    share = f"{100 * synthetic / rows:.1f}%" if rows else "n/a"
    overview = (
        f"{synthetic} of {rows} rows ({share}) are marked as generated; "
        f"{s.get('unknown', 0)} rows have no readable image (unknown)."
    )

    def table(sql: str) -> list[dict[str, Any]]:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    sections = [
        Section("Generated images", overview + "\n\n" + _METHOD),
        Section(
            "By mark and signature",
            "Rows marked as generated, per mark and C2PA state (none: no manifest).",
            table=table(
                "SELECT mark, coalesce(c2pa_state, 'none') AS c2pa_state, digital_source_type, "
                "count(*) AS rows FROM synthetic WHERE synthetic GROUP BY 1, 2, 3 ORDER BY rows DESC"
            ),
        ),
        Section(
            "Share per source",
            "Per domain of the image URL: rows, rows marked as generated, and their share "
            "(top 30 domains by generated rows, then by rows).",
            table=table(
                f"SELECT {_HOST} AS domain, count(*) AS rows, "
                "count(*) FILTER (WHERE s.synthetic) AS synthetic, "
                "round(100.0 * count(*) FILTER (WHERE s.synthetic) / count(*), 1) AS share_pct "
                "FROM synthetic s JOIN metadata m USING (row_id) GROUP BY 1 "
                "ORDER BY synthetic DESC, rows DESC, 1 LIMIT 30"
            ),
        ),
        Section(
            "Examples",
            f"Up to {examples} rows marked as generated, with the evidence.",
            table=table(
                "SELECT s.row_id, m.url, s.mark, s.c2pa_signer, s.evidence "
                f"FROM synthetic s JOIN metadata m USING (row_id) WHERE s.synthetic "
                f"ORDER BY s.row_id LIMIT {int(examples)}"
            ),
        ),
    ]
    return write_page(out, "synthetic", f"Generated images in {ws.dataset}", sections)
