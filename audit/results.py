"""Results that one module writes and another reads, as small dataclasses with named fields.

A reader takes the fields it needs by name instead of searching a dict for keys that look
right; the on-disk JSON keeps the writer's key names, so files written before stay readable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

# The experiment's per-duplication AUC keys: auc_x32_vs_heldout (and its _ci95).
_BY_COPIES = re.compile(r"auc_x(\d+)_vs_heldout")

Interval = tuple[float, float] | None


def _interval(v: Any) -> Interval:
    return (float(v[0]), float(v[1])) if isinstance(v, (list, tuple)) and len(v) == 2 else None


@dataclass(frozen=True)
class AUC:
    """A ROC AUC with its 95% bootstrap interval."""

    value: float
    ci95: Interval = None


@dataclass(frozen=True)
class MembershipInference:
    """Loss-based membership inference, as the memorisation experiment records it in
    `WS/memorisation/<name>/summary.json` under "membership_inference"."""

    members_vs_heldout: AUC
    members_vs_optedout: AUC | None = None
    by_copies: dict[int, AUC] = field(default_factory=dict)
    method: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MembershipInference:
        def auc(key: str) -> AUC | None:
            v = d.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                return None
            return AUC(float(v), _interval(d.get(f"{key}_ci95")))

        heldout = auc("auc_members_vs_heldout")
        if heldout is None:
            raise ValueError("membership_inference has no auc_members_vs_heldout")
        copies = {}
        for key in d:
            m = _BY_COPIES.fullmatch(key)
            if m and (a := auc(key)) is not None:
                copies[int(m.group(1))] = a
        return cls(
            heldout,
            auc("auc_members_vs_optedout"),
            dict(sorted(copies.items(), reverse=True)),
            str(d.get("method", "")),
        )


# -- stage summaries -----------------------------------------------------------------------------
# What each stage's entry function returns and records as its manifest "summary", typed: the
# fields the reports, the model card, the status page and `audit run --json` read. A stage's
# entry still records the full dict (the manifest keeps every detail, and files written
# before stay readable); `Stage.summary` (audit.stages) names the class that reads it, so a
# reader asks `stages.summary("hash", record)` and then uses `.hashed`, not `record["hashed"]`.
# Every field has a default: a manifest written by an older version, which lacks a field
# added since, still reads.


@dataclass(frozen=True)
class Summary:
    """A stage summary: `from_dict` takes the recorded dict's keys by field name (others are
    ignored), `to_dict` gives the fields back as JSON values."""

    @classmethod
    def from_dict(cls: type[_S], d: Mapping[str, Any] | None) -> _S:
        d = d or {}
        kw = {f.name: _field_value(f.type, d[f.name]) for f in fields(cls) if f.name in d}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    def scalars(self) -> dict[str, int | float | str | bool]:
        """The fields that are single numbers or short strings (for one-line summaries)."""
        return {
            f.name: v
            for f in fields(self)
            if isinstance(v := getattr(self, f.name), (int, float, str)) and len(str(v)) < 40
        }


_S = TypeVar("_S", bound=Summary)


def _field_value(kind: Any, v: Any) -> Any:
    # tuples, not lists, so that a frozen summary's fields cannot be changed in place either
    if isinstance(v, list) and "tuple" in str(kind):
        return tuple(v)
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, Summary):
        return v.to_dict()
    return v


Counts = dict[str, int]


@dataclass(frozen=True)
class IngestSummary(Summary):
    rows: int = 0
    images: Counts = field(default_factory=dict)  # ok / missing / error
    errors: Counts = field(default_factory=dict)  # per reason
    parts: int = 0
    inputs: int = 0
    resumed_parts: int = 0
    skipped: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class HashSummary(Summary):
    rows: int = 0
    hashed: int = 0
    errors: int = 0
    parts: int = 0
    resumed_parts: int = 0
    fast_decode: bool = True
    hashes: tuple[str, ...] = ()
    seconds: float = 0.0
    rows_per_second: float | None = None


@dataclass(frozen=True)
class EmbedSummary(Summary):
    rows: int = 0
    embedded: int = 0
    errors: int = 0
    dim: int = 0
    parts: int = 0
    resumed_parts: int = 0
    seconds: float = 0.0
    rows_per_second: float | None = None
    model: str = ""
    pretrained: str = ""
    trained: bool = False


@dataclass(frozen=True)
class IndexSummary(Summary):
    image_index: str | None = None
    image_vectors: int = 0
    recall_at_10: float | None = None
    hash_codes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class DedupSummary(Summary):
    clusters: int = 0
    rows_in_clusters: int = 0
    by_kind: Counts = field(default_factory=dict)  # exact / near_hash / near_embedding
    largest_cluster: int = 0
    rows: int = 0
    near_hash_pairs: int = 0
    candidate_pairs: int = 0
    verified_pairs: int | None = None
    rejected_pairs: int | None = None
    pixel_checks: int = 0
    verifier: str = ""
    # same URL / same caption: {"url": {"groups": n, "rows": n}, "caption": {...}}
    metadata: dict[str, Counts] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class RegistryRead(Summary):
    """One opt-out registry as `audit optout` read it."""

    path: str = ""
    domains: int = 0
    urls: int = 0
    url_prefixes: int = 0
    hosts: int = 0
    skipped: int = 0
    error: str | None = None


@dataclass(frozen=True)
class OptoutSummary(Summary):
    rows: int = 0
    decisions: dict[str, Counts] = field(default_factory=dict)  # use -> decision -> rows
    signals: dict[str, Any] = field(default_factory=dict)
    coverage: dict[str, Counts] = field(default_factory=dict)  # source -> state -> rows
    evaluable: tuple[str, ...] = ()
    registries: tuple[RegistryRead, ...] = ()
    registry_errors: tuple[str, ...] = ()
    cache: str | None = None
    not_consulted: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> OptoutSummary:
        s = super().from_dict(d)
        regs = tuple(RegistryRead.from_dict(r) for r in (d or {}).get("registries") or ())
        return replace(s, registries=regs)


@dataclass(frozen=True)
class ProvenanceSummary(Summary):
    rows: int = 0
    synthetic: int = 0
    unknown: int = 0
    by_mark: Counts = field(default_factory=dict)
    by_source_type: Counts = field(default_factory=dict)
    c2pa_states: Counts = field(default_factory=dict)
    trust_anchors: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class FilterSummary(Summary):
    out: str = ""
    use: str = ""
    kept_states: tuple[str, ...] = ()
    rows: int = 0
    kept: int = 0
    removed: int = 0
    by_decision: Counts = field(default_factory=dict)
    by_signal: Counts = field(default_factory=dict)
    synthetic_removed: int | None = None  # None: generated images were not excluded
    seconds: float = 0.0


@dataclass(frozen=True)
class BiasSummary(Summary):
    workspace: str = ""
    rows: int = 0
    captions: int = 0
    female_to_male_ratio: float | None = None
    domains: int = 0
    top10_domain_share: float | None = None
    probes: str = ""  # "run" or "skipped"
    report_dir: str | None = None
    pages: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainSummary(Summary):
    steps: int = 0
    images: int = 0
    rows: int = 0
    skipped: int = 0
    classes: int = 0
    final_loss: float | None = None
    seconds: float = 0.0
    steps_per_s: float | None = None
    budget_seconds: float | None = None
    device: str = ""
    precision: str = ""
    out: str = ""


@dataclass(frozen=True)
class GenerateSummary(Summary):
    images: int = 0
    out: str = ""
    sampler: str = ""
    steps: int = 0
    model_step: int = 0
    signer: str | None = None


@dataclass(frozen=True)
class MatchSummary(Summary):
    """`audit match`: the manifest's `match-<name>` summary, and the head of its summary.json."""

    generated: int = 0
    counts: Counts = field(default_factory=dict)  # copy / near / novel
    replication_rate: float | None = None
    # an end is None where the interval is unbounded (no copies among few images)
    replication_ci95: tuple[float | None, float | None] | None = None


@dataclass(frozen=True)
class CalibrateSummary(Summary):
    seed: int = 0
    counts: Counts = field(default_factory=dict)
    readable_rows: int = 0
    usable_sources: int = 0
    report: str = ""


@dataclass(frozen=True)
class FeaturesSummary(Summary):
    kind: str = ""
    descriptors: int = 0
    images: int = 0
    per_image: int = 0
    seconds: float = 0.0
    thumbnails: dict[str, Any] = field(default_factory=dict)  # kind, images, side


@dataclass(frozen=True)
class BiasGeneratedSummary(Summary):
    images: int = 0
    k: int = 0
    prompts: int = 0
    mean_tv_by_descriptor: dict[str, float] = field(default_factory=dict)
    report_dir: str | None = None
    pages: tuple[str, ...] = ()


@dataclass(frozen=True)
class CardSummary(Summary):
    out: str = ""
    model_details: bool = False
    bias: bool = False
    optout: bool = False
    filter: bool = False
    memorisation_results: int = 0
    license: str = ""
