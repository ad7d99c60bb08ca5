"""Shared rendering for report pages: markdown + self-contained HTML + PNG figures.

Report modules (one per stage, beside this file) read artefacts from the workspace and
render them; they compute nothing that a stage should have written. Pages live in one
report folder (see `default_dir`): `<name>.md` for reading in a terminal or on GitHub,
`<name>.html` with images inlined so the file can be mailed or attached on its own. Both are
rendered from the jinja2 templates in `templates/`; section text is markdown, turned into
HTML by markdown-it-py, so backticks, lists and links read the same in both.

Every page starts with a navigation bar linking the other pages of its report folder
(`pages()`, in reading order). Writing a page refreshes that bar in its siblings, so a page
written later is linked from the ones written before it.
"""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from audit.stages import PAGES as STAGE_PAGES
from audit.workspace import atomic_write_bytes, atomic_write_text, now

UNTRAINED_WARNING = (
    "Warning: these results come from a model with untrained (random) weights, built in code "
    "for tests and demos. Figures that depend on the embedding model are not meaningful; "
    "pass real weights (e.g. --model ViT-B-32 --pretrained laion2b_s34b_b79k) for a real audit."
)

# Short names for the navigation bar. Which pages exist, and their order, is declared by the
# stages (`audit.stages.PAGES`); a page without a name here is shown by its file name.
NAV_LABELS = {
    "index.md": "Overview",
    "optout.md": "Consent",
    "synthetic.md": "Synthetic images",
    "duplicates.md": "Duplicates",
    "memorisation.md": "Memorisation",
    "calibration.md": "Calibration",
    "bias/bias.md": "Bias",
    "bias/bias_generated.md": "Generated-image bias",
    "MODEL_CARD.md": "Model card",
}


def pages() -> tuple[tuple[str, str], ...]:
    """The pages of a report folder in reading order: (path under the folder, short name)."""
    order = ["index.md"] + [p for p, _ in STAGE_PAGES if p != "index.md"]
    return tuple((p, NAV_LABELS.get(p, Path(p).stem.replace("_", " "))) for p in order)


def default_dir(ws: Any) -> Path:
    """Where a workspace's reports go when no `--report-dir` is given.

    A workspace at `<project>/indexes/<dataset>` (the layout `audit run` and `make demo` use)
    reports to `<project>/reports/<dataset>`; any other workspace reports to `WS/reports`.
    Either way the place follows from the workspace (a `Workspace` or its path), not from the
    folder a command runs in; every command's `--report-dir` overrides it.
    """
    from audit.errors import AuditError
    from audit.workspace import FsPath, as_root

    root = as_root(ws) if isinstance(ws, (str, os.PathLike)) else ws.root
    if isinstance(root, FsPath):
        raise AuditError(
            f"{root} is a URL workspace; its reports are local files: pass --report-dir DIR."
        )
    if root.parent.name == "indexes":
        return root.parent.parent / "reports" / root.name
    return root / "reports"


@dataclass
class Section:
    """A titled block of a page: markdown text, optional table, optional images."""

    title: str
    text: str = ""
    table: list[dict[str, Any]] | None = None
    images: list[tuple[str, str]] = field(default_factory=list)  # (relative png path, caption)
    html_extra: str = ""  # raw HTML (e.g. thumbnail grids) for the HTML page only
    level: int = 2  # heading level: 3 makes it a subsection of the section before it


def fmt(value: Any, ci: Any = None, pct: bool = False) -> str:
    """The one way a figure and its 95% interval are written: `12.5% [3.1%, 28.9%]`.

    `pct` writes a proportion as a percentage; None is "n/a"; an unbounded interval end
    (None) is written as an open end, e.g. `[n/a, 0.41]`.
    """
    if value is None:
        return "n/a"

    def one(v: Any) -> str:
        if v is None:
            return "n/a"
        v = v + 0.0 if v != 0 else 0.0  # no "-0"
        return f"{100 * v:.1f}%" if pct else f"{v:.3g}"

    text = one(value)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and any(c is not None for c in ci):
        text += f" [{one(ci[0])}, {one(ci[1])}]"
    return text


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


def cell(v: Any) -> str:
    """A table value as text: floats to 4 significant digits, None as empty."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(cell(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k} {cell(x)}" for k, x in v.items())
    return str(v)


def _mdcell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


@cache
def _env() -> Any:
    import jinja2
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    md = MarkdownIt("commonmark", {"html": False, "typographer": False}).enable("table")

    def link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        # Pages link each other's markdown; in HTML the link goes to the HTML beside it.
        href = tokens[idx].attrGet("href") or ""
        if "://" not in href and not href.startswith(("#", "mailto:")):
            path, sep, frag = href.partition("#")
            if path.endswith(".md"):
                tokens[idx].attrSet("href", path[:-3] + ".html" + sep + frag)
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("audit.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = lambda text: Markup(md.render(text or ""))
    env.filters["mdi"] = lambda text: Markup(md.renderInline(text or ""))
    env.filters["plain"] = lambda text: (text or "").replace("`", "")
    env.filters["cell"] = cell
    env.filters["mdcell"] = _mdcell
    return env


def _anchor(title: str, seen: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    anchor, k = base, 2
    while anchor in seen:
        anchor, k = f"{base}-{k}", k + 1
    seen.add(anchor)
    return anchor


def page_root(out_dir: Path, name: str) -> tuple[Path, str]:
    """(report folder, page path relative to it) for page `name` written into `out_dir`.

    The bias pages live in a subfolder (`bias/bias.md`): a page written into a folder whose
    name matches its entry in `pages()` belongs to the report folder above it.
    """
    rel = f"{out_dir.name}/{name}.md"
    if any(p == rel for p, _ in pages()):
        return out_dir.parent, rel
    return out_dir, f"{name}.md"


def _nav(root: Path, rel: str, markdown: bool) -> str:
    """Links from page `rel` to every page of `pages()` present under `root` (and itself)."""
    depth = rel.count("/")
    links = []
    for page, label in pages():
        if page != rel and not (root / page).exists():
            continue
        target = "../" * depth + (page if markdown else page[:-3] + ".html")
        if markdown:
            links.append(f"**{label}**" if page == rel else f"[{label}]({target})")
        else:
            current = ' aria-current="page"' if page == rel else ""
            links.append(f'<a href="{target}"{current}>{label}</a>')
    if markdown:
        return "Reports: " + " · ".join(links)
    return '<nav class="site" aria-label="Reports">' + "".join(links) + "</nav>"


_BLOCK = {key: re.compile(rf"<!-- {key} -->.*?<!-- /{key} -->", re.S) for key in ("nav", "stale")}


def _replace_block(path: Path, key: str, content: str) -> None:
    text = path.read_text("utf-8")
    new = _BLOCK[key].sub(lambda _: f"<!-- {key} -->{content}<!-- /{key} -->", text, count=1)
    if new != text:
        atomic_write_text(path, new)


def link_pages(root: str | os.PathLike[str]) -> list[str]:
    """Refresh the navigation bar of every page under `root`; returns the pages found."""
    root = Path(root)
    found = []
    for rel, _ in pages():
        md = root / rel
        if not md.exists():
            continue
        found.append(rel)
        _replace_block(md, "nav", _nav(root, rel, markdown=True))
        html_path = md.with_suffix(".html")
        if html_path.exists():
            _replace_block(html_path, "nav", _nav(root, rel, markdown=False))
    return found


def mark_stale(page: Path, reason: str | None) -> None:
    """Put (or clear, with None) a banner saying why page `page` (its .md) is out of date."""
    import html

    md = "" if reason is None else f"\n> **Stale:** {reason}\n"
    _replace_block(page, "stale", md)
    html_path = page.with_suffix(".html")
    if html_path.exists():
        block = (
            ""
            if reason is None
            else f'<p class="stale"><strong>Stale:</strong> {html.escape(reason)}</p>'
        )
        _replace_block(html_path, "stale", block)


def written_at(page: Path) -> str | None:
    """When the page was rendered (the `audit-written` meta of its .html), or None."""
    html_path = page.with_suffix(".html")
    if not html_path.exists():
        return None
    m = re.search(r'<meta name="audit-written" content="([^"]+)">', html_path.read_text("utf-8"))
    return m.group(1) if m else None


def path_scrubber(root: Path) -> Any:
    """A function that rewrites this machine's absolute paths in report text as relative ones.

    Pages are read elsewhere (attached, committed, published with a model card), so they
    name files relative to the project that holds the report folder (`<project>/reports/<dataset>`),
    to the folder the command runs in, or to the installed package's parent (`audit/data/...`);
    the home folder becomes `~`.
    """
    root = Path(root).resolve()
    project = root.parent.parent if root.parent.name == "reports" else root.parent
    package_parent = Path(__file__).resolve().parents[2]
    bases = sorted(
        {str(p) for p in (project, Path.cwd().resolve(), package_parent) if str(p) != "/"},
        key=len,
        reverse=True,
    )
    home = str(Path.home())

    def scrub(value: Any) -> Any:
        if not isinstance(value, str) or "/" not in value:
            return value
        for base in bases:
            value = value.replace(base + "/", "")
        if home != "/":
            value = value.replace(home + "/", "~/")
        return value

    return scrub


def scrubbed(value: Any, out_dir: Path, page: str = "") -> Any:
    """JSON-like `value` written beside page `page` in `out_dir`: every string through
    `path_scrubber` of the report folder that page belongs to (see `page_root`)."""
    scrub = path_scrubber(page_root(Path(out_dir), page)[0] if page else Path(out_dir))

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        return scrub(v)

    return walk(value)


def write_page(
    out_dir: Path, name: str, title: str, sections: list[Section], intro: str = ""
) -> Path:
    """Write `<out_dir>/<name>.md` and `<name>.html`; images are paths relative to out_dir."""
    from importlib import resources

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root, rel = page_root(out_dir, name)
    scrub = path_scrubber(root)
    seen: set[str] = set()
    views = []
    for s in sections:
        table = None
        if s.table is not None:
            cols = list(s.table[0]) if s.table else []
            table = [{k: scrub(cell(row.get(k))) for k in cols} for row in s.table]
        views.append(
            {
                "title": scrub(s.title),
                "level": s.level,
                "anchor": _anchor(s.title, seen),
                "text": scrub(s.text),
                "table": table,
                # short columns (ids, states, counts) are kept on one line; long ones wrap
                "nowrap": {
                    k for k in (table or [{}])[0] if max(len(r[k]) for r in table or []) <= 16
                },
                "html_extra": s.html_extra,
                "images": [
                    {"src": src, "caption": scrub(caption), "path": out_dir / src}
                    for src, caption in s.images
                ],
            }
        )
    env = _env()
    common = {"title": scrub(title), "intro": scrub(intro), "name": name, "written": now()}
    md = env.get_template("page.md.j2").render(
        sections=views, nav=_nav(root, rel, markdown=True), **common
    )
    for v in views:  # the HTML page carries its images inline
        for img in v["images"]:
            img["src"] = data_uri(img["path"].read_bytes())
    css = (resources.files("audit.reports") / "templates" / "style.css").read_text("utf-8")
    page = env.get_template("page.html.j2").render(
        sections=views, nav=_nav(root, rel, markdown=False), css=css, **common
    )
    atomic_write_text(out_dir / f"{name}.md", re.sub(r"\n{3,}", "\n\n", md))
    atomic_write_text(out_dir / f"{name}.html", page)
    link_pages(root)
    return out_dir / f"{name}.md"


def contact_sheet(ws: Any, row_ids: list[int], size: int = 96, columns: int = 8) -> Any:
    """Thumbnails of workspace rows `row_ids` in a grid (PIL image), for notebooks and pages.

    A row whose image cannot be read is a grey square, so positions still match `row_ids`.

    >>> contact_sheet(Workspace.open("indexes/sample"), [0, 1, 2])  # doctest: +SKIP
    """
    from PIL import Image

    from audit.images import ImageProblem, decode, read_bytes

    ids = [int(r) for r in row_ids]
    found: dict[int, Any] = {}
    if ids:
        rows = ws.connect().execute(
            "SELECT row_id, image_path, image_offset, image_size FROM metadata "
            f"WHERE image_status = 'ok' AND row_id IN ({','.join(map(str, ids))})"
        )
        for rid, path, offset, nbytes in rows.fetchall():
            try:
                found[int(rid)] = decode(read_bytes(path, offset, nbytes), mode="RGB")
            except ImageProblem:
                continue
    cols = max(1, min(columns, len(ids)))
    lines = max(1, -(-len(ids) // cols))
    sheet = Image.new("RGB", (cols * (size + 4) + 4, lines * (size + 4) + 4), "white")
    for k, rid in enumerate(ids):
        img = found.get(rid) or Image.new("RGB", (size, size), (200, 200, 200))
        img = img.copy()
        img.thumbnail((size, size))
        x, y = 4 + (k % cols) * (size + 4), 4 + (k // cols) * (size + 4)
        sheet.paste(img, (x + (size - img.width) // 2, y + (size - img.height) // 2))
    return sheet
