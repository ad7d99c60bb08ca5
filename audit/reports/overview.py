"""The landing page of a dataset's reports: what ran, what it found, where to read more.

Reads `manifest.json` and the pages already in the report folder; computes nothing new.
It also marks pages from earlier runs as stale: a page written before this workspace was
ingested, or before the stage it shows last ran, or whose stage is not in the manifest at
all, gets a banner saying so (and loses it once it is written again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit import stages
from audit.reports import (
    NAV_LABELS,
    UNTRAINED_WARNING,
    Section,
    link_pages,
    mark_stale,
    write_page,
    written_at,
)
from audit.workspace import Workspace

# Pages other report modules write, in reading order, and the summary keys worth a glance on
# the landing page, per stage: both declared by the stages (`audit.stages`).
PAGES = stages.PAGES
KEY_FIGURES = stages.KEY_FIGURES

# The manifest stage whose results each page shows (a name ending in "-" is a prefix:
# `match-<name>`); pages without one (calibration, the card, and the generated-image bias page,
# whose stage is recorded in the generated images' own workspace) are checked against ingest only.
PAGE_STAGES = {
    "optout.md": "optout",
    "duplicates.md": "dedup",
    "synthetic.md": "provenance",
    "memorisation.md": "match-",
    "bias/bias.md": "bias",
}


def write(ws_root: str | Path, report_dir: str | Path) -> Path:
    """Write `<report_dir>/index.md` and `index.html` for the workspace at `ws_root`."""
    ws = Workspace.open(ws_root)
    report_dir = Path(report_dir)
    status = ws.status()
    table = [
        {
            "stage": name,
            "status": info["status"] + (f" ({info['why']})" if info["why"] else ""),
            "finished": (info["finished"] or "").replace("T", " ").removesuffix("+00:00"),
            "key figures": figures(name, info["summary"]),
        }
        for name, info in status.items()
    ]
    pages, stale = [], 0
    for rel, what in PAGES:
        page = report_dir / rel
        if not page.exists():
            continue
        reason = stale_reason(ws, rel, written_at(page))
        mark_stale(page, reason)
        stale += reason is not None
        label = NAV_LABELS.get(rel, rel)
        pages.append(f"- [{label}]({rel}): {what}" + (f" **Stale:** {reason}" if reason else ""))
    sections = [
        Section(
            "Reports",
            (
                "Each page is a `.md` and a self-contained `.html` (images inlined) beside it.\n\n"
                + ("\n".join(pages) if pages else "No report pages yet.")
            ),
        ),
        Section("Stages", "From the workspace manifest (`manifest.json`).", table=table),
    ]
    model = _embedding_model(ws)
    if model and not model.get("trained", True):
        sections.insert(0, Section("Warning", UNTRAINED_WARNING))
    intro = f"Workspace `{ws.root}`: {ws.num_rows} rows of dataset `{ws.dataset}`. " + (
        f"{stale} page(s) are from an earlier run and marked stale." if stale else ""
    )
    md = write_page(report_dir, "index", f"Audit of {ws.dataset}", sections, intro)
    link_pages(report_dir)
    return md


def stale_reason(ws: Workspace, rel: str, written: str | None) -> str | None:
    """Why page `rel`, written at `written` (ISO time), does not show this workspace's results."""
    if written is None:
        return "no record of when it was written (made by an older audit); write it again."
    ingest = ws.stage("ingest") or {}
    if ingest.get("started") and written < ingest["started"]:
        return f"written {written}, before this workspace was ingested ({ingest['started']})."
    key = PAGE_STAGES.get(rel)
    if key is None:
        return None
    records = [
        (name, rec)
        for name, rec in ws.manifest["stages"].items()
        if (name.startswith(key) if key.endswith("-") else name == key)
    ]
    done = [(name, rec) for name, rec in records if rec.get("status") == "done"]
    if not done:
        return f"no finished `{key.rstrip('-')}` stage in this workspace's manifest."
    # Compared with when the stage last *started*: some stages write their page before they
    # record that they finished, so a page may predate its stage's `finished` by a moment.
    name, rec = max(done, key=lambda r: r[1].get("started") or "")
    if (rec.get("started") or "") > written:
        return f"`{name}` ran again ({rec['started']}) after this page was written ({written})."
    return None


def figures(stage: str, summary: dict[str, Any]) -> str:
    """A stage's key figures as a short sentence; shares and rates as percentages."""
    # `match-<name>` in the manifest is the stage "match"; key figures are fields of the
    # stage's typed summary (`Stage.summary`), so they are read by name
    typed = stages.summary(stage, summary)
    keys = KEY_FIGURES.get(stage) or KEY_FIGURES.get(stage.split("-")[0])
    keys = keys or tuple(typed.scalars())[:3]
    values = typed.to_dict()
    parts = [
        f"{key.replace('_', ' ')} {_readable(key, values[key])}"
        for key in keys
        if values.get(key) is not None
    ]
    return "; ".join(parts)


def _readable(key: str, value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return "none"
        return ", ".join(
            f"{k} ({_readable(k, v)})" if isinstance(v, dict) else f"{k} {_readable(k, v)}"
            for k, v in value.items()
        )
    if isinstance(value, list):
        return ", ".join(str(v) for v in value[:8]) + (" ..." if len(value) > 8 else "")
    if isinstance(value, float):
        if any(w in key for w in ("rate", "share")):
            return f"{100 * value:.1f}%"
        return f"{value:.3g}"
    return str(value)


def _embedding_model(ws: Workspace) -> dict[str, Any] | None:
    path = ws.path("embeddings/model.json")
    return json.loads(path.read_text()) if path.exists() else None
