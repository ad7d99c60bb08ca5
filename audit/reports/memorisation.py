"""Pages for the memorisation check, its calibration and the memorisation experiment.

Reads what `audit match`, `audit calibrate` and `audit experiment memorisation` wrote
(matches.parquet, summary.json, calibration.json, experiment.json) and renders it; it
computes nothing new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.images import ImageProblem, decode, read_bytes
from audit.reports import UNTRAINED_WARNING, Section, cell, fmt, save_figure, write_page
from audit.workspace import Workspace, atomic_write_bytes

PAIRS = 12  # side-by-side pairs shown


def _images(ws: Workspace, row_ids: list[int]) -> dict[int, Any]:
    """PIL images by row_id (unreadable ones left out)."""
    if not row_ids:
        return {}
    con = ws.connect()
    ids = ",".join(str(int(r)) for r in row_ids)
    rows = con.execute(
        "SELECT row_id, image_path, image_offset, image_size FROM metadata "
        f"WHERE image_status = 'ok' AND row_id IN ({ids})"
    ).fetchall()
    out = {}
    for rid, path, offset, size in rows:
        try:
            out[int(rid)] = decode(read_bytes(path, offset, size))
        except ImageProblem:
            continue
    return out


def _pair_png(gen: Any, train: Any, side: int = 128) -> bytes:
    """generated | training, each scaled to `side` px, on white."""
    from PIL import Image

    from audit.reports import png_bytes

    strip = Image.new("RGB", (2 * side + 8, side), (255, 255, 255))
    for i, img in enumerate((gen, train)):
        if img is not None:
            img = img.convert("RGB").resize(
                (side, side),
                Image.Resampling.NEAREST if max(img.size) < side else Image.Resampling.LANCZOS,
            )
            strip.paste(img, (i * (side + 8), 0))
    return png_bytes(strip)


def _histograms(matches: Any, th: dict[str, Any], path: Path, cosine: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [
        ("tile_distance", "tiled l2 of the best match", ("copy_tile", "near_tile")),
        (
            "relative_distance",
            "relative tiled l2 (Carlini et al.)",
            ("copy_relative", "near_relative"),
        ),
        ("phash_hamming", "phash Hamming (bits)", ("copy_hamming", "near_hamming")),
    ]
    if cosine:
        panels.append(("cosine", "embedding cosine", ("copy_cosine", "near_cosine")))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (col, label, (copy_key, near_key)) in zip(np.atleast_1d(axes), panels, strict=True):
        values = matches[col].dropna().to_numpy(dtype=float)
        ax.hist(values, bins=30, color="#6a8caf")
        for key, style in ((copy_key, "-"), (near_key, "--")):
            if th.get(key) is not None:
                ax.axvline(
                    th[key], color="#c0392b", linestyle=style, label=f"{key} = {th[key]:.3g}"
                )
        ax.set_xlabel(label)
        ax.set_ylabel("generated images")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_match_page(ws_root: str | Path, name: str, out_dir: Path) -> Path:
    """`<out_dir>/memorisation.md|.html` for `WS/memorisation/<name>/`."""
    import pandas as pd

    train = Workspace.open(ws_root)
    folder = train.path(f"memorisation/{name}")
    summary = json.loads((folder / "summary.json").read_text("utf-8"))
    matches = pd.read_parquet(folder / "matches.parquet")
    # relative to the training workspace; a summary written before that names it as given
    gen_at = summary["generated_workspace"]
    beside = train.locate(gen_at)
    gen_at = beside if beside and (Path(beside) / "manifest.json").exists() else gen_at
    gen = Workspace.open(gen_at)
    order = {"copy": 0, "near": 1, "low_information": 2, "novel": 3}
    top = (
        matches.dropna(subset=["train_row_id"])
        .assign(o=matches["verdict"].map(order))
        .sort_values(["o", "tile_distance"])
        .head(PAIRS)
    )
    gen_img = _images(gen, top["generated_row_id"].astype(int).tolist())
    train_img = _images(train, top["train_row_id"].astype(int).tolist())
    pairs = []
    for i, r in enumerate(top.itertuples()):
        rel = f"memorisation/{name}-pair-{i:02d}.png"
        aligned = getattr(r, "pair_png", None)  # the check's query | training | aligned overlap
        atomic_write_bytes(
            out_dir / rel,
            (folder / aligned).read_bytes()
            if isinstance(aligned, str) and (folder / aligned).exists()
            else _pair_png(
                gen_img.get(int(r.generated_row_id)), train_img.get(int(r.train_row_id))
            ),
        )
        ham = "n/a" if pd.isna(r.phash_hamming) else int(r.phash_hamming)
        pairs.append(
            (
                rel,
                f"{r.verdict}: generated {r.generated_key} | training row {int(r.train_row_id)} "
                f"({r.train_key}); tile {r.tile_distance:.3f}, relative {r.relative_distance:.2f}, "
                f"phash {ham}, cosine {r.cosine:.3f}"
                + (f". Evidence: {r.evidence}" if getattr(r, "evidence", None) else ""),
            )
        )
    hist = _histograms(
        matches,
        summary["thresholds"],
        out_dir / f"memorisation/{name}-histograms.png",
        bool(summary.get("cosine_votes")),
    )
    lo, hi = summary["replication_ci95"]
    intro = (
        f"{summary['generated']} generated images ({gen_at}) matched against "
        f"{train.root}: replication rate (verdict copy) "
        f"{fmt(summary['replication_rate'], [lo, hi], True)} (95% bootstrap interval), "
        f"{summary['training_images_copied']} distinct "
        "training images copied."
    )
    if summary.get("warning"):
        intro += f" {summary['warning'][:1].upper()}{summary['warning'][1:]}. {UNTRAINED_WARNING}"
    sections = [
        Section(
            "Verdicts",
            table=[{"verdict": v, "generated images": c} for v, c in summary["counts"].items()]
            + [{"verdict": "unreadable / no candidate", "generated images": summary["errors"]}],
        ),
        Section(
            "Top matches (generated | training | aligned overlap)",
            text="Strongest evidence first. The third panel warps the training image onto the "
            "generated one with the verifier's transform: grey where they agree, red or cyan where "
            "they differ.",
            images=pairs,
        ),
        Section(
            "Best-match scores",
            text="Red lines: copy (solid) and near (dashed) thresholds.",
            images=[(str(hist.relative_to(out_dir)), "best-match score distributions")],
        ),
        Section("How a match is decided", text=_method_text(summary)),
    ]
    return write_page(out_dir, "memorisation", f"Memorisation check: {name}", sections, intro)


def _method_text(summary: dict[str, Any]) -> str:
    th = summary["thresholds"]
    return (
        f"Candidates: the k={summary['k']} best training images by local-feature votes (SIFT, query and "
        "mirror image), by pHash (query and mirror image), by embedding (trained weights only) and by the "
        "learned descriptor if one was given. Each candidate is verified geometrically (SIFT matches, a "
        "RANSAC similarity transform, the correlation over the aligned overlap; see audit/verify.py) and "
        "scored with the tiled l2 distance of Carlini et al. (2023), their relative criterion "
        f"(alpha={th['alpha']}), phash Hamming distance and embedding cosine "
        f"(votes: {summary.get('cosine_votes')}).\n\n"
        "copy = the verifier's verdict (or the learned descriptor at its threshold); near = a global "
        "descriptor past its threshold, or a transform with enough inliers but a low correlation; "
        "low_information = a blank, near-uniform or tiny-foreground generated image, which no pixel "
        f"distance or hash can judge. Thresholds: {cell(th)}. Verifier: "
        f"{cell(summary.get('verifier'))}.\n\nLearned descriptor: {summary.get('descriptor')}"
        f"\n\nInterval: {summary['bootstrap']['method']}, {summary['bootstrap']['reps']} replicates."
    )


def write_calibration_page(out_dir: Path) -> Path:
    """`<out_dir>/calibration.md|.html` from `<out_dir>/calibration.json`."""
    r = json.loads((Path(out_dir) / "calibration.json").read_text("utf-8"))

    def table(stats: dict[str, Any], label: str) -> list[dict[str, Any]]:
        rows = []
        for name, per in stats.items():
            for d, v in per.items():
                row = {
                    label: name,
                    "descriptor": d,
                    "positives": v["positives"],
                    "recall": round(v["recall"], 3),
                    "copies of the wrong source": v["wrong_source"],
                }
                if "precision" in v:  # pooled: the negatives counted once
                    row["negatives"] = v["negatives"]
                    row["negatives called copy"] = v["false_positives_on_negatives"]
                    row["precision"] = None if v["precision"] is None else round(v["precision"], 3)
                rows.append(row)
        return rows

    verdict = {k: {"verdict": v["verdict"]} for k, v in r["per_transform"].items() if v}
    neg = r["negatives"]
    c = r["counts"]
    intro = (
        f"{c['sources']} source images of {r['dataset']} (seed {r['seed']}; drawn from the "
        f"{r.get('usable_sources', '?')} readable pictures the verifier's low-information guard "
        "lets be a copy), each put through "
        f"{len(r['transforms'])} copy transformations and {c['chains_per_length']} chains of 2 and of 3; "
        f"{c['negatives']} held-out images ({r['negatives']['queries']} queries, whole twin groups removed "
        f"from the {c['searched_rows']} searched rows) as negatives. {c['twin_groups']} twin groups "
        "(same sha256, near-identical thumbnails, or near-identical content thumbnails of "
        "the drawing cut from its margin, as they are or mirrored"
        + (f": correlation >= {r['content_correlation']}" if "content_correlation" in r else "")
        + (
            f"; with --group-by {','.join(r['group_by'])}: variants of one drawing by metadata and "
            "correlating thumbnails within one series"
            if r.get("group_by")
            else ""
        )
        + "). A copy verdict on the wrong picture is a false positive; every one is listed below."
    )
    sections = [
        Section(
            "The verdict, pooled",
            table=table(
                {k: {"verdict": v["verdict"]} for k, v in r["pooled"].items() if v}, "pool"
            ),
            text="single: every single transformation; geometric: crop, rotation, mirror; chains: "
            "2-3 transformations in a row. Precision = true copies / (true copies + copies of the "
            "wrong source in the pool + negatives called copy), every negative counted once per "
            "pool: it depends on how many negatives stand beside the pool's positives, so both "
            "counts are shown.",
        ),
        Section(
            "The negatives",
            table=[
                {
                    "descriptor": d,
                    "negatives": neg["queries"],
                    "called copy": k,
                    "false-positive rate": round(k / neg["queries"], 4) if neg["queries"] else None,
                }
                for d, k in neg.get("called_copy_by", {"verdict": neg["called_copy"]}).items()
            ],
            text="Held-out images (each through one random transformation) with no copy in the "
            "searched rows: any copy verdict on them is a false positive. Counted once, here and in "
            "each pool's precision, not charged to every transformation.",
        ),
        Section(
            "The verdict, per transformation",
            table=table(verdict, "transformation"),
            text="Recall per transformation, and the copies matched to a picture other than the "
            "source (or its twins). The negatives' false positives belong to no transformation: "
            "see the negatives above.",
        ),
        Section(
            "Each descriptor alone",
            table=table({k: v for k, v in r["pooled"].items() if v}, "pool"),
            text="What each descriptor would call a copy on its own best candidate at its copy "
            "threshold; old_rule is the global rule (tiled l2, relative, pHash, cosine) that decided "
            "before the geometric verifier.",
        ),
        Section(
            "Candidate recall at k",
            table=[
                {"queries": g, **{s: round(v, 3) for s, v in per.items()}}
                for g, per in r["candidates"].items()
            ],
            text="Share of copies whose source (or a twin) was among each search's candidates.",
        ),
        Section(
            "Every descriptor, per transformation",
            table=table(r["per_transform"], "transformation"),
        ),
        Section(
            "Every false positive of the verdict",
            table=[
                {
                    "query": f["kind"],
                    "made from row": f["query_row_id"],
                    "called a copy of row": f["train_row_id"],
                    "evidence": f["evidence"],
                }
                for f in r.get("false_positives", [])
            ],
            text="None." if not r.get("false_positives") else "",
        ),
        Section(
            "Every copy the verdict missed",
            table=[
                {
                    "query": m["kind"],
                    "made from row": m["query_row_id"],
                    "best match": m["train_row_id"],
                    "verdict": m["verdict"],
                    "evidence": m["evidence"],
                }
                for m in r.get("missed", [])
            ],
            text="None." if not r.get("missed") else "",
        ),
        Section(
            "Settings",
            text=f"Thresholds: {cell(r['thresholds'])}\n\nVerifier: {cell(r['verifier'])}",
        ),
    ]
    return write_page(
        out_dir,
        "calibration",
        f"Calibration of the memorisation check: {r['dataset']}",
        sections,
        intro,
    )


def _duplication_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    share = np.array([r["share_copied"] for r in rows])
    lo = share - np.array([r["share_copied_ci95"][0] for r in rows])
    hi = np.array([r["share_copied_ci95"][1] for r in rows]) - share
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.bar(x, share, yerr=[lo, hi], color="#6a8caf", capsize=4)
    a.set_ylabel("share of members copied (>= 1 sample)")
    b.bar(x, [r["samples_copying_per_member"] for r in rows], color="#c97b63")
    b.set_ylabel("copying samples per member")
    for ax in (a, b):
        ax.set_xticks(x, [f"x{r['copies_in_training']}" for r in rows])
        ax.set_xlabel("copies of the image in the training set")
    return save_figure(fig, path)


def write_experiment_page(out_dir: Path) -> Path:
    """`<out_dir>/experiment.md|.html` from `<out_dir>/experiment.json`."""
    out_dir = Path(out_dir)
    r = json.loads((out_dir / "experiment.json").read_text("utf-8"))
    rows = r["by_duplication"]
    plot = _duplication_plot(rows, out_dir / "replication_by_duplication.png")
    mia = r["mia"]
    auc_rows = [
        {
            "comparison": k.removeprefix("auc_").replace("_", " "),
            "AUC [95% interval]": fmt(v, mia[k + "_ci95"]),
        }
        for k, v in mia.items()
        if k.startswith("auc_") and not k.endswith("_ci95")
    ]
    top, single = rows[0], rows[-1]
    if not any(x["members_copied"] for x in rows):
        verdict = (
            "Not measurable from replication: no sample copies any member at this training length. "
            "The loss-based test below still shows whether duplication left a trace."
        )
    elif (
        top["share_copied"] > single["share_copied"]
        and top["share_copied_ci95"][0] > single["share_copied_ci95"][1]
    ):
        verdict = "Yes: the most duplicated images are replicated more often, with non-overlapping intervals."
    elif top["share_copied"] > single["share_copied"]:
        verdict = "In the same direction, but the intervals overlap: not conclusive at this size."
    else:
        verdict = (
            "No: at this training length the model does not replicate duplicated images more often."
        )
    intro = (
        f"A {r['training'].get('steps', r['steps'])}-step 32x32 DDPM trained on {r['sets']['train']} distinct "
        f"consented images with planted duplication {r['groups']} ([copies, images]); "
        f"{r['sets']['heldout']} consented images held out, {r['sets']['optedout']} opted-out images never "
        f"trained on. {r['samples']} samples ({r['sampler']['name']}, {r['sampler']['steps']} steps) matched "
        f"against the members: replication rate {fmt(r['replication_rate'], r['replication_ci95'], True)} "
        "(95% interval). Sample pairs: [memorisation.md](memorisation.md). "
        f"{UNTRAINED_WARNING}"
    )
    sections = [
        Section(
            "Replication vs duplication",
            table=rows,
            images=[(plot.name, "replication by duplication count")],
            text="Carlini et al. (2023) and Somepalli et al. (2023) find that images duplicated in the training "
            f"set are replicated far more often. Does this model? {verdict}",
        ),
        Section(
            "Membership inference (loss-based)",
            table=auc_rows,
            text=f"{mia['method']}. Mean losses: {cell(mia['mean_loss'])}. AUC 0.5 = no better than "
            "chance; members vs opted-out asks whether images whose creators opted out look like training "
            "data (they should not, as they were not trained on).",
        ),
        Section(
            "Setup",
            table=[
                {"setting": k, "value": v}
                for k, v in {
                    "quick": r["quick"],
                    "seed": r["seed"],
                    "steps": r["steps"],
                    **{
                        f"consent {k}": r["consent"].get(k)
                        for k in ("rows", "kept", "removed", "by_signal")
                    },
                }.items()
            ],
        ),
    ]
    return write_page(
        out_dir,
        "experiment",
        "Memorisation experiment: does duplication cause copying?",
        sections,
        intro,
    )
