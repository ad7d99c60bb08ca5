"""The memorisation experiment that closes the loop, built on the composer `audit.pipeline`.

`memorisation` trains the small DDPM on a set with planted duplicates, samples it, matches the
samples (`pipeline.match`) and measures loss-based membership inference. `match` and
`calibrate` live in `audit.pipeline` (the one composer); they are named here too for callers
of the experiment API. This module imports the composer, never the reverse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.pipeline import _jsonable, calibrate, match
from audit.reports import scrubbed
from audit.schema import IMAGE_LOCATION
from audit.workspace import Workspace, atomic_write_bytes, atomic_write_json

__all__ = ["calibrate", "match", "memorisation"]

# -- the memorisation experiment ------------------------------------------------------------------
# Planted duplication: (copies in the training set, number of distinct images with that count).
GROUPS = ((32, 8), (8, 8), (1, 48))
QUICK_GROUPS = ((16, 4), (4, 4), (1, 16))


def memorisation(
    sample: str | Path | None = None,
    out: str | Path = "reports/experiments/memorisation",
    quick: bool = False,
    seed: int = 0,
    steps: int | None = None,
) -> dict[str, Any]:
    """Train the small DDPM on consented sample images with planted duplicates, then audit it.

    Distinct consented images (no two within 10 phash bits) are split into training members
    duplicated as in `GROUPS` and held-out images; opted-out images are never trained on. The
    model is sampled, the samples matched against the members (`match`), and the per-image
    denoising loss gives a membership-inference AUC (members vs held-out, members vs opted-out).
    Everything lands in `out` (workspaces and model under `out/work/`); returns the summary.

    >>> memorisation(quick=True, out="/tmp/mem")  # doctest: +SKIP
    """
    import torch

    # One thread: for this small UNet, thread overhead outweighs the gain, and on a shared
    # 2-core machine two threads ran 10x slower (0.25 vs 2.8 steps/s) than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _memorisation(sample, Path(out), quick, seed, steps)
    finally:
        torch.set_num_threads(threads)


def _memorisation(
    sample: str | Path | None, out: Path, quick: bool, seed: int, steps: int | None
) -> dict[str, Any]:
    import numpy as np

    from audit import diffusion, pipeline
    from audit.reports import memorisation as report

    work = out / "work"
    sample = Path(sample) if sample else pipeline.sample_dir()
    groups = QUICK_GROUPS if quick else GROUPS
    steps = steps or (400 if quick else 2500)
    n_samples, sample_steps = (64, 25) if quick else (256, 50)
    sampler = "ddpm"  # `audit generate`'s default: DDIM (eta 0) was worse at this training length
    sets = _experiment_sets(sample, work / "sample", groups, seed)
    members = np.concatenate(
        [
            np.repeat(sets["train"][i : i + 1], sets["copies"][i], axis=0)
            for i in range(len(sets["train"]))
        ]
    )
    config = diffusion.TrainConfig(
        steps=steps,
        batch_size=32,
        lr=5e-4,
        warmup_steps=50,
        ema_decay=0.995,
        seed=seed,
        device="cpu",
        precision="auto",  # bf16 where the CPU has it (recorded in the model's config)
        flip=False,
        checkpoint_every=max(100, steps // 5),
        sample_grid=0,
        model=diffusion.ModelConfig(
            resolution=32, base_channels=16, channel_mults=(1, 2, 2), attention_resolution=0
        ),
        data={
            "workspace": str(work / "sample"),
            "selection": "optout/kept.parquet, planted duplicates",
            "distinct_images": len(sets["train"]),
            "groups": [list(g) for g in groups],
        },
    )
    trained = diffusion.train(members, None, config, work / "model")
    model, schedule, _ = diffusion.load(work / "model")
    train_ws = work / "train"
    if not (train_ws / "manifest.json").exists():
        _write_pngs(
            work / "train-images",
            sets["train"],
            [f"member-{c:02d}x-{i:03d}" for i, c in enumerate(sets["copies"])],
        )
        pipeline.describe(train_ws, [work / "train-images"], dataset="memorisation-members")
    generated = diffusion.sample(
        model, schedule, n_samples, seed=seed + 10_000, sampler=sampler, steps=sample_steps
    )
    _write_pngs(work / "generated", generated, [f"sample-{i:04d}" for i in range(n_samples)])
    summary = match(work / "generated", train_ws, name="ddpm", report_dir=out)
    result = {
        "quick": quick,
        "seed": seed,
        "steps": steps,
        "training": trained,
        "samples": n_samples,
        "sampler": {"name": sampler, "steps": sample_steps},
        "groups": [list(g) for g in groups],
        "sets": {k: int(len(sets[k])) for k in ("train", "heldout", "optedout")},
        "consent": sets["consent"],
        "replication_rate": summary["replication_rate"],
        "replication_ci95": summary["replication_ci95"],
        **_replication_by_duplication(train_ws, sets["copies"], seed),
        "mia": _membership_inference(model, schedule, sets, seed),
    }
    # the card reads WS/memorisation/*/summary.json: the MIA AUCs go in beside the match summary
    mem_summary = Workspace.open(train_ws).path("memorisation/ddpm/summary.json")
    atomic_write_json(
        mem_summary,
        {**json.loads(mem_summary.read_text("utf-8")), "membership_inference": result["mia"]},
    )
    # read elsewhere like the pages it feeds (committed, attached): this machine's paths
    # made relative by the scrubber the pages use
    experiment = scrubbed(json.loads(json.dumps(result, default=_jsonable)), out)
    atomic_write_json(out / "experiment.json", experiment)
    report.write_experiment_page(out)
    _model_card(work, out, result)
    # committed with the bundled sample it reads: its workspaces hold no path of this machine
    generated_ws = Workspace.open(train_ws).locate(summary["generated_workspace"])
    if generated_ws is None:  # match always records where it described the samples
        raise AuditError(f"{mem_summary} records no generated_workspace")
    for ws_dir in (work / "sample", train_ws, Path(generated_ws)):
        Workspace.open(ws_dir).forget_absolute_roots()
    return result


def _experiment_sets(
    sample: Path, ws_root: Path, groups: tuple[tuple[int, int], ...], seed: int
) -> dict[str, Any]:
    """Describe + consent-filter the sample; pick distinct members, held-out and opted-out images (32x32)."""
    import numpy as np
    import pyarrow.parquet as pq

    from audit import optouts, pipeline, training
    from audit.checks.memorisation import hamming, load_hashes
    from audit.images import ImageProblem, decode, read_bytes

    source = sample / "shards" if (sample / "shards").is_dir() else sample
    ws = pipeline.describe(ws_root, [source], dataset="memorisation-sample")
    registries = sorted((sample / "optout").glob("registry-*"))
    cache = sample / "optout" / "cache"
    optouts.compute(ws.root, registry=registries, cache=cache if cache.is_dir() else None)
    consent = optouts.filter_dataset(ws.root, out=ws.path("consented.parquet"))
    kept = set(
        pq.read_table(ws.path("optout/kept.parquet"), columns=["row_id"])["row_id"].to_pylist()
    )
    codes, valid = load_hashes(ws)
    cols = ["row_id", *IMAGE_LOCATION]
    rows = [
        r
        for p in ws.require_parts()
        for r in ws.read_part(p, columns=cols).to_pylist()
        if r["image_status"] == "ok" and valid[r["row_id"]]
    ]
    chosen: list[int] = []
    images: dict[int, Any] = {}
    for i in np.random.default_rng(seed).permutation(len(rows)):
        r = rows[i]
        rid = r["row_id"]
        if chosen and hamming(codes[rid, 0], codes[chosen, 0]).min() <= 10:
            continue  # a near-duplicate of a picked image would blur members and non-members
        try:
            img = decode(read_bytes(r["image_path"], r["image_offset"], r["image_size"]))
        except ImageProblem:
            continue
        small = np.asarray(training.square_on_white(img, 32), dtype=np.uint8)
        if small.std() < 6:  # blank at 32x32: no picture to copy
            continue
        chosen.append(rid)
        images[rid] = small
    consented = [r for r in chosen if r in kept]
    n_train = sum(n for _, n in groups)
    n_heldout = min(len(consented) - n_train, 48)
    if n_heldout < 8:
        raise AuditError(
            f"the sample has only {len(consented)} distinct consented images; the experiment "
            f"needs {n_train} members + 8 held-out. Use --quick or a larger --sample."
        )
    train_ids, heldout_ids = consented[:n_train], consented[n_train : n_train + n_heldout]
    copies = [c for c, n in groups for _ in range(n)]
    optedout_ids = [r for r in chosen if r not in kept]

    def stack(ids: list[int]) -> Any:
        return np.stack([images[r] for r in ids]) if ids else np.zeros((0, 32, 32, 3), np.uint8)

    return {
        "train": stack(train_ids),
        "copies": copies,
        "heldout": stack(heldout_ids),
        "optedout": stack(optedout_ids),
        "row_ids": {"train": train_ids, "heldout": heldout_ids, "optedout": optedout_ids},
        "consent": _located(
            {k: v for k, v in consent.items() if isinstance(v, (int, float, str, dict))}, ws
        ),
    }


def _located(value: Any, ws: Workspace) -> Any:
    """The optout summary with the workspace-relative paths it records (`../registry.txt`)
    resolved on this machine, so `scrubbed` writes them relative to the report, not to the
    workspace the summary came from."""
    if isinstance(value, dict):
        return {k: _located(v, ws) for k, v in value.items()}
    if isinstance(value, list):
        return [_located(v, ws) for v in value]
    if isinstance(value, str) and (value == ".." or value.startswith("../")):
        return ws.locate(value)
    return value


def _write_pngs(folder: Path, images: Any, names: list[str]) -> None:
    from PIL import Image

    from audit.reports import png_bytes

    for img, name in zip(images, names, strict=True):
        atomic_write_bytes(folder / f"{name}.png", png_bytes(Image.fromarray(img)))


def _replication_by_duplication(train_ws: Path, copies: list[int], seed: int) -> dict[str, Any]:
    """Per duplication count: share of members copied at least once and copies per member."""
    import numpy as np
    import pandas as pd

    from audit.checks.memorisation import bootstrap_rate

    ws = Workspace.open(train_ws)
    con = ws.connect()
    keys = dict(con.execute("SELECT row_id, key FROM metadata").fetchall())
    # member file names carry the planted count: member-32x-007
    count_of = {rid: int(str(key).split("-")[1].rstrip("x")) for rid, key in keys.items()}
    m = pd.read_parquet(ws.path("memorisation/ddpm/matches.parquet"))
    copied = m[m["verdict"] == "copy"]
    rows, share = [], {}
    for c in sorted(set(copies), reverse=True):
        ids = [rid for rid, n in count_of.items() if n == c]
        hit = copied["train_row_id"].isin(ids)
        flags = np.isin(ids, copied["train_row_id"].to_numpy())
        rate, lo, hi = bootstrap_rate(flags, seed=seed)
        share[f"x{c}"] = rate
        rows.append(
            {
                "copies_in_training": c,
                "members": len(ids),
                "members_copied": int(flags.sum()),
                "share_copied": rate,
                "share_copied_ci95": [lo, hi],
                "samples_copying": int(hit.sum()),
                "samples_copying_per_member": float(hit.sum() / max(1, len(ids))),
                "near_or_copy_samples": int(
                    m[(m["verdict"] != "novel") & m["train_row_id"].isin(ids)].shape[0]
                ),
            }
        )
    return {"by_duplication": rows, "copied_share_by_duplication": share}


def _membership_inference(
    model: Any, schedule: Any, sets: dict[str, Any], seed: int, reps: int = 2000
) -> dict[str, Any]:
    """Loss-based MIA: AUC of -loss for members vs held-out and vs opted-out, with bootstrap intervals."""
    import numpy as np

    from audit import diffusion
    from audit.checks.memorisation import loss_auc

    loss = {
        k: diffusion.per_example_loss(model, schedule, sets[k], seed=seed)
        for k in ("train", "heldout", "optedout")
        if len(sets[k])
    }
    copies = np.asarray(sets["copies"])
    out: dict[str, Any] = {
        "method": "ROC AUC of negative per-example denoising loss (fixed timesteps and noise), "
        f"percentile bootstrap over images, {reps} reps",
        "mean_loss": {k: float(v.mean()) for k, v in loss.items()},
    }
    out["auc_members_vs_heldout"], out["auc_members_vs_heldout_ci95"] = loss_auc(
        loss["train"], loss["heldout"], reps, seed
    )
    if "optedout" in loss and len(loss["optedout"]) >= 3:
        out["auc_members_vs_optedout"], out["auc_members_vs_optedout_ci95"] = loss_auc(
            loss["train"], loss["optedout"], reps, seed
        )
    for c in sorted(set(copies.tolist()), reverse=True):
        out[f"auc_x{c}_vs_heldout"], out[f"auc_x{c}_vs_heldout_ci95"] = loss_auc(
            loss["train"][copies == c], loss["heldout"], reps, seed
        )
    return out


def _model_card(work: Path, out: Path, result: dict[str, Any]) -> None:
    """MODEL_CARD.md through `audit.cards` (consent from the sample workspace, results from the match)."""
    from audit import cards
    from audit.reports import fmt
    from audit.workspace import atomic_write_text

    card = out / "MODEL_CARD.md"
    cards.build_model_card(
        work / "sample",
        model_dir=work / "model",
        memorisation_dir=work / "train" / "memorisation",
        out=card,
    )
    mia = result["mia"]
    extra = (
        "\n## Memorisation experiment\n\n"
        f"Trained {result['steps']} steps on {result['sets']['train']} distinct consented images duplicated "
        f"{result['groups']} (copies, images); {result['sets']['heldout']} consented images held out and "
        f"{result['sets']['optedout']} opted-out images never trained on. {result['samples']} samples: "
        f"replication rate {fmt(result['replication_rate'], result['replication_ci95'], True)}; share of members copied by duplication "
        f"{json.dumps(result['copied_share_by_duplication'])}. Membership-inference AUC (members vs held-out) "
        f"{fmt(mia['auc_members_vs_heldout'], mia['auc_members_vs_heldout_ci95'])} (95% intervals in brackets).\n\n"
        "Limits: a 32x32 model trained for minutes on a few hundred clip-art images on CPU; descriptors of an "
        "untrained embedding model; copy thresholds calibrated on clip art; a handful of images per group, so "
        "intervals are wide. See experiment.md beside this card.\n"
    )
    atomic_write_text(card, card.read_text("utf-8") + extra)
