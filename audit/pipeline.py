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
from audit.reports import default_dir
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
    train_base_channels: int = 32
    train_batch_size: int = 32
    generate: int = 64
    seed: int = 0
    calibrate: int = 0  # images for the calibration page (0: no calibration in `audit run`)

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
            # lack (README, "How long the demo takes").
            train_minutes=DEMO_TRAIN_MINUTES,
            train_base_channels=16,
            train_batch_size=16,
            calibrate=200,
        )


@dataclass(frozen=True)
class StageResult:
    """What one stage of `audit run` did: its summary (as recorded in the manifest) and time."""

    stage: str
    summary: dict[str, Any]
    seconds: float


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
        summary = stages.load(stage.entry)(**{kw: values[key] for kw, key in stage.args})
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
    rate = next((r.summary.get("steps_per_s") for r in done if r.stage == "train"), None)
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


def _brief(summary: Any) -> str:
    if isinstance(summary, dict):
        items = [
            f"{k}={v}"
            for k, v in summary.items()
            if isinstance(v, (int, float, str)) and len(str(v)) < 40
        ]
        return ", ".join(items[:8])
    return str(summary)[:120]


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
) -> dict[str, Any]:
    """Find the training images that generated images copy; returns the summary.

    `generated` is a folder, parquet or webdataset of images (or an already described
    workspace). Writes `<against>/memorisation/<name>/{generated/, matches.parquet, summary.json}`
    and the page `<report_dir>/memorisation.md|.html` (default `reports/<dataset>/`).

    >>> match("generated/sample", against="indexes/sample", name="ddpm")  # doctest: +SKIP
    {'generated': 64, 'counts': {'copy': 3, 'near': 5, 'novel': 56}, 'replication_rate': 0.047, ...}
    """
    from audit import knn
    from audit.checks import memorisation
    from audit.reports import memorisation as report

    generated = Path(generated)
    name = safe_name(name or generated.resolve().name, "--name")  # stays in WS/memorisation/
    train = Workspace.open(against)
    model, pretrained = _embed_params(train)
    if not train.stage_fingerprint("index"):
        knn.build(train.root)  # the candidates come from the training indexes
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
        {"generated": str(generated.resolve()), "k": k, "thresholds": thresholds.to_dict()},
        depends_on=["embed", "hash"],
    )
    summary = memorisation.check(
        gen_root,
        train.root,
        knn.search_embeddings,
        knn.search_hashes,
        out_dir,
        k=k,
        thresholds=thresholds,
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


def calibrate(
    ws: str | Path, n: int = 200, seed: int = 0, report_dir: str | Path | None = None
) -> dict[str, Any]:
    """Measure each copy descriptor on `n` images of `ws` and their transformed copies.

    Writes `<report_dir>/calibration.json|.md|.html` (default `reports/<dataset>/`); returns
    the result with the thresholds it suggests and those in use.

    >>> calibrate("indexes/sample", n=200, seed=0)  # doctest: +SKIP
    """

    from audit import embeddings, hashes
    from audit.checks import calibrate as cal
    from audit.checks import memorisation as mem
    from audit.reports import memorisation as report

    if n < 3:
        raise AuditError(f"--n must be at least 3, got {n}.")
    w = Workspace.open(ws)
    model, pretrained = _embed_params(w)
    images, skipped = _distinct_images(w, n, seed)
    clip = embeddings.load_model(model, pretrained)
    trained = bool(clip.info.get("trained"))
    th = Thresholds()
    descriptors = cal.Descriptors(
        to_pixels=mem.to_pixels,
        tile_distance_matrix=mem.tile_distance_matrix,
        hash_images=hashes.hash_images,
        hamming=mem.hamming,
        embed_images=clip.embed_images,
        rule=lambda s: mem.decide(
            s["tile_l2"],
            s["tile_relative"],
            s["phash_hamming"],
            s.get("cosine"),
            th,
            use_cosine=trained,
        )[0],
    )
    result = cal.calibrate(images, descriptors, seed=seed)
    result.update(
        workspace=str(w.root),
        dataset=w.dataset,
        requested=n,
        skipped=skipped,
        model=clip.info,
        suggested=cal.suggest_thresholds(result),
        in_use=th.to_dict(),
        cosine_votes=trained,
    )
    if not trained:
        result["warning"] = "untrained embedding weights: cosine figures describe a random network"
    out = Path(report_dir or default_dir(w))
    atomic_write_json(out / "calibration.json", json.loads(json.dumps(result, default=_jsonable)))
    report.write_calibration_page(out)
    return result


def _jsonable(v: Any) -> Any:
    import numpy as np

    return v.item() if isinstance(v, np.generic) else str(v)


def _distinct_images(ws: Workspace, n: int, seed: int) -> tuple[list[Any], dict[str, int]]:
    """Up to n decoded images with distinct sha256 and some content (blank images are skipped:
    every blank picture is a 'copy' of every other, which says nothing about a descriptor)."""
    import numpy as np
    import pyarrow.parquet as pq

    from audit.checks.memorisation import to_pixels
    from audit.images import ImageProblem, decode, read_bytes

    cols = ["row_id", *IMAGE_LOCATION, "image_sha256"]
    rows = [
        r
        for p in ws.require_parts()
        for r in pq.read_table(ws.path(p.path), columns=cols).to_pylist()
        if r["image_status"] == "ok"
    ]
    order = np.random.default_rng(seed).permutation(len(rows))
    seen: set[str] = set()
    images: list[Any] = []
    skipped = {"duplicate": 0, "blank": 0, "unreadable": 0}
    for i in order:
        r = rows[i]
        if len(images) >= n:
            break
        if r["image_sha256"] in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(r["image_sha256"])
        try:
            img = decode(
                read_bytes(r["image_path"], r["image_offset"], r["image_size"]),
                draft_size=(256, 256),
            )
        except ImageProblem:
            skipped["unreadable"] += 1
            continue
        img.thumbnail((256, 256))
        if to_pixels(img).std() < 0.02:
            skipped["blank"] += 1
            continue
        images.append(img)
    if len(images) < 3:
        raise AuditError(
            f"{ws.root} has only {len(images)} distinct, readable, non-blank images; calibration needs 3+."
        )
    return images, skipped
