"""`audit card`: one Hugging Face model card from the audit's fragments.

Merges, in the standard model-card section order (Hugging Face "Model Card" guidebook, after
Mitchell et al. 2019, "Model Cards for Model Reporting"):

- Model Details: `model_dir/config.json` of a model trained by `audit train` (hyperparameters,
  data fingerprint, step) and `training_rows.parquet` (how many rows it saw);
- Training Data: the bias report's fragment (`<bias_dir>/MODEL_CARD.fragment.md`) plus the
  workspace manifest's "optout" and "filter" stage summaries;
- Evaluation: memorisation results, `WS/memorisation/*/summary.json` (replication rate with its
  interval; membership-inference AUC when present);
- Bias, Risks, and Limitations: the bias fragment.

A part that is missing is written as "Not run" with the command that produces it, never left out.

Example:
    >>> from audit import cards
    >>> cards.build_model_card("indexes/sample", model_dir="models/sample", out="MODEL_CARD.md")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from audit import credentials
from audit.errors import AuditError
from audit.results import MembershipInference
from audit.workspace import Workspace, atomic_write_text, now

FRAGMENT = "MODEL_CARD.fragment.md"


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a markdown file with `---` YAML front matter (simple keys and lists)."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        return {}, text
    meta: dict[str, Any] = {}
    key = None
    for line in text[4:end].splitlines():
        if line.startswith("- ") and key is not None:
            if not isinstance(meta.get(key), list):
                meta[key] = []
            meta[key].append(_scalar(line[2:]))
        elif ":" in line and not line.startswith(" "):
            key, _, value = line.partition(":")
            key = key.strip()
            meta[key] = _scalar(value) if value.strip() else []
    return meta, text[end + 4 :].lstrip("\n")


def _scalar(value: str) -> Any:
    value = value.strip()
    try:
        return json.loads(value)
    except ValueError:
        return value


def front_matter(meta: dict[str, Any]) -> str:
    """YAML front matter; strings are JSON-quoted (valid YAML) when they need quoting."""
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, list):
            if not value:
                continue
            lines.append(f"{key}:")
            lines += [f"- {_yaml(v)}" for v in value]
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_yaml(v)}" for k, v in value.items()]
        elif value is not None:
            lines.append(f"{key}: {_yaml(value)}")
    return "\n".join(lines + ["---", ""])


def _yaml(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    return (
        s
        if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*", s)
        and s.lower() not in ("yes", "no", "true", "false", "null", "on", "off")
        else json.dumps(s)
    )


def sections(body: str) -> dict[str, str]:
    """`## Title` -> text, in order."""
    out: dict[str, str] = {}
    title = None
    for line in body.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            out[title] = ""
        elif title is not None:
            out[title] += line + "\n"
    return {k: v.strip() for k, v in out.items()}


def _fmt(v: Any, ci: Any = None) -> str:
    if v is None:
        return "n/a"
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" (95% CI {ci[0]:.4g}-{ci[1]:.4g})"
    return text


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict -> [("a.b", value)]."""
    if not isinstance(d, dict):
        return [(prefix.rstrip("."), d)]
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        out += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def _kv_lines(d: dict[str, Any], limit: int = 40) -> str:
    rows = [(k, v) for k, v in _flatten(d) if not isinstance(v, list) or len(v) <= 8][:limit]
    return "\n".join(
        f"- `{k}`: {json.dumps(v, default=str) if not isinstance(v, str) else v}" for k, v in rows
    )


PICTURES = (  # (file in the model folder, caption); copied next to the card as <model>_<file>
    ("samples.png", "samples of the trained model (EMA weights, DDPM sampler)"),
    ("training_images.png", "training images at the same resolution, for comparison"),
    ("loss.png", "training loss"),
)


def _pictures(model_dir: Path, card: Path) -> str:
    """Copy the model's pictures beside the card and return markdown that shows them."""
    import shutil

    lines = []
    for name, caption in PICTURES:
        src = model_dir / name
        if src.exists():
            dst = src  # a card inside the model folder links the files where they are
            if card.parent.resolve() != model_dir.resolve():
                dst = card.parent / f"{model_dir.name}_{name}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            lines.append(f"![{caption}]({dst.name})  \n*{caption}* (`{dst.name}`)")
    return "\n\n".join(lines)


def _model_details(model_dir: Path | None) -> tuple[str, dict[str, Any]]:
    if model_dir is None:
        return (
            "Not run: no model folder given (`audit card WS --model-dir models/NAME`; train with `audit train`).",
            {},
        )
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        return (
            f"Not run: {cfg_path} does not exist (train a model with `audit train WS --out {model_dir}`).",
            {},
        )
    cfg = json.loads(cfg_path.read_text("utf-8"))
    text = f"Model folder `{model_dir}`. Configuration (`config.json`):\n\n{_kv_lines(cfg)}"
    rows_path = Path(model_dir) / "training_rows.parquet"
    if rows_path.exists():
        import pyarrow.parquet as pq

        text += f"\n\nTrained on {pq.ParquetFile(rows_path).metadata.num_rows} rows (`training_rows.parquet`)."
    return text, cfg


def _consent(ws: Workspace) -> str:
    parts = []
    for stage, cmd in (
        ("optout", "audit optout WS"),
        ("filter", "audit filter WS --out consented.parquet"),
    ):
        rec = ws.stage(stage)
        if not rec or rec.get("status") != "done":
            parts.append(f"- `{stage}`: Not run (`{cmd}`).")
        else:
            parts.append(
                f"- `{stage}` (finished {rec.get('finished')}), parameters "
                f"{json.dumps(rec.get('params', {}), default=str)}:\n\n{_kv_lines(rec.get('summary', {}))}"
            )
    return "\n\n".join(parts)


def _memorisation(paths: list[Path]) -> tuple[str, dict[str, float]]:
    if not paths:
        return "Not run: no memorisation results (`audit match GENERATED --against WS`).", {}
    blocks: list[str] = []
    metrics: dict[str, float] = {}
    for p in paths:
        s = json.loads(p.read_text("utf-8"))
        name = p.parent.name
        lines = [
            f"### Memorisation check `{name}`",
            "",
            f"- Generated images checked: {_fmt(s.get('generated'))}",
            f"- Replication rate (verdict copy): {_fmt(s.get('replication_rate'), s.get('replication_ci95'))}",
        ]
        if "copy_or_near_rate" in s:
            lines.append(
                f"- Copy or near-copy rate: {_fmt(s['copy_or_near_rate'], s.get('copy_or_near_ci95'))}"
            )
        if "counts" in s:
            lines.append(f"- Verdict counts: {json.dumps(s['counts'])}")
        if "thresholds" in s:
            lines.append(f"- Thresholds: {json.dumps(s['thresholds'], default=str)}")
        if isinstance(s.get("membership_inference"), dict):
            mia = MembershipInference.from_dict(s["membership_inference"])
            aucs = [("members vs held-out", mia.members_vs_heldout)]
            if mia.members_vs_optedout is not None:
                aucs.append(("members vs opted-out", mia.members_vs_optedout))
            aucs += [(f"members copied x{c} vs held-out", a) for c, a in mia.by_copies.items()]
            for label, a in aucs:
                lines.append(f"- Membership-inference AUC, {label}: {_fmt(a.value, a.ci95)}")
            metrics[f"mia_auc_{name}"] = mia.members_vs_heldout.value
        if s.get("warning"):
            lines.append(f"- Warning: {s['warning']}")
        if isinstance(s.get("replication_rate"), (int, float)):
            metrics[f"replication_rate_{name}"] = s["replication_rate"]
        blocks.append("\n".join(lines))
    if not any(k.startswith("mia_auc_") for k in metrics):
        blocks.append("Membership inference: not run (`audit experiment memorisation`).")
    return "\n\n".join(blocks), metrics


def build_model_card(
    ws_root: str | os.PathLike[str],
    model_dir: str | os.PathLike[str] | None = None,
    bias_dir: str | os.PathLike[str] | None = None,
    memorisation_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write one model card (markdown with YAML front matter) and return what went in.

    Defaults: `bias_dir` = the report folder recorded by the workspace's "bias" stage, else
    `reports/<dataset>/bias`; `memorisation_dir` = `WS/memorisation`; `out` =
    `<model_dir>/MODEL_CARD.md`, else `reports/<dataset>/MODEL_CARD.md`.

    Example: `audit card indexes/sample --model-dir models/sample --out MODEL_CARD.md`
    """
    ws = Workspace.open(ws_root)
    model_dir = Path(model_dir) if model_dir is not None else None
    if model_dir is not None and not model_dir.is_dir():
        raise AuditError(
            f"--model-dir {model_dir} is not a folder. Pass the folder `audit train --out` wrote."
        )
    if bias_dir is None:
        recorded = ((ws.stage("bias") or {}).get("summary") or {}).get("report_dir")
        bias_dir = Path(recorded) if recorded else Path("reports") / ws.dataset / "bias"
    bias_dir = Path(bias_dir)
    mem_dir = Path(memorisation_dir) if memorisation_dir is not None else ws.path("memorisation")
    out = (
        Path(out)
        if out is not None
        else (
            model_dir / "MODEL_CARD.md"
            if model_dir
            else Path("reports") / ws.dataset / "MODEL_CARD.md"
        )
    )

    frag_path = bias_dir / FRAGMENT
    frag_meta, frag = (
        split_front_matter(frag_path.read_text("utf-8")) if frag_path.exists() else ({}, "")
    )
    frag_sections = sections(frag)
    details, cfg = _model_details(model_dir)
    if cfg and model_dir is not None:
        pictures = _pictures(model_dir, out)
        details += f"\n\n{pictures}" if pictures else ""
    mem_text, metrics = _memorisation(
        sorted(mem_dir.glob("*/summary.json")) if mem_dir.is_dir() else []
    )
    not_run_bias = f"Not run: no bias report in {bias_dir} (`audit bias {ws.root}`)."

    meta: dict[str, Any] = {
        "license": cfg.get("license", "other"),
        "library_name": "audit",
        "tags": ["audit", "image-generation", "diffusion", "dataset-audit"],
        "datasets": [ws.dataset],
        "language": frag_meta.get("language") or [],
        "metrics": sorted(metrics),
    }
    name = model_dir.name if model_dir else ws.dataset
    body = [
        f"# Model card: {name}",
        "",
        f"Built by `audit card` on {now()} from the audit of workspace `{ws.root}` (dataset `{ws.dataset}`). "
        "Every number below comes from an artefact of that audit; parts that were not run say so.",
        "",
        "## Model Details",
        "",
        details,
        "",
        "### How outputs are marked",  # EU AI Act Art. 50(2); see audit.credentials
        "",
        credentials.marking_statement(),
        "",
        "## Training Data",
        "",
        frag_sections.get("Training Data") or not_run_bias,
        "",
        "### Consent and opt-outs",
        "",
        _consent(ws),
        "",
        "## Evaluation",
        "",
        mem_text,
        "",
        "## Bias, Risks, and Limitations",
        "",
        frag_sections.get("Bias, Risks, and Limitations") or not_run_bias,
        "",
    ]
    if metrics:
        body += [
            "## Results summary",
            "",
            "\n".join(f"- `{k}`: {_fmt(v)}" for k, v in metrics.items()),
            "",
        ]
    atomic_write_text(out, front_matter(meta) + "\n".join(body))
    return {
        "out": str(out),
        "model_details": bool(cfg),
        "bias": bool(frag_sections),
        "optout": bool(ws.stage("optout")),
        "filter": bool(ws.stage("filter")),
        "memorisation_results": sum(1 for k in metrics if k.startswith("replication_rate")),
    }
