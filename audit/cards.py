"""`audit card`: one Hugging Face model card from the audit's results.

The card is built with `huggingface_hub`'s `ModelCard` / `ModelCardData`, so its metadata is
what the Hub reads: a licence id (or `other` with `license_name` and `license_link`),
`pipeline_tag: unconditional-image-generation`, and a `model-index` holding the results
the card reports (`EvalResult`s: replication rate, membership-inference AUC). A local dataset
is not a Hub id, so it stays out of `datasets:` and its provenance goes in the body.

Sections follow the Hugging Face model-card guidebook (after Mitchell et al. 2019) and stay
short enough to paste: Model Details (`config.json`, `training_rows.parquet` of a model
trained by `audit train`), Uses, Training Data (the bias report's fragment, and the consent
stages of the workspace manifest), Evaluation (`WS/memorisation/*/summary.json`), Bias, Risks,
and Limitations (the bias fragment). A part that was not run says so with the command that
runs it. Beside the card: `MODEL_CARD.html` (the same text as a report page) and the model's
pictures. No absolute path of the machine that built it appears anywhere.

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
from audit.reports import Section, fmt, path_scrubber, write_page
from audit.results import (
    BiasSummary,
    FilterSummary,
    MatchSummary,
    MembershipInference,
    OptoutSummary,
)
from audit.workspace import Workspace, atomic_write_text

FRAGMENT = "MODEL_CARD.fragment.md"
PIPELINE_TAG = "unconditional-image-generation"
TASK_NAME = "Unconditional image generation"

# Licence ids the Hub accepts in `license:` (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear
    c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0
    cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0
    cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl
    ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
    lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0
    odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
    deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma unknown other""".split()
)


def hub_license(url_or_id: str | None) -> str | None:
    """The Hub licence id for a licence URL or id from a `license` column, or None.

    Creative Commons URLs map by their path (`.../licenses/by-sa/4.0/` -> `cc-by-sa-4.0`);
    the CC public-domain dedication and CC0 map to `cc0-1.0`.
    """
    if not url_or_id:
        return None
    text = str(url_or_id).strip().lower()
    if text in HUB_LICENSES:
        return text
    if re.search(r"creativecommons\.org/(publicdomain/zero/1\.0|licenses/publicdomain)", text):
        return "cc0-1.0"
    m = re.search(r"creativecommons\.org/licenses/([a-z-]+)/(\d\.\d)", text)
    if m and f"cc-{m.group(1)}-{m.group(2)}" in HUB_LICENSES:
        return f"cc-{m.group(1)}-{m.group(2)}"
    return None


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a markdown file with `---` YAML front matter."""
    import yaml

    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        return {}, text
    return yaml.safe_load(text[4:end]) or {}, text[end + 4 :].lstrip("\n")


def sections(body: str) -> dict[str, str]:
    """`## Title` -> text, in order (### subsections stay inside their section)."""
    out: dict[str, str] = {}
    title = None
    for line in body.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            out[title] = ""
        elif title is not None:
            out[title] += line + "\n"
    return {k: v.strip() for k, v in out.items()}


PICTURES = (  # (file in the model folder, caption); copied next to the card as <model>_<file>
    ("samples.png", "samples of the trained model (EMA weights, DDPM sampler)"),
    ("training_images.png", "training images at the same resolution, for comparison"),
    ("loss.png", "training loss"),
)


def _pictures(model_dir: Path, card: Path) -> list[tuple[str, str]]:
    """Copy the model's pictures beside the card; (file name beside the card, caption)."""
    import shutil

    found = []
    for name, caption in PICTURES:
        src = model_dir / name
        if src.exists():
            dst = src  # a card inside the model folder links the files where they are
            if card.parent.resolve() != model_dir.resolve():
                dst = card.parent / f"{model_dir.name}_{name}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            found.append((dst.name, caption))
    return found


def _model_details(model_dir: Path | None, shown: Any) -> tuple[str, dict[str, Any]]:
    if model_dir is None:
        return (
            "Not run: no model folder given (`audit card WS --model-dir models/NAME`; "
            "train with `audit train`).",
            {},
        )
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        return (
            f"Not run: {shown(str(cfg_path))} does not exist "
            f"(train a model with `audit train WS --out {shown(str(model_dir))}`).",
            {},
        )
    cfg = json.loads(cfg_path.read_text("utf-8"))
    m, data = cfg.get("model") or {}, cfg.get("data") or {}
    res = m.get("resolution")
    facts = [
        (
            "Model type",
            "denoising diffusion probabilistic model (DDPM), a small UNet, trained from scratch",
        ),
        ("Resolution", f"{res}x{res} pixels, {m.get('channels', 3)} channels" if res else None),
        (
            "UNet",
            f"base width {m.get('base_channels')}, channel multipliers {m.get('channel_mults')}, "
            f"attention at {m.get('attention_resolution')}x{m.get('attention_resolution')}"
            if m
            else None,
        ),
        (
            "Noise schedule",
            f"{(cfg.get('schedule') or {}).get('beta_schedule')}, "
            f"{(cfg.get('schedule') or {}).get('timesteps')} steps"
            if cfg.get("schedule")
            else None,
        ),
        (
            "Training",
            f"{cfg.get('step', cfg.get('steps'))} steps, batch {cfg.get('batch_size')}, "
            f"learning rate {cfg.get('lr')}, EMA {cfg.get('ema_decay')}, precision {cfg.get('precision')}, "
            f"seed {cfg.get('seed')}",
        ),
        ("Conditioning", data.get("conditioning") or "none"),
        (
            "Training images",
            f"{data.get('images', data.get('rows'))} (images sha256 "
            f"`{str(data.get('images_sha256', ''))[:12]}`)"
            if data
            else None,
        ),
    ]
    text = "\n".join(f"- **{k}:** {v}" for k, v in facts if v)
    text += (
        f"\n\nEvery hyperparameter and the training data's fingerprint are in `config.json` "
        f"of the model folder (`{shown(str(model_dir))}`)."
    )
    return text, cfg


def _consent(ws: Workspace) -> str:
    rec, filt = ws.stage("optout"), ws.stage("filter")
    if not rec or rec.get("status") != "done":
        return "Opt-outs: not run (`audit optout WS`); the model may include images their creators reserved."
    s = OptoutSummary.from_dict(rec.get("summary"))
    regs = ", ".join(Path(r.path).name for r in s.registries) or "none"
    lines = [
        f"`audit optout` read every machine-readable reservation it could for the {s.rows} rows: "
        f"opt-out registries ({regs}), {'a crawl cache of' if s.cache else 'no crawl cache, so not'} "
        "HTTP headers, HTML meta, robots.txt, ai.txt and TDMRep, and XMP/C2PA in the image files."
    ]
    for use, by_state in s.decisions.items():
        lines.append(f"- {use}: " + ", ".join(f"{k} {v}" for k, v in by_state.items()))
    if filt and filt.get("status") == "done":
        f = FilterSummary.from_dict(filt.get("summary"))
        by_signal = ", ".join(f"{k} {v}" for k, v in f.by_signal.items())
        lines.append(
            f"\n`audit filter` kept {f.kept} of {f.rows} rows for {f.use} and "
            f"removed {f.removed}"
            + (f" (deciding signal: {by_signal})" if by_signal else "")
            + "; the model trains only on the kept rows."
        )
    else:
        lines.append("\nConsented subset: not made (`audit filter WS --out consented.parquet`).")
    return "\n".join(lines)


def _memorisation(paths: list[Path], dataset: str) -> tuple[str, list[Any]]:
    """Evaluation text and the `EvalResult`s that go into `model-index`."""
    if not paths:
        return "Not run: no memorisation results (`audit match GENERATED --against WS`).", []
    rows, results, auc_lines = [], [], []
    for p in paths:
        s = json.loads(p.read_text("utf-8"))
        name = p.parent.name
        m = MatchSummary.from_dict(s)
        rate = m.replication_rate
        rows.append(
            f"| {name} | {m.generated} | {m.counts.get('copy', 0)} | {m.counts.get('near', 0)} | "
            f"{fmt(rate, m.replication_ci95, True)} |"
        )

        if isinstance(rate, (int, float)):
            results.append(
                _result(dataset, name, "replication_rate", "Replication rate (%)", 100 * rate)
            )
        if isinstance(s.get("membership_inference"), dict):
            mia = MembershipInference.from_dict(s["membership_inference"])
            aucs = [("members vs held-out", "heldout", mia.members_vs_heldout)]
            if mia.members_vs_optedout is not None:
                aucs.append(("members vs opted-out", "optedout", mia.members_vs_optedout))
            aucs += [
                (f"members copied x{c} vs held-out", f"x{c}_heldout", a)
                for c, a in mia.by_copies.items()
            ]
            for label, key, a in aucs:
                auc_lines.append(f"- Membership inference ({label}), AUC: {fmt(a.value, a.ci95)}")
                results.append(
                    _result(
                        dataset,
                        name,
                        f"mia_auc_{key}",
                        f"Membership-inference AUC ({label})",
                        a.value,
                    )
                )
    text = (
        "Generated images matched against the training images (`audit match`): copy = a near-exact "
        "reproduction by the tiled l2 distance of Carlini et al. (2023) or pHash; near = a close variant. "
        "Rates are percentages of generated images with a 95% interval in brackets.\n\n"
        "| check | generated | copies | near copies | replication rate |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    text += "\n\n" + (
        "\n".join(auc_lines)
        if auc_lines
        else "Membership inference: not run (`audit experiment memorisation`)."
    )
    return text, results


def _result(dataset: str, check: str, metric: str, label: str, value: float) -> Any:
    """One `model-index` entry: the task, the (local) dataset it was measured on, the metric."""
    from huggingface_hub import EvalResult

    return EvalResult(
        task_type=PIPELINE_TAG,
        task_name=TASK_NAME,
        dataset_type=dataset,
        dataset_name=f"{dataset} (training set, memorisation check {check})",
        metric_type=metric,
        metric_name=label,
        metric_value=round(float(value), 4),
    )


def _license(meta_license: str | None, fig: dict[str, Any] | None) -> tuple[dict[str, str], str]:
    """(license metadata, the card's License section)."""
    if meta_license:
        if meta_license not in HUB_LICENSES:
            raise AuditError(
                f"--license {meta_license} is not a Hub licence id; use one of "
                "https://huggingface.co/docs/hub/repositories-licenses (e.g. apache-2.0, cc-by-4.0)."
            )
        return {"license": meta_license}, f"Licence chosen by the card's author: `{meta_license}`."
    licences = (fig or {}).get("sources", {}).get("licenses") or []
    listed = ", ".join(f"{x['license']} {fmt(x['share'], None, True)}" for x in licences[:5])
    ids = {hub_license(x["license"]) for x in licences}
    if len(licences) >= 1 and len(ids) == 1 and None not in ids:
        lic = str(ids.pop())
        return {"license": lic}, (
            f"`{lic}`: every training row carries this licence ({listed}). The weights are a work "
            "derived from those images; check the terms before publishing, or choose one with "
            "`audit card --license ID`."
        )
    return (
        {"license": "other", "license_name": "training-data-terms", "license_link": "LICENSE.md"},
        "Not chosen: the training images carry "
        + (f"several licences ({listed})" if listed else "no recorded licence")
        + ", listed in `LICENSE.md` beside this card. Choose one with `audit card --license ID`.",
    )


def build_model_card(
    ws_root: str | os.PathLike[str],
    model_dir: str | os.PathLike[str] | None = None,
    bias_dir: str | os.PathLike[str] | None = None,
    memorisation_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    license: str | None = None,
) -> dict[str, Any]:
    """Write one model card (`MODEL_CARD.md` with Hub metadata, and `.html`) and return what went in.

    Defaults: `bias_dir` = the report folder recorded by the workspace's "bias" stage, else
    `<reports>/bias`; `memorisation_dir` = `WS/memorisation`; `out` = `<model_dir>/MODEL_CARD.md`,
    else `<reports>/MODEL_CARD.md` (`<reports>` = `audit.reports.default_dir`). `license` is a
    Hub licence id; without it the training images' licence is used when they share one.

    Example: `audit card indexes/sample --model-dir models/sample --out MODEL_CARD.md`
    """
    from huggingface_hub import ModelCard, ModelCardData

    from audit.reports import default_dir

    ws = Workspace.open(ws_root)
    model_dir = Path(model_dir) if model_dir is not None else None
    if model_dir is not None and not model_dir.is_dir():
        raise AuditError(
            f"--model-dir {model_dir} is not a folder. Pass the folder `audit train --out` wrote."
        )
    if bias_dir is None:
        recorded = BiasSummary.from_dict((ws.stage("bias") or {}).get("summary")).report_dir
        bias_dir = Path(recorded) if recorded else default_dir(ws) / "bias"
    bias_dir = Path(bias_dir)
    mem_dir = Path(memorisation_dir) if memorisation_dir is not None else ws.path("memorisation")
    out = Path(out) if out is not None else (model_dir or default_dir(ws)) / "MODEL_CARD.md"
    shown = path_scrubber(out.parent)

    frag_path = bias_dir / FRAGMENT
    frag_meta, frag = (
        split_front_matter(frag_path.read_text("utf-8")) if frag_path.exists() else ({}, "")
    )
    frag_sections = sections(frag)
    fig_path = bias_dir / "bias.json"
    fig = json.loads(fig_path.read_text("utf-8")) if fig_path.exists() else None
    details, cfg = _model_details(model_dir, shown)
    pictures = _pictures(model_dir, out) if cfg and model_dir is not None else []
    mem_text, results = _memorisation(
        sorted(mem_dir.glob("*/summary.json")) if mem_dir.is_dir() else [], ws.dataset
    )
    license_meta, license_text = _license(license, fig)
    not_run_bias = f"Not run: no bias report in {shown(str(bias_dir))} (`audit bias WS`)."
    res = (cfg.get("model") or {}).get("resolution")
    name = model_dir.name if model_dir else "model"
    title = (
        f"{name}: a {res}x{res} diffusion model trained on `{ws.dataset}`"
        if res
        else f"Model trained on `{ws.dataset}`"
    )
    inputs = ws.manifest.get("inputs", [])
    provenance = (
        f"Dataset `{ws.dataset}` is local (not on the Hugging Face Hub): {ws.num_rows} rows ingested by "
        f"`audit ingest` from {len(inputs)} input file(s) ("
        + ", ".join(
            f"`{Path(i['path']).name}` sha256 `{str(i.get('sha256', ''))[:12]}`" for i in inputs[:4]
        )
        + ")."
    )
    body = [
        Section("Model Details", details, images=pictures),
        # EU AI Act Art. 50(2); see audit.credentials
        Section("How outputs are marked", credentials.marking_statement(), level=3),
        Section(
            "Uses",
            "Research on dataset auditing and memorisation: a small model whose training data, consent "
            "decisions and copies are all on record. Not for producing images for publication: at this "
            "size and training length its samples are low-resolution and may reproduce training images "
            "(see Evaluation).",
        ),
        Section(
            "Training Data",
            provenance
            + "\n\n"
            + (frag_sections.get("Training Data") or not_run_bias)
            + "\n\n### Consent and opt-outs\n\n"
            + _consent(ws),
        ),
        Section("Evaluation", mem_text),
        Section(
            "Bias, Risks, and Limitations",
            frag_sections.get("Bias, Risks, and Limitations") or not_run_bias,
        ),
        Section("License", license_text),
    ]
    summary = (
        f"Built by `audit card` from the audit of dataset `{ws.dataset}`. Every number comes from an "
        "artefact of that audit (workspace manifest, bias report, memorisation results); parts that "
        "were not run say so. Intervals are 95% intervals, in brackets."
    )
    langs = frag_meta.get("language") or None
    data = ModelCardData(
        model_name=name,
        pipeline_tag=PIPELINE_TAG,
        tags=["audit", "diffusion", "ddpm", "pytorch", "safetensors", "dataset-audit"],
        language=langs,
        eval_results=results or None,
        license=license_meta["license"],
        license_name=license_meta.get("license_name"),
        license_link=license_meta.get("license_link"),
    )
    card = ModelCard.from_template(
        data,
        template_path=str(Path(__file__).parent / "reports" / "templates" / "model_card.md.j2"),
        title=title,
        summary=summary,
        sections=[{"title": s.title, "text": _section_md(s), "level": s.level} for s in body],
    )
    text = shown(str(card))
    # The HTML page first (it renders the same sections), then the Hub's markdown over its .md.
    write_page(out.parent, out.stem, title, body, summary)
    atomic_write_text(out, text)
    if license_meta.get("license_link") == "LICENSE.md":
        atomic_write_text(out.parent / "LICENSE.md", _license_file(fig))
    return {
        "out": str(out),
        "model_details": bool(cfg),
        "bias": bool(frag_sections),
        "optout": bool(ws.stage("optout")),
        "filter": bool(ws.stage("filter")),
        "memorisation_results": sum(1 for r in results if r.metric_type == "replication_rate"),
        "license": license_meta["license"],
    }


def _section_md(s: Section) -> str:
    pics = "\n\n".join(f"![{caption}]({src})" for src, caption in s.images)
    return s.text + (f"\n\n{pics}" if pics else "")


def _license_file(fig: dict[str, Any] | None) -> str:
    licences = (fig or {}).get("sources", {}).get("licenses") or []
    lines = [
        "# Training-data terms",
        "",
        "No licence was chosen for these weights. They were trained on images under the terms below",
        "(the `license` column of the training data, share of rows); choose a licence compatible with",
        "them, e.g. `audit card WS --license cc-by-4.0`.",
        "",
    ]
    lines += [f"- {x['license']}: {fmt(x['share'], None, True)}" for x in licences] or [
        "- (no licence recorded)"
    ]
    return "\n".join(lines) + "\n"
