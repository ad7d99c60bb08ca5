"""Shared rendering for report pages: markdown + self-contained HTML + PNG figures.

Report modules (one per stage, beside this file) read artefacts from the workspace and
render them; they compute nothing that a stage should have written. Pages live under
`reports/<dataset>/`: `<name>.md` for reading in a terminal or on GitHub, `<name>.html`
with images inlined so the file can be mailed or attached on its own.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.workspace import atomic_write_bytes, atomic_write_text

UNTRAINED_WARNING = (
    "Warning: these results come from a model with untrained (random) weights, built in code "
    "for tests and demos. Figures that depend on the embedding model are not meaningful; "
    "pass real weights (e.g. --model ViT-B-32 --pretrained laion2b_s34b_b79k) for a real audit."
)


@dataclass
class Section:
    """A titled block of a page: markdown text, optional table, optional images."""

    title: str
    text: str = ""
    table: list[dict[str, Any]] | None = None
    images: list[tuple[str, str]] = field(default_factory=list)  # (relative png path, caption)
    html_extra: str = ""  # raw HTML (e.g. thumbnail grids) for the HTML page only


def writable_dir(path: str | Path) -> Path:
    """Make `path` and check a file can be written in it, before a stage records anything:
    a stage must not say done when its report then fails."""
    import tempfile

    from audit.errors import AuditError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise AuditError(
            f"cannot write reports to {path} ({e.strerror}). Pass a writable --report-dir."
        ) from e
    return path


def png_bytes(img: Any, max_side: int | None = None) -> bytes:
    """A PIL image as PNG bytes, shrunk so its longer side is at most `max_side`."""
    if max_side is not None:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_(none)_\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(out) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ") if v is not None else ""


def write_page(
    out_dir: Path, name: str, title: str, sections: list[Section], intro: str = ""
) -> Path:
    """Write `<out_dir>/<name>.md` and `<name>.html`; images are paths relative to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}\n", intro + "\n" if intro else ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>" if intro else ""]
    for s in sections:
        md.append(f"## {s.title}\n")
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            md.append(s.text + "\n")
            body.append("".join(f"<p>{html.escape(p)}</p>" for p in s.text.split("\n\n")))
        if s.table is not None:
            md.append(markdown_table(s.table))
            body.append(_html_table(s.table))
        for rel, caption in s.images:
            md.append(f"![{caption}]({rel})\n")
            png = (out_dir / rel).read_bytes()
            body.append(
                f'<figure><img src="{data_uri(png)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        if s.html_extra:
            body.append(s.html_extra)
    atomic_write_text(out_dir / f"{name}.md", "\n".join(md))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    atomic_write_text(out_dir / f"{name}.html", page)
    return out_dir / f"{name}.md"


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>(none)</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}figure{display:inline-block;margin:.5em}figcaption{font-size:80%;color:#555}
img{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:6px}.grid figure{width:140px}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.6em}
"""
