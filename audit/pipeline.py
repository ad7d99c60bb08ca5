"""The composer: runs the stages in order. Stages never import each other; this module does.

`describe` turns a set of image sources into a described workspace (ingest, hash, embed,
index); `run` is `audit run`: every stage on one dataset, ending in the reports. Each
stage is resumable on its own, so re-running `audit run` after a crash picks up where it
stopped, and a stage whose inputs have not changed is skipped quickly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.workspace import Workspace


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
    train_steps: int = 0  # 0: do not train the diffusion model
    generate: int = 64
    seed: int = 0
    calibrate: int = 0  # images for `audit calibrate` (0: skip the calibration page)

    @classmethod
    def demo(cls) -> RunOptions:
        sample = sample_dir()
        return cls(
            sources=[str(sample / "shards")],
            registries=[str(p) for p in sorted((sample / "optout").glob("registry-*"))],
            crawl_cache=str(sample / "optout" / "cache"),
            train_steps=3000,
            calibrate=200,
        )


Step = tuple[str, Callable[[], Any]]


def run(
    ws_root: str | Path, options: RunOptions, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every stage on one dataset, then the reports. Returns {stage: summary}."""
    from audit import cards, embeddings, experiments, hashes, knn, metadata, optouts, training
    from audit.checks import bias, duplicates
    from audit.reports import default_dir
    from audit.reports import duplicates as duplicates_report
    from audit.reports import optout as optout_report

    ws_root = Path(ws_root)
    if not options.sources and not (ws_root / "manifest.json").exists():
        raise AuditError("nothing to run: pass SOURCE paths, or --demo for the bundled sample")
    dataset = ws_root.name
    report_dir = Path(options.report_dir or default_dir(ws_root))
    model_dir = ws_root / "models" / "ddpm"
    generated = ws_root / "generated" / "ddpm"
    memorisation_dir = ws_root / "memorisation"

    def dedup() -> dict[str, Any]:
        summary = duplicates.find(ws_root)
        duplicates_report.write(ws_root, report_dir)
        return summary

    def optout() -> dict[str, Any]:
        summary = optouts.compute(ws_root, registry=options.registries, cache=options.crawl_cache)
        optout_report.write(ws_root, report_dir)
        return summary

    steps: list[Step] = []
    if options.sources:
        steps.append(("ingest", lambda: metadata.ingest(ws_root, options.sources, dataset=dataset)))
    steps += [
        ("hash", lambda: hashes.compute(ws_root, workers=options.workers)),
        (
            "embed",
            lambda: embeddings.compute(
                ws_root, model=options.model, pretrained=options.pretrained, workers=options.workers
            ),
        ),
        ("index", lambda: knn.build(ws_root)),
        ("dedup", dedup),
        ("optout", optout),
        ("filter", lambda: optouts.filter_dataset(ws_root, out=ws_root / "consented.parquet")),
        ("bias", lambda: bias.compute(ws_root, report_dir=report_dir / "bias")),
    ]
    if options.calibrate:
        steps.append(
            (
                "calibrate",
                lambda: experiments.calibrate(
                    ws_root, n=options.calibrate, seed=options.seed, report_dir=report_dir
                ),
            )
        )
    if options.train_steps:
        steps += [
            (
                "train",
                lambda: training.train_on_workspace(
                    ws_root, model_dir, steps=options.train_steps, seed=options.seed
                ),
            ),
            (
                "generate",
                lambda: training.generate(
                    model_dir, generated, n=options.generate, seed=options.seed
                ),
            ),
            (
                "match",
                lambda: experiments.match(
                    generated,
                    against=ws_root,
                    name="ddpm",
                    report_dir=report_dir,
                    workers=options.workers,
                ),
            ),
        ]
    steps.append(
        (
            "card",
            lambda: cards.build_model_card(
                ws_root,
                model_dir=model_dir if options.train_steps else None,
                bias_dir=report_dir / "bias",
                memorisation_dir=memorisation_dir if options.train_steps else None,
                out=report_dir / "MODEL_CARD.md",
            ),
        )
    )

    from audit.reports import UNTRAINED_WARNING, overview

    if options.pretrained == "none":
        echo(UNTRAINED_WARNING)
    results: dict[str, Any] = {}
    for name, step in steps:
        started = time.perf_counter()
        echo(f"[{name}] ...")
        results[name] = step()
        echo(f"[{name}] done in {time.perf_counter() - started:.1f}s: {_brief(results[name])}")
    echo(f"report: {overview.write(ws_root, report_dir)}")
    return results


def _brief(summary: Any) -> str:
    if isinstance(summary, dict):
        items = [
            f"{k}={v}"
            for k, v in summary.items()
            if isinstance(v, (int, float, str)) and len(str(v)) < 40
        ]
        return ", ".join(items[:8])
    return str(summary)[:120]
