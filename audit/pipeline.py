"""The composer: runs the stages in order. Stages never import each other; this module does.

`describe` turns a set of image sources into a described workspace (ingest, hash, embed,
index); `run` is `audit run`: every stage of `audit.stages.STAGES` on one dataset, ending in
the reports; `match` describes generated images with the training workspace's own
descriptors and runs the memorisation check; `calibrate` measures the check's descriptors on
copies made from real images. Each stage is resumable on its own, so re-running `audit run`
after a crash picks up where it stopped, and a stage whose inputs have not changed is
skipped quickly. `audit.experiments` builds on this module, never the reverse.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from audit import stages
from audit.checks.memorisation import DEFAULT_THRESHOLDS, Thresholds
from audit.errors import AuditError
from audit.reports import default_dir, scrubbed
from audit.results import Summary, TrainSummary
from audit.schema import IMAGE_LOCATION
from audit.workspace import Output, Workspace, atomic_write_json, safe_name


def describe(
    ws_root: str | Path,
    sources: list[str | Path],
    model: str = "tiny",
    pretrained: str = "none",
    dataset: str | None = None,
    index: bool = True,
    workers: int = 2,
) -> Workspace:
    """Ingest `sources` into `ws_root`, then hash, embed and (optionally) index them."""
    from audit import embeddings, hashes, knn, metadata

    metadata.ingest(ws_root, [str(s) for s in sources], dataset=dataset)
    hashes.compute(ws_root, workers=workers)
    embeddings.compute(ws_root, model=model, pretrained=pretrained, workers=workers)
    if index:
        knn.build(ws_root)
    return Workspace.open(ws_root)


def sample_dir() -> Path:
    """The bundled real sample (openclipart-png, see audit/data/sample/README.md)."""
    return Path(str(resources.files("audit") / "data" / "sample"))


DEMO_TRAIN_MINUTES = 11.0  # `audit run --demo` trains for this budget (make demo <= 15 min)


@dataclass
class RunOptions:
    """What `audit run` does. `demo()` fills it for the bundled sample."""

    sources: list[str] = field(default_factory=list)
    report_dir: str | None = None
    model: str = "tiny"
    pretrained: str = "none"
    workers: int = 2
    registries: list[str] = field(default_factory=list)
    crawl_cache: str | None = None
    train_steps: int = 0  # 0: do not train the diffusion model (unless train_minutes)
    train_minutes: float = 0.0  # > 0: train for this wall-clock budget instead of steps
    train_resolution: int = 32
    train_base_channels: int = 32
    train_batch_size: int = 32
    train_min_snr_gamma: float = 0.0
    generate: int = 64
    seed: int = 0
    calibrate: int = 0  # images for the calibration page (0: no calibration in `audit run`)
    engine: str = "local"  # executor of the per-part stages: "local" or "ray" (audit.engines)
    ray_address: str | None = None

    @classmethod
    def demo(cls) -> RunOptions:
        sample = sample_dir()
        return cls(
            sources=[str(sample / "shards")],
            registries=[str(p) for p in sorted((sample / "optout").glob("registry-*"))],
            crawl_cache=str(sample / "optout" / "cache"),
            # Bounded time on any 2-core CPU: a fixed budget, and the half-width UNet at half
            # the batch, which fits about 3x the steps of the full one at batch 32 (0.6x the
            # time per step each): where there is no native bf16, steps are what the samples
            # lack. At 16x16 a step costs about half what it does at 32x32 and there is far
            # less to learn, and Min-SNR weighting learns the layout sooner: together they
            # took the samples from colour blobs to the data's look in the same budget
            # (README, "How long the demo takes", has the measurements).
            train_minutes=DEMO_TRAIN_MINUTES,
            train_resolution=16,
            train_base_channels=16,
            train_batch_size=16,
            train_min_snr_gamma=5.0,
            calibrate=30,  # sources x 10 transformations + chains + negatives: a few minutes
        )


@dataclass(frozen=True)
class StageResult:
    """What one stage of `audit run` did: its typed summary (`Stage.summary`, read from what
    the stage returned and recorded in the manifest) and its time."""

    stage: str
    summary: Summary
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "summary": self.summary.to_dict(), "seconds": self.seconds}


def run_values(ws_root: Path, options: RunOptions) -> dict[str, Any]:
    """The values `audit run` hands the stages, by the names `Stage.args` uses."""
    from audit.reports import writable_dir

    dataset = safe_name(ws_root.resolve().name, "workspace folder name")
    report_dir = writable_dir(options.report_dir or default_dir(ws_root))
    model_dir = ws_root / "models" / "ddpm"
    trained = bool(options.train_steps or options.train_minutes)
    return {
        # the options first: the resolved values below (report_dir) replace their raw form
        **{f.name: getattr(options, f.name) for f in fields(options)},
        "ws": ws_root,
        "dataset": dataset,
        "report_dir": report_dir,
        "bias_dir": report_dir / "bias",
        "consented": ws_root / "consented.parquet",
        # The model `audit run` trains sees neither reserved nor generated images (model collapse).
        "exclude_synthetic": True,
        "model_dir": model_dir,
        "model_name": "ddpm",
        "generated": ws_root / "generated" / "ddpm",
        "trained_model_dir": model_dir if trained else None,
        "trained_memorisation_dir": ws_root / "memorisation" if trained else None,
        "model_card": report_dir / "MODEL_CARD.md",
    }


def run(
    ws_root: str | Path, options: RunOptions, echo: Callable[[str], None] = print
) -> list[StageResult]:
    """Every stage of `stages.STAGES` that applies, in order, then the reports."""
    from audit.reports import UNTRAINED_WARNING, overview

    ws_root = Path(ws_root)
    if not options.sources and not (ws_root / "manifest.json").exists():
        raise AuditError("nothing to run: pass SOURCE paths, or --demo for the bundled sample")
    values = run_values(ws_root, options)
    trains = bool(options.train_steps or options.train_minutes)
    applies = {
        "always": True,
        "sources": bool(options.sources),
        "train": trains,
        "calibrate": bool(options.calibrate),
    }
    if options.pretrained == "none":
        echo(UNTRAINED_WARNING)
    results: list[StageResult] = []
    todo = [stage for stage in stages.STAGES if applies.get(stage.when, False)]
    for i, stage in enumerate(todo):
        started = time.perf_counter()
        left = _time_left([s.name for s in todo[i:]], results, options)
        echo(f"[{stage.name}] ... (stage {i + 1} of {len(todo)}{left})")
        returned = stages.load(stage.entry)(**{kw: values[key] for kw, key in stage.args})
        summary = stage.summary.from_dict(returned)
        if stage.report:
            stages.load(stage.report)(ws_root, values["report_dir"])
        seconds = time.perf_counter() - started
        results.append(StageResult(stage.name, summary, seconds))
        echo(f"[{stage.name}] done in {seconds:.1f}s: {_brief(summary)}")
    echo(f"report: {overview.write(ws_root, values['report_dir'])}")
    return results


# Sampling 64 images with 50 denoising steps costs about this many training steps (a forward
# pass at batch 64 is ~0.4-0.7 of a training step at batch 32, measured for both UNet widths).
SAMPLING_IN_TRAIN_STEPS = 30


def _time_left(names: list[str], done: list[StageResult], options: RunOptions) -> str:
    """How long the run has left, as ", about N min left in the run": the training budget
    plus the stage times measured so far (the mean of the finished quick stages; sampling
    from the measured training rate). Empty when training by steps (no rate is known yet)."""
    quick = [r.seconds for r in done if r.stage not in ("train", "generate")]
    per_stage = sum(quick) / len(quick) if quick else 2.0
    rate = next((r.summary.steps_per_s for r in done if isinstance(r.summary, TrainSummary)), None)
    sampling = SAMPLING_IN_TRAIN_STEPS / rate if rate else 0.1 * options.train_minutes * 60
    seconds = 0.0
    for name in names:
        if name == "train":
            if not options.train_minutes:
                return ""  # by steps: the rate is not known before it runs
            seconds += options.train_minutes * 60 + sampling  # the budget + the sample grid
        elif name == "generate":
            seconds += sampling * -(-options.generate // 64)
        else:
            seconds += per_stage
    return f", about {seconds / 60:.1f} min left in the run"


def _brief(summary: Summary) -> str:
    return ", ".join(f"{k}={v}" for k, v in list(summary.scalars().items())[:8])


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
    from audit import descriptors, features, hashes, knn
    from audit.checks import memorisation
    from audit.reports import memorisation as report

    generated = Path(generated)
    name = safe_name(name or generated.resolve().name, "--name")  # stays in WS/memorisation/
    train = Workspace.open(against)
    model, pretrained = _embed_params(train)
    desc = descriptors.load(descriptor, descriptor_threshold) if descriptor else None
    if not train.stage_fingerprint("index"):
        knn.build(train.root)  # the candidates come from the training indexes
    train = _ensure_features(train)
    if not generated.exists():
        raise AuditError(
            f"{generated} does not exist. Pass the folder (or parquet/webdataset) of generated images."
        )
    out_dir = train.path(f"memorisation/{name}")
    if (generated / "manifest.json").exists():
        gen_root = generated
    else:
        gen_root = out_dir / "generated"
        # `audit generate` output (generated.parquet + generated/*.png) is img2dataset's
        # "files" layout, which ingest reads as it is.
        describe(
            gen_root, [generated], model=model, pretrained=pretrained, dataset=name, workers=workers
        )
    run = train.start_stage(
        f"match-{name}",
        {
            "generated": train.relative(generated),
            "k": k,
            "thresholds": thresholds.to_dict(),
            "descriptor": {**desc.info, "path": train.relative(desc.path)} if desc else None,
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
        search_thumbnails=features.search_thumbnails,
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
    report.write_match_page(train.root, name, Path(report_dir or default_dir(train)))
    return summary


def _ensure_features(ws: Workspace) -> Workspace:
    """Build the local-feature index (stage `features`) unless it is done and current;
    returns the workspace as it is on disk now."""
    from audit import features

    # a features stage from before the content thumbnails is rebuilt (it has no thumbnails)
    done = ws.status().get("features", {}).get("status") == "done"
    if not done or not ws.path("faiss/thumbnails.faiss").exists():
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
    (for an `audit sample` workspace: category,title; the last column is compared by its
    first word, see `calibrate.family_key`), kept out of the negatives together with their
    twins; the first column is a category path within which correlating thumbnails are one
    series (`calibrate.series_key`), and so are correlating thumbnails under one title word
    across categories (`calibrate.name_key`).

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
    # a source is a picture the verifier's guard lets be anybody's copy: the features stage
    # keeps a content thumbnail for exactly those (not blank, tiny-foreground or featureless;
    # an orange disc in a corner has 3 keypoints and would measure the guard, not the check)
    verifiable = set(features.open_thumbnails(w.root)[1].tolist())
    row_ids, thumbs, content, usable = [], [], [], []
    sha, family, series, names = [], [], [], []
    for rid, rec in sorted(rows.items()):
        img = mem.load_image(w, {**rec, "row_id": rid})
        if isinstance(img, Exception):
            continue
        row_ids.append(rid)
        thumbs.append(cal.thumbnail(img))
        grey = np.asarray(img.convert("L"))
        content.append(features.content_thumbnail(grey))
        usable.append(rid in verifiable)
        sha.append(rec["image_sha256"])
        family.append(cal.family_key(tuple(rec[c] for c in group_by)) if group_by else None)
        series.append(cal.series_key(rec[group_by[0]]) if group_by else None)
        names.append(cal.name_key(rec[group_by[-1]]) if len(group_by) > 1 else None)
    groups = cal.twin_groups(
        sha,
        np.stack(thumbs),
        content=np.stack(content),
        families=family,
        series=series if group_by else None,
        names=names if len(group_by) > 1 else None,
    )
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
        search_thumbnails=features.search_thumbnails,
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
        content_correlation=cal.CONTENT_CORRELATION,
        readable_rows=len(row_ids),
        usable_sources=int(np.sum(usable)),
        model=clip.info,
        descriptor=desc.info if desc else None,
        thresholds=Thresholds().to_dict(),
        verifier=verify.settings(),
        cosine_votes=ref.use_cosine,
    )
    out = Path(report_dir or default_dir(w))
    result["report"] = str(out / "calibration.md")
    # the report folder is read elsewhere: no absolute path of this machine in its JSON either
    atomic_write_json(
        out / "calibration.json", scrubbed(json.loads(json.dumps(result, default=_jsonable)), out)
    )
    report.write_calibration_page(out)
    return result


def _jsonable(v: Any) -> Any:
    import numpy as np

    return v.item() if isinstance(v, np.generic) else str(v)
