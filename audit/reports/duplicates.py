"""Report page `duplicates.md/.html`: counts by kind and each cluster's thumbnails.

Reads `duplicates.parquet` and the metadata; writes one contact sheet per shown cluster under
`<out_dir>/duplicates/cluster-NNNNN.png` (largest clusters first, at most `max_clusters`), and
`<out_dir>/duplicates_keep.csv`: every clustered row with `keep` or `remove` and why (see
`KEEP_RULE`), a list to act on.

Example:
    >>> from audit.reports import duplicates
    >>> duplicates.write("indexes/sample", "reports/sample")              # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from audit.images import ImageProblem, decode, read_bytes
from audit.reports import UNTRAINED_WARNING, Section, png_bytes, write_page
from audit.workspace import Workspace, atomic_write_bytes

THUMB = 96

KEEP_RULE = (
    "One row is kept per cluster: a row whose creators did not reserve it (opt-out decision "
    "for genai_training not reserved, when the optout stage ran), then the most pixels, then "
    "one with a caption and a licence, then the lowest row_id. The others are removed as "
    "duplicates of it: clusters are complete-linkage, so every removed row was found near "
    "its cluster's representative (`verified`: on its pixels) and near the other members."
)
KEEP_COLUMNS = (
    "cluster_id",
    "row_id",
    "action",
    "reason",
    "kind",
    "representative",
    "distance",
    "verified",
    "correlation",
    "width",
    "height",
    "optout",
    "url",
)


def keep_list(ws: Workspace, dups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per clustered row: keep or remove, and why (`KEEP_RULE`); ordered by cluster then action."""
    con = ws.connect()
    ids = ",".join(str(int(r["row_id"])) for r in dups) or "NULL"
    meta = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT row_id, coalesce(image_width, width), coalesce(image_height, height), url, "
            "coalesce(trim(caption), '') <> '' AND coalesce(trim(license), '') <> '' "
            f"FROM metadata WHERE row_id IN ({ids})"
        ).fetchall()
    }
    decisions: dict[int, str] = {}
    if ws.stage("optout"):
        decisions = dict(
            con.execute(
                f"SELECT row_id, decision FROM optout WHERE use = 'genai_training' AND row_id IN ({ids})"
            ).fetchall()
        )
    clusters: dict[int, list[dict[str, Any]]] = {}
    for r in dups:
        clusters.setdefault(r["cluster_id"], []).append(r)
    out = []
    for cid in sorted(clusters):
        members = clusters[cid]

        def rank(r: dict[str, Any]) -> tuple[bool, int, bool, int]:
            w, h, _, described = meta.get(r["row_id"], (None, None, None, False))
            pixels = -((w or 0) * (h or 0))
            return (decisions.get(r["row_id"]) == "reserved", pixels, not described, r["row_id"])

        kept = min(members, key=rank)
        kw, kh, _, described = meta.get(kept["row_id"], (None, None, None, False))
        reserved = [decisions.get(m["row_id"]) == "reserved" for m in members]
        why = []
        if all(reserved):
            why.append("every row of the cluster is reserved by its creators")
        elif any(reserved):
            why.append("not reserved by its creators")
        sizes = [meta.get(m["row_id"], (None, None))[:2] for m in members]
        if len(set(sizes)) > 1:
            why.append(f"most pixels ({kw}x{kh})")
        most = [m for m, sz in zip(members, sizes, strict=True) if sz == (kw, kh)]
        if described and len({bool(meta.get(m["row_id"], (0,) * 4)[3]) for m in most}) > 1:
            why.append("has a caption and a licence")
        if not why:
            why.append(f"lowest row_id of {len(members)} equal candidates")
        for m in sorted(members, key=lambda r: (r is not kept, r["row_id"])):
            w, h, url, _ = meta.get(m["row_id"], (None, None, None, False))
            corr = m.get("correlation")
            if m["row_id"] == m["representative"]:
                tie = "the cluster's representative"
            elif m["kind"] == "exact":
                tie = f"tied to representative {m['representative']}: same sha256"
            else:
                tie = f"tied to representative {m['representative']}: " + (
                    "verified" if m.get("verified") else "not verified"
                )
                tie += f", correlation {corr:.3f}" if corr is not None else ""
            out.append(
                {
                    "cluster_id": cid,
                    "row_id": m["row_id"],
                    "action": "keep" if m is kept else "remove",
                    "reason": "keep: " + "; ".join(why)
                    if m is kept
                    else f"remove: {m['kind'].replace('_', ' ')} duplicate of row {kept['row_id']} "
                    f"({tie})",
                    "kind": m["kind"],
                    "representative": m["representative"],
                    "distance": m["distance"],
                    "verified": m.get("verified"),
                    "correlation": m.get("correlation"),
                    "width": w,
                    "height": h,
                    "optout": decisions.get(m["row_id"], ""),
                    "url": url,
                }
            )
    return out


def _write_keep_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=KEEP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _sheet(images: list[Any]) -> Any:
    """Thumbnails side by side on white; a grey square for an image that cannot be shown."""
    from PIL import Image

    sheet = Image.new("RGB", (len(images) * (THUMB + 4) + 4, THUMB + 8), "white")
    for k, img in enumerate(images):
        if img is None:
            img = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        img = img.copy()
        img.thumbnail((THUMB, THUMB))
        sheet.paste(
            img, (4 + k * (THUMB + 4) + (THUMB - img.width) // 2, 4 + (THUMB - img.height) // 2)
        )
    return sheet


def write(
    ws_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    max_clusters: int = 24,
    per_cluster: int = 8,
) -> Path:
    """Render the duplicates report; returns the markdown path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from audit.errors import AuditError

    ws = Workspace.open(ws_root)
    path = ws.path("duplicates.parquet")
    if not path.exists():
        raise AuditError(f"{path} does not exist. Run: audit dedup {ws.root}")
    out_dir = Path(out_dir)
    dups = pq.read_table(path).to_pylist()
    meta_cols = [
        "row_id",
        "caption",
        "url",
        "image_path",
        "image_offset",
        "image_size",
        "image_status",
    ]
    wanted = {r["row_id"] for r in dups if r["cluster_id"] < max_clusters}
    meta: dict[int, dict[str, Any]] = {}
    for part in ws.require_parts():
        lo, hi = part.row_offset, part.row_offset + part.rows
        if any(lo <= w < hi for w in wanted):
            t = ws.read_part(part, columns=meta_cols)
            for rec in t.filter(
                pa.compute.is_in(t["row_id"], pa.array(sorted(wanted), pa.int64()))
            ).to_pylist():
                meta[rec["row_id"]] = rec
    rec = ws.stage("dedup") or {}
    params, summary = rec.get("params", {}), rec.get("summary", {})
    by_kind = summary.get("by_kind", {})
    intro = (
        f"{summary.get('clusters', 0)} clusters holding {summary.get('rows_in_clusters', 0)} of "
        f"{summary.get('rows', ws.num_rows)} rows. Links: same image_sha256 (exact), pHash within "
        f"{params.get('hamming')} bits (near_hash), image-embedding cosine >= {params.get('cosine')} "
        f"(near_embedding; {summary.get('embeddings', 'not used')})."
    )
    keep = keep_list(ws, dups)
    _write_keep_csv(out_dir / "duplicates_keep.csv", keep)
    removed = sum(r["action"] == "remove" for r in keep)
    sections = [
        Section("Rows by kind", table=[{"kind": k, "rows": v} for k, v in by_kind.items()]),
        Section(
            "What to keep",
            f"[duplicates_keep.csv](duplicates_keep.csv) lists every clustered row with `keep` or "
            f"`remove` and the reason: keeping one row per cluster removes {removed} rows. {KEEP_RULE}",
        ),
    ]
    action = {r["row_id"]: r["action"] for r in keep}
    model = ws.path("embeddings/model.json")
    if (
        summary.get("embeddings") == "used"
        and model.exists()
        and '"trained": false' in model.read_text()
    ):
        sections.insert(0, Section("Untrained embeddings", text=UNTRAINED_WARNING))
    clusters: dict[int, list[dict[str, Any]]] = {}
    for r in dups:
        if r["cluster_id"] < max_clusters:
            clusters.setdefault(r["cluster_id"], []).append(r)
    for cid in sorted(clusters):
        members = clusters[cid][:per_cluster]
        images = []
        for m in members:
            info = meta.get(m["row_id"], {})
            try:
                data = read_bytes(info["image_path"], info["image_offset"], info["image_size"])
                images.append(decode(data, draft_size=(THUMB, THUMB)))
            except (ImageProblem, KeyError, TypeError):
                images.append(None)
        rel = f"duplicates/cluster-{cid:05d}.png"
        atomic_write_bytes(out_dir / rel, png_bytes(_sheet(images)))
        size = clusters[cid][0]["cluster_size"]
        table = [
            {
                "row_id": m["row_id"],
                "action": action.get(m["row_id"], ""),
                "kind": m["kind"],
                "distance": m["distance"],
                "caption": (meta.get(m["row_id"], {}).get("caption") or "")[:80],
                "url": meta.get(m["row_id"], {}).get("url"),
            }
            for m in members
        ]
        more = f" (showing {len(members)})" if size > len(members) else ""
        sections.append(
            Section(
                f"cluster {cid}: {size} rows, representative row {members[0]['representative']}{more}",
                table=table,
                images=[(rel, f"cluster {cid}")],
            )
        )
    sections += _metadata_sections(ws, summary.get("metadata"))
    if len(clusters) < summary.get("clusters", 0):
        sections.append(
            Section(
                "More",
                text=f"{summary['clusters'] - len(clusters)} smaller clusters not shown; "
                'query them with: audit query WS "select * from duplicates"',
            )
        )
    return write_page(out_dir, "duplicates", f"Duplicates in {ws.dataset}", sections, intro)


def _metadata_sections(
    ws: Workspace, counts: dict[str, Any] | None, top: int = 10
) -> list[Section]:
    """Rows sharing a normalised URL or a caption (`duplicates-metadata.parquet`): no image needed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = ws.path("duplicates-metadata.parquet")
    if counts is None or not path.exists():
        return []
    table = [{"kind": k, **v} for k, v in counts.items()]
    out = [
        Section(
            "Same URL or same caption (metadata)",
            text="URLs compared with scheme and host lower-cased, default port and fragment "
            "dropped; captions compared ignoring case and runs of spaces. `extra_copies` is rows "
            "beyond the first of each group.",
            table=table,
        )
    ]
    groups = pq.read_table(path)
    for kind in ("url", "caption"):
        t = groups.filter(pc.equal(groups["kind"], kind))
        firsts = t.filter(pc.equal(t["row_id"], t["representative"]))
        rows = sorted(firsts.to_pylist(), key=lambda r: r["group_id"])[:top]
        if rows:
            out.append(
                Section(
                    f"Largest same-{kind} groups",
                    table=[
                        {"rows": r["group_size"], "first row_id": r["row_id"], kind: r["value"]}
                        for r in rows
                    ],
                )
            )
    return out
