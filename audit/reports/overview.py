"""The landing page of a dataset's reports: what ran, what it found, where to read more.

Reads `manifest.json` and the pages already in the report folder; computes nothing new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit import stages
from audit.reports import UNTRAINED_WARNING, Section, write_page
from audit.workspace import Workspace

# Pages other report modules write, in reading order, and the summary keys worth a glance on
# the landing page, per stage: both declared by the stages (`audit.stages`).
PAGES = stages.PAGES
KEY_FIGURES = stages.KEY_FIGURES


def write(ws_root: str | Path, report_dir: str | Path) -> Path:
    """Write `<report_dir>/index.md` and `index.html` for the workspace at `ws_root`."""
    ws = Workspace.open(ws_root)
    report_dir = Path(report_dir)
    status = ws.status()
    stages = [
        {
            "stage": name,
            "status": info["status"] + (f" ({info['why']})" if info["why"] else ""),
            "finished": info["finished"],
            "key figures": _figures(name, info["summary"]),
        }
        for name, info in status.items()
    ]
    pages = [{"page": rel, "answers": what} for rel, what in PAGES if (report_dir / rel).exists()]
    sections = [
        Section("Stages", "From the workspace manifest.", table=stages),
        Section(
            "Reports", "Each page has a .md and a self-contained .html beside it.", table=pages
        ),
    ]
    model = _embedding_model(ws)
    if model and not model.get("trained", True):
        sections.insert(0, Section("Warning", UNTRAINED_WARNING))
    intro = f"Workspace {ws.root} ({ws.num_rows} rows)."
    return write_page(report_dir, "index", f"Audit of {ws.dataset}", sections, intro)


def _figures(stage: str, summary: dict[str, Any]) -> str:
    keys = KEY_FIGURES.get(stage, tuple(summary)[:3])
    parts = []
    for key in keys:
        if key in summary:
            value = summary[key]
            text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
            parts.append(f"{key}={text[:80]}")
    return "; ".join(parts)


def _embedding_model(ws: Workspace) -> dict[str, Any] | None:
    path = ws.path("embeddings/model.json")
    return json.loads(path.read_text()) if path.exists() else None
