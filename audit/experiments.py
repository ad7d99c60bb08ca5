"""Composers for memorisation: `match`, `calibrate`, and the experiment that closes the loop.

`match` describes generated images with the training workspace's own descriptors and runs the
memorisation check; `calibrate` measures the check's descriptors on copies made from real
images; `memorisation` trains the small DDPM on a set with planted duplicates, samples it,
matches the samples and measures loss-based membership inference. Stages never import each
other; this module wires them (like `audit.pipeline`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.checks.memorisation import DEFAULT_THRESHOLDS, Thresholds
from audit.errors import AuditError
from audit.schema import IMAGE_LOCATION
from audit.workspace import Output, Workspace, atomic_write_bytes, atomic_write_json


def _embed_params(ws: Workspace) -> tuple[str, str]:
    rec = ws.stage("embed")
    if not rec or rec.get("status") != "done":
        raise AuditError(
            f"{ws.root} has no finished embed stage, so its descriptors are unknown. "
            f"Run: audit embed {ws.root} && audit hash {ws.root} && audit index {ws.root}"
        )
    return rec["params"]["model"], rec["params"]["pretrained"]


def match(
    generated: str | Path,
    against: str | Path,
    name: str | None = None,
    k: int = 10,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    report_dir: str | Path | None = None,
    workers: int = 2,
    descriptor: str | Path | None = None,
    descriptor_threshold: float = 0.5,
) -> dict[str, Any]:
    """Find the training images that generated images copy; returns the summary.

    `descriptor` is an optional TorchScript/ONNX copy descriptor file (SSCD), copy at
    `descriptor_threshold` (see `audit.descriptors`).

    `generated` is a folder, parquet or webdataset of images (or an already described
    workspace). Writes `<against>/memorisation/<name>/{generated/, matches.parquet, summary.json}`
    and the page `<report_dir>/memorisation.md|.html` (default `reports/<dataset>/`).

    >>> match("generated/sample", against="indexes/sample", name="ddpm")  # doctest: +SKIP
    {'generated': 64, 'counts': {'copy': 3, 'near': 5, 'novel': 56}, 'replication_rate': 0.047, ...}
    """
    from audit import descriptors, features, hashes, knn, pipeline
    from audit.checks import memorisation
    from audit.reports import memorisation as report

    train = Workspace.open(against)
    model, pretrained = _embed_params(train)
    desc = descriptors.load(descriptor, descriptor_threshold) if descriptor else None
    if not train.stage_fingerprint("index"):
        knn.build(train.root)  # the candidates come from the training indexes
    train = _ensure_features(train)
    generated = Path(generated)
    if not generated.exists():
        raise AuditError(
            f"{generated} does not exist. Pass the folder (or parquet/webdataset) of generated images."
        )
    name = name or generated.name
    out_dir = train.path(f"memorisation/{name}")
    if (generated / "manifest.json").exists():
        gen_root = generated
    else:
        gen_root = out_dir / "generated"
        # `audit generate` output (generated.parquet + generated/*.png) is img2dataset's
        # "files" layout, which ingest reads as it is.
        pipeline.describe(
            gen_root, [generated], model=model, pretrained=pretrained, dataset=name, workers=workers
        )
    run = train.start_stage(
        f"match-{name}",
        {
            "generated": str(generated.resolve()),
            "k": k,
            "thresholds": thresholds.to_dict(),
            "descriptor": desc.info if desc else None,
        },
        depends_on=["embed", "hash", "features"],
    )
    summary = memorisation.check(
        gen_root,
        train.root,
        knn.search_embeddings,
        knn.search_hashes,
        out_dir,
        k=k,
        thresholds=thresholds,
        search_features=features.search,
        hash_images=hashes.hash_images,
        descriptor=desc,
    )
    rel = f"memorisation/{name}"
    run.finish(
        {
            key: summary[key]
            for key in ("generated", "counts", "replication_rate", "replication_ci95")
        },
        [
            Output(f"{rel}/matches.parquet", rows=summary["generated"]),
            Output(f"{rel}/summary.json"),
        ],
    )
    report.write_match_page(train.root, name, Path(report_dir or Path("reports") / train.dataset))
    return summary


def _ensure_features(ws: Workspace) -> Workspace:
    """Build the local-feature index (stage `features`) unless it is done and current;
    returns the workspace as it is on disk now."""
    from audit import features

    if ws.status().get("features", {}).get("status") != "done":
        features.build(ws.root)
    return Workspace.open(ws.root)


def calibrate(
    ws: str | Path,
    n: int = 150,
    negatives: int = 400,
    seed: int = 0,
    report_dir: str | Path | None = None,
    descriptor: str | Path | None = None,
    descriptor_threshold: float = 0.5,
    group_by: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Precision and recall of the memorisation check on `n` images of `ws` put through
    every copy transformation (alone and chained) and `negatives` held-out images.

    `group_by` names metadata columns whose equal values mark variants of one picture
    (for an `audit sample` workspace: category, title, author), kept out of the negatives
    together with their twins.

    Writes `<report_dir>/calibration.json|.md|.html` (default `reports/<dataset>/`).

    >>> calibrate("indexes/sample", n=150, negatives=400)  # doctest: +SKIP
    """
    import numpy as np

    from audit import descriptors, embeddings, features, hashes, knn, verify
    from audit.checks import calibrate as cal
    from audit.checks import memorisation as mem
    from audit.reports import memorisation as report

    if n < 3 or negatives < 1:
        raise AuditError(
            f"--n must be at least 3 and --negatives at least 1, got {n} and {negatives}."
        )
    w = Workspace.open(ws)
    model, pretrained = _embed_params(w)
    if not w.stage_fingerprint("index"):
        knn.build(w.root)
    w = _ensure_features(w)
    import pyarrow.parquet as pq

    have = pq.read_schema(w.path(w.require_parts()[0].path)).names
    if missing := [c for c in group_by if c not in have]:
        raise AuditError(f"--group-by {','.join(missing)}: no such metadata column in {w.root}")
    rows = mem.read_rows(w, range(w.num_rows), [*IMAGE_LOCATION, "image_sha256", *group_by])
    row_ids, thumbs, usable, sha, family = [], [], [], [], []
    for rid, rec in sorted(rows.items()):
        img = mem.load_image(w, {**rec, "row_id": rid})
        if isinstance(img, Exception):
            continue
        row_ids.append(rid)
        thumbs.append(cal.thumbnail(img))
        usable.append(verify.information(np.asarray(img.convert("L"))) is None)
        sha.append(rec["image_sha256"])
        values = tuple(rec[c] for c in group_by)
        family.append(values if group_by and all(v is not None for v in values) else None)
    groups = cal.twin_groups(sha, np.stack(thumbs), families=family)
    sources, held_out = cal.plan(groups, np.asarray(usable), n, negatives, seed)
    images = {
        i: mem.load_image(w, {**rows[row_ids[i]], "row_id": row_ids[i]}) for i in sources + held_out
    }
    clip = embeddings.load_model(model, pretrained)
    desc = descriptors.load(descriptor, descriptor_threshold) if descriptor else None
    codes, codes_ok = mem.load_hashes(w)
    train_emb, info = mem.load_embeddings(w)
    ref = mem.Reference(
        ws=w,
        search_hashes=knn.search_hashes,
        search_features=features.search,
        codes=codes,
        codes_ok=codes_ok,
        embeddings=train_emb,
        search_embeddings=knn.search_embeddings,
        use_cosine=bool(info.get("trained")),
        descriptor_vectors=mem.describe_rows(w, desc) if desc else None,
        descriptor_threshold=descriptor_threshold,
    )

    def match(imgs: list[Any], exclude: frozenset[int]) -> list[dict[str, Any]]:
        ref.exclude = exclude
        out = []
        for s in range(0, len(imgs), 64):
            chunk = imgs[s : s + 64]
            emb, dv = clip.embed_images(chunk), desc.embed(chunk) if desc else None
            queries = [
                mem.Query(im, emb[j], None if dv is None else dv[j]) for j, im in enumerate(chunk)
            ]
            out += mem.match_images(queries, ref, hashes.hash_images)
        return out

    result = cal.calibrate(
        [images.get(i) for i in range(len(row_ids))],
        row_ids,
        groups,
        sources,
        held_out,
        match,
        seed,
    )
    result.update(
        workspace=str(w.root),
        dataset=w.dataset,
        requested={"sources": n, "negatives": negatives},
        group_by=list(group_by),
        readable_rows=len(row_ids),
        usable_sources=int(np.sum(usable)),
        model=clip.info,
        descriptor=desc.info if desc else None,
        thresholds=Thresholds().to_dict(),
        verifier=verify.settings(),
        cosine_votes=ref.use_cosine,
    )
    out = Path(report_dir or Path("reports") / w.dataset)
    result["report"] = str(out / "calibration.md")
    atomic_write_json(out / "calibration.json", json.loads(json.dumps(result, default=_jsonable)))
    report.write_calibration_page(out)
    return result


def _jsonable(v: Any) -> Any:
    import numpy as np

    return v.item() if isinstance(v, np.generic) else str(v)


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
    atomic_write_json(out / "experiment.json", json.loads(json.dumps(result, default=_jsonable)))
    report.write_experiment_page(out)
    _model_card(work, out, result)
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
        for r in pq.read_table(ws.path(p.path), columns=cols).to_pylist()
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
        "consent": {k: v for k, v in consent.items() if isinstance(v, (int, float, str, dict))},
    }


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
        f"replication rate {result['replication_rate']:.2%} (95% CI {result['replication_ci95'][0]:.2%}-"
        f"{result['replication_ci95'][1]:.2%}); share of members copied by duplication "
        f"{json.dumps(result['copied_share_by_duplication'])}. Membership-inference AUC (members vs held-out) "
        f"{mia['auc_members_vs_heldout']:.3f} (95% CI {mia['auc_members_vs_heldout_ci95'][0]:.3f}-"
        f"{mia['auc_members_vs_heldout_ci95'][1]:.3f}).\n\n"
        "Limits: a 32x32 model trained for minutes on a few hundred clip-art images on CPU; descriptors of an "
        "untrained embedding model; copy thresholds calibrated on clip art; a handful of images per group, so "
        "intervals are wide. See experiment.md beside this card.\n"
    )
    atomic_write_text(card, card.read_text("utf-8") + extra)
