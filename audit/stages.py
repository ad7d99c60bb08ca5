"""The one list of stages: what each reads and writes, how `audit run` calls it, what it reports.

A stage declares itself once, in `STAGES`, and everything else reads that tuple: the
workspace (its duckdb views, `TABLES`, and the command named in "run this first"), `audit
run` (`pipeline.run` calls the stages in this order and hands back each one's typed summary,
`Stage.summary`), the status page (key figures, report pages) and the CLI. Adding a stage is
one entry here plus its module, its command and its summary dataclass in `audit.results`.

Functions are named as "module:function" and imported only when called (`load`), so this
module stays in the base layer: it imports no stage, and `audit --help` imports nothing heavy.
`tests/test_stages.py` checks every name resolves and every command exists.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit import results
from audit.errors import AuditError


@dataclass(frozen=True)
class Table:
    """A workspace artefact as a duckdb view: `view` over the files matching `glob`."""

    view: str
    glob: str
    about: str


@dataclass(frozen=True)
class Stage:
    """One stage of the audit.

    `entry` is the library function its command and `audit run` call; `args` maps each of its
    keyword arguments to a value `pipeline.run` provides (see `pipeline.RUN_VALUES`). `reads`
    names the stages whose artefacts it reads, `writes` the tables it adds. `part` is the
    function that does one metadata part's work (what an engine spreads over workers) and
    `finish` what runs once after every part is in; both None for a stage that works on the
    whole dataset at once. `report` renders its page after it ran in `audit run`. `when`:
    "always", "sources" (only when `audit run` was given sources), "train" (only when a model
    is trained), "calibrate" (only when `RunOptions.calibrate` names a number of images).
    `summary` is the dataclass (`audit.results`) that reads what the entry returns and records
    in the manifest; `key_figures` are some of its fields.
    """

    name: str
    command: str
    entry: str
    args: tuple[tuple[str, str], ...]
    reads: tuple[str, ...] = ()
    writes: tuple[Table, ...] = ()
    part: str | None = None
    finish: str | None = None
    report: str | None = None
    pages: tuple[tuple[str, str], ...] = ()
    key_figures: tuple[str, ...] = ()
    when: str = "always"
    summary: type[results.Summary] = results.Summary


WS = ("ws_root", "ws")
# Stages with a per-part function take the executor (`audit.engines`) too.
ENGINE = (("engine", "engine"), ("ray_address", "ray_address"))

STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "ingest",
        "audit.metadata:ingest",
        (WS, ("sources", "sources"), ("dataset", "dataset")),
        writes=(
            Table(
                "metadata",
                "metadata/part-*.parquet",
                "one row per record: canonical columns, provenance, image location",
            ),
            Table(
                "errors",
                "errors/*.parquet",
                "one row per problem with a row or an input: stage, reason, detail",
            ),
        ),
        key_figures=("rows", "images", "errors"),
        when="sources",
        summary=results.IngestSummary,
    ),
    Stage(
        "hash",
        "hash",
        "audit.hashes:compute",
        (WS, ("workers", "workers"), *ENGINE),
        reads=("ingest",),
        writes=(
            Table(
                "hashes",
                "hashes/part-*.parquet",
                "row_id and 64-bit perceptual hashes (phash, dhash, whash, ahash)",
            ),
        ),
        part="audit.hashes:hash_part",
        key_figures=("hashed", "errors"),
        summary=results.HashSummary,
    ),
    Stage(
        "embed",
        "embed",
        "audit.embeddings:compute",
        (WS, ("model", "model"), ("pretrained", "pretrained"), ("workers", "workers"), *ENGINE),
        reads=("ingest",),
        writes=(
            Table(
                "clip_scores",
                "embeddings/scores-*.parquet",
                "row_id and image-caption cosine of the embedding model",
            ),
        ),
        part="audit.embeddings:embed_part",
        key_figures=("embedded", "errors", "dim"),
        summary=results.EmbedSummary,
    ),
    Stage(
        "index",
        "index",
        "audit.knn:build",
        (WS, *ENGINE),
        reads=("embed", "hash"),
        part="audit.knn:index_part",
        key_figures=("image_index", "recall_at_10"),
        summary=results.IndexSummary,
    ),
    Stage(
        "dedup",
        "dedup",
        "audit.checks.duplicates:find",
        (WS,),
        reads=("hash", "embed"),
        writes=(
            Table(
                "duplicates",
                "duplicates.parquet",
                "row_id, cluster_id, kind of duplicate, distance to the cluster's representative",
            ),
            Table(
                "duplicates_metadata",
                "duplicates-metadata.parquet",
                "row_id, kind (url | caption), group_id, group_size, representative, normalised value",
            ),
        ),
        report="audit.reports.duplicates:write",
        pages=(("duplicates.md", "Which images are exact or near duplicates?"),),
        key_figures=("clusters", "rows_in_clusters", "by_kind", "largest_cluster"),
        summary=results.DedupSummary,
    ),
    Stage(
        "optout",
        "optout",
        "audit.optouts:compute",
        (WS, ("registry", "registries"), ("cache", "crawl_cache"), *ENGINE),
        reads=("ingest",),
        writes=(
            Table(
                "optout",
                "optout/decisions.parquet",
                "one row per record and use: decision, signal, where found, evidence",
            ),
            Table(
                "optout_signals",
                "optout/signals.parquet",
                "every opt-out signal found, one row per signal and record",
            ),
            Table(
                "optout_coverage",
                "optout/coverage.parquet",
                "one row per record: per source, evaluated / absent / not_consulted / missing",
            ),
        ),
        part="audit.optouts:optout_part",
        finish="audit.optouts.outputs:merge_parts",
        report="audit.reports.optout:write",
        pages=(
            (
                "optout.md",
                "Which rows did their creators reserve from AI training, on which signal?",
            ),
        ),
        key_figures=("rows", "decisions"),
        summary=results.OptoutSummary,
    ),
    Stage(
        "provenance",
        "provenance",
        "audit.provenance:detect",
        (WS,),
        reads=("ingest",),
        writes=(
            Table(
                "synthetic",
                "provenance/synthetic-*.parquet",
                "one row per record: generated-media marks (IPTC digital source type, C2PA) "
                "and their signature state",
            ),
        ),
        report="audit.reports.provenance:write",
        pages=(("synthetic.md", "Which images are marked as generated (IPTC, C2PA), per source?"),),
        key_figures=("rows", "synthetic", "c2pa_states"),
        summary=results.ProvenanceSummary,
    ),
    Stage(
        "filter",
        "filter",
        "audit.optouts:filter_dataset",
        (WS, ("out", "consented"), ("exclude_synthetic", "exclude_synthetic")),
        reads=("optout", "provenance"),
        key_figures=("use", "kept", "removed", "by_decision", "synthetic_removed"),
        summary=results.FilterSummary,
    ),
    Stage(
        "bias",
        "bias",
        "audit.checks.bias:compute",
        (WS, ("report_dir", "bias_dir")),
        reads=("ingest", "embed"),
        pages=(("bias/bias.md", "How do captions, sources, languages and image properties skew?"),),
        key_figures=("captions", "female_to_male_ratio", "domains", "top10_domain_share", "probes"),
        summary=results.BiasSummary,
    ),
    Stage(
        "train",
        "train",
        "audit.training:train_on_workspace",
        (
            WS,
            ("out", "model_dir"),
            ("steps", "train_steps"),
            ("minutes", "train_minutes"),
            ("resolution", "train_resolution"),
            ("base_channels", "train_base_channels"),
            ("batch_size", "train_batch_size"),
            ("min_snr_gamma", "train_min_snr_gamma"),
            ("seed", "seed"),
        ),
        reads=("ingest",),
        when="train",
        summary=results.TrainSummary,
    ),
    Stage(
        "generate",
        "generate",
        "audit.training:generate",
        (("model", "model_dir"), ("out", "generated"), ("n", "generate"), ("seed", "seed")),
        reads=("train",),
        when="train",
        summary=results.GenerateSummary,
    ),
    Stage(
        "match",
        "match",
        "audit.pipeline:match",
        (
            ("generated", "generated"),
            ("against", "ws"),
            ("name", "model_name"),
            ("report_dir", "report_dir"),
            ("workers", "workers"),
        ),
        reads=("embed", "hash", "index"),
        writes=(
            Table(
                "matches",
                "memorisation/*/matches.parquet",
                "one row per generated image: best training match, scores, verdict",
            ),
        ),
        pages=(("memorisation.md", "Which generated images copy training images?"),),
        key_figures=("generated", "counts", "replication_rate"),
        when="train",
        summary=results.MatchSummary,
    ),
    Stage(
        "calibrate",
        "calibrate",
        "audit.pipeline:calibrate",
        (("ws", "ws"), ("n", "calibrate"), ("seed", "seed"), ("report_dir", "report_dir")),
        reads=("embed",),
        pages=(
            (
                "calibration.md",
                "How well does each copy descriptor separate copies from non-copies?",
            ),
        ),
        when="calibrate",  # `audit calibrate`, and `audit run --demo`: it measures the check
        summary=results.CalibrateSummary,
    ),
    Stage(
        "features",
        "features",
        "audit.features:build",
        (WS,),
        reads=("ingest",),
        key_figures=("descriptors", "images"),
        when="never",  # built on demand by `audit match` and `audit calibrate`
        summary=results.FeaturesSummary,
    ),
    Stage(
        "bias_generated",
        "bias",  # `audit bias generated`
        "audit.checks.bias.generated:compute",
        (),
        pages=(("bias/bias_generated.md", "How do generated images vary across prompts?"),),
        when="never",  # needs prompts and a model: `audit bias generated`
        summary=results.BiasGeneratedSummary,
    ),
    Stage(
        "card",
        "card",
        "audit.cards:build_model_card",
        (
            WS,
            ("model_dir", "trained_model_dir"),
            ("bias_dir", "bias_dir"),
            ("memorisation_dir", "trained_memorisation_dir"),
            ("out", "model_card"),
        ),
        pages=(("MODEL_CARD.md", "The model card, merged from all of the above."),),
        summary=results.CardSummary,
    ),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}

# Every table a workspace can hold, view name -> (glob under the workspace, what it is), in
# stage order. `audit query` and the reports share these views. Keep in step with the
# "What is on disk" section of README.md.
TABLES: dict[str, tuple[str, str]] = {t.view: (t.glob, t.about) for s in STAGES for t in s.writes}

# Report pages in reading order: (file under the report folder, what it answers).
PAGES: tuple[tuple[str, str], ...] = tuple(p for s in STAGES for p in s.pages)

# Summary keys worth a glance on the status page, per stage.
KEY_FIGURES: dict[str, tuple[str, ...]] = {s.name: s.key_figures for s in STAGES if s.key_figures}


def summary(stage: str, recorded: dict[str, Any] | None) -> results.Summary:
    """The typed summary of `stage` (a `match-<name>` manifest record is a "match") from the
    dict its entry returned or the manifest recorded."""
    declared = BY_NAME.get(stage) or BY_NAME.get(stage.split("-")[0])
    return (declared.summary if declared else results.Summary).from_dict(recorded)


def command(stage: str) -> str:
    """The `audit` command that produces `stage` (for "run this first" messages)."""
    return BY_NAME[stage].command if stage in BY_NAME else stage


def load(ref: str) -> Callable[..., Any]:
    """The function a "module:function" reference names, imported now (not at start-up)."""
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as e:
        raise AuditError(f"stage function {ref} cannot be loaded ({e}); reinstall audit.") from e
