"""Render the bias figures (computed by `audit.checks.bias` / `bias_generated`) as pages.

Writes, under the report folder (default `reports/<dataset>/bias/`): `bias.md`, a
self-contained `bias.html`, `bias.json` (every figure), PNG plots, and
`MODEL_CARD.fragment.md` (Hugging Face model-card sections "Training Data" and "Bias, Risks,
and Limitations" with YAML front matter) that `audit card` merges. Generated-image reports
go to `bias_generated.{md,html,json}` beside them. Nothing here computes a new figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.reports import Section, fmt, save_figure, scrubbed, write_page
from audit.results import FilterSummary
from audit.workspace import atomic_write_json, atomic_write_text

FRAGMENT = "MODEL_CARD.fragment.md"


def _minimums(fig: dict[str, Any]) -> tuple[int, int]:
    """(fewest captions a share is read from, fewest co-occurrences for a PMI), as recorded."""
    b = fig.get("bootstrap", {})
    return int(b.get("min_n", 10)), int(b.get("pmi_min_count", 5))


def _share(value: Any, ci: Any, n: int | None, min_n: int, too_few: bool | None = None) -> str:
    """A share as a percentage with its interval, or "too few" when `n` is below the minimum."""
    if too_few if too_few is not None else (n is not None and n < min_n):
        return f"too few ({n}; under {min_n})"
    return fmt(value, ci, True)


def _pmi(o: dict[str, Any], side: str, min_count: int) -> str:
    if o.get(f"pmi_{side}_too_few"):
        return f"too few ({o[f'with_{side}']}; under {min_count})"
    return fmt(o[f"pmi_{side}"], o.get(f"pmi_{side}_ci95"))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(
    path: Path,
    labels: list[str],
    values: list[float | None],
    cis: list[Any],
    title: str,
    xlabel: str,
    ref: float | None = None,
) -> Path:
    plt = _plt()
    import numpy as np

    vals = np.array([v if v is not None else np.nan for v in values], dtype=float)
    lo = np.array(
        [
            v - c[0] if c and c[0] is not None and v is not None else 0
            for v, c in zip(values, cis, strict=False)
        ]
    )
    hi = np.array(
        [
            c[1] - v if c and c[1] is not None and v is not None else 0
            for v, c in zip(values, cis, strict=False)
        ]
    )
    lo, hi = np.clip(lo, 0, None), np.clip(hi, 0, None)  # float noise at the interval ends
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, vals, xerr=[lo, hi], color="#5b8fc9", ecolor="#333", capsize=2)
    ax.set_yticks(y, labels)
    if ref is not None:
        ax.axvline(ref, color="#c0392b", lw=1, ls="--")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    return save_figure(fig, path)


def _hist(path: Path, hist: dict[str, list], title: str, xlabel: str, logx: bool = False) -> Path:
    plt = _plt()
    import numpy as np

    edges = np.array(hist["edges"])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(
        edges[:-1],
        hist["counts"],
        width=np.diff(edges),
        align="edge",
        color="#7aa974",
        edgecolor="white",
    )
    if logx:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        # a few major ticks in plain numbers; minor ticks unlabeled (labelled they overlap)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=0, labelsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return save_figure(fig, path)


# -- the dataset report ------------------------------------------------------------------------
def write_dataset_report(fig: dict[str, Any], report_dir: str | Path) -> list[Path]:
    """Write bias.md/.html/.json, the PNG plots and MODEL_CARD.fragment.md; returns their paths."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the report folder is read elsewhere: no absolute path of this machine in its JSON either
    atomic_write_json(out / "bias.json", scrubbed(fig, out, "bias"))
    sections = [
        _gender_section(fig, out),
        _occupation_section(fig, out),
        _identity_section(fig),
        _sources_section(fig, out),
        _language_section(fig),
        _images_section(fig, out),
        _probes_section(fig),
        _context_section(fig),
        _method_section(fig),
        Section("Limits", "\n".join(f"- {x}" for x in fig["limits"])),
    ]
    intro = (
        f"Dataset `{fig['dataset']}`: {fig['rows']} rows, {fig['captions']['captions']} non-empty captions. "
        "Every figure has a 95% interval in brackets: Wilson score intervals for shares, percentile "
        f"bootstrap ({fig['bootstrap']['reps']} resamples) for ratios, PMI and concentration. "
        "Words in captions describe how images were labelled on the web, not who is in them."
    )
    md = write_page(out, "bias", f"Bias report: {fig['dataset']}", sections, intro)
    frag = out / FRAGMENT
    atomic_write_text(frag, model_card_fragment(fig))
    return [md, out / "bias.html", out / "bias.json", frag]


def _gender_section(fig: dict[str, Any], out: Path) -> Section:
    g = fig["captions"]["gender"]
    groups = g["captions_with_term"]
    ratio, fshare = g["female_to_male_ratio"], g["female_share_of_gendered"]
    text = (
        f"Captions with a female term: {fmt(groups['female']['share'], groups['female']['ci95'], True)}; "
        f"male: {fmt(groups['male']['share'], groups['male']['ci95'], True)}; "
        f"non-binary: {fmt(groups['nonbinary']['share'], groups['nonbinary']['ci95'], True)}.\n\n"
        f"Female-to-male ratio of captions: {fmt(ratio['value'], ratio['ci95'])} "
        f"({ratio['female_captions']} vs {ratio['male_captions']}); female share of gendered mentions: "
        f"{_share(fshare['value'], fshare['ci95'], fshare.get('gendered_mentions'), _minimums(fig)[0], fshare.get('too_few'))} (parity = 50%)."
    )
    img = _bars(
        out / "bias_gender.png",
        list(groups),
        [v["share"] for v in groups.values()],
        [v["ci95"] for v in groups.values()],
        "Captions mentioning a gendered term",
        "share of captions",
    )
    table = [
        {
            "term": t["term"],
            "group": t["group"],
            "captions": t["captions"],
            "share": fmt(t["share"], t["ci95"], True),
        }
        for t in g["terms"]
    ]
    return Section(
        "Captions: gendered terms", text, table, [(img.name, "share of captions per group, 95% CI")]
    )


def _occupation_section(fig: dict[str, Any], out: Path) -> Section:
    occ = fig["captions"]["occupations"]
    min_n, min_count = _minimums(fig)
    text = (
        "Occupation terms (U.S. SOC titles) and the gendered terms in the same caption. "
        "Female share = captions with a female term / (with female + with male). "
        "PMI in nats: > 0 the occupation appears with the gender more often than chance. "
        f"Shares of fewer than {min_n} gendered mentions and PMI from fewer than "
        f"{min_count} co-occurrences are too few to read and are not given."
    )
    if not occ:
        return Section(
            "Captions: occupations and gender", text + "\n\nNo occupation terms were found."
        )
    table = [
        {
            "occupation": o["occupation"],
            "captions": o["captions"],
            "with female": o["with_female"],
            "with male": o["with_male"],
            "female share": _share(
                o["female_share_of_gendered"],
                o.get("female_share_ci95"),
                o["with_female"] + o["with_male"],
                min_n,
            ),
            "PMI female": _pmi(o, "female", min_count),
            "PMI male": _pmi(o, "male", min_count),
        }
        for o in occ[:30]
    ]
    shown = [o for o in occ if o["with_female"] + o["with_male"] >= min_n][:25]
    images = []
    if shown:
        img = _bars(
            out / "bias_occupations.png",
            [o["occupation"] for o in shown],
            [o["female_share_of_gendered"] for o in shown],
            [o.get("female_share_ci95") for o in shown],
            f"Female share of gendered mentions (occupations with >= {min_n})",
            "female share",
            ref=0.5,
        )
        images.append(
            (img.name, "female share of gendered mentions per occupation, 95% CI; dashed = parity")
        )
    return Section("Captions: occupations and gender", text, table, images)


def _identity_section(fig: dict[str, Any]) -> Section:
    ident = fig["captions"]["identity"]
    table = [
        {"category": c, "captions": v["captions"], "share": fmt(v["share"], v["ci95"], True)}
        for c, v in ident["categories"].items()
    ]
    terms = ", ".join(f"{t['term']} ({t['captions']})" for t in ident["terms"][:20])
    return Section(
        "Captions: other identity terms",
        "Captions mentioning at least one term of each category (audit/data/wordlists/identity.tsv)."
        + (f"\n\nMost frequent terms: {terms}." if terms else "\n\nNo identity terms were found."),
        table or None,
    )


def _sources_section(fig: dict[str, Any], out: Path) -> Section:
    s = fig["sources"]
    c = s["concentration"]
    text = f"{s['rows']} URLs, {s['malformed_urls']} malformed, {s['hosts']} hosts, {s['domains']} registrable domains."
    images = []
    if c.get("rows"):
        text += (
            f"\n\nConcentration: the top domain holds {fmt(c['top1_share']['value'], c['top1_share']['ci95'], True)}, "
            f"the top 10 {fmt(c['top10_share']['value'], c['top10_share']['ci95'], True)}, the top 100 "
            f"{fmt(c['top100_share']['value'], c['top100_share']['ci95'], True)} of rows; Gini over domains "
            f"{fmt(c['gini']['value'], c['gini']['ci95'])} (0 = even, near 1 = a few domains hold most rows)."
        )
        plt = _plt()
        f, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0] + c["lorenz"]["domain_share"], [0] + c["lorenz"]["row_share"], color="#5b8fc9")
        ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=1)
        ax.set_xlabel("share of domains (smallest first)")
        ax.set_ylabel("share of rows")
        ax.set_title(f"Lorenz curve, Gini {c['gini']['value']:.2f}", fontsize=10)
        images.append(
            (
                save_figure(f, out / "bias_lorenz.png").name,
                "Lorenz curve of rows over registrable domains",
            )
        )
    cc = s["cctld_share"]
    text += (
        f"\n\nCountry-code TLDs cover {fmt(cc['share'], None, True)} of rows ({cc['rows_with_generic_use_cctld']} "
        "of them on ccTLDs sold for generic use such as .io/.co/.tv). Licences (the `license` column): "
        + (
            ", ".join(f"{x['license']} {fmt(x['share'], None, True)}" for x in s["licenses"][:8])
            or "column absent"
        )
        + "."
    )
    table = [
        {"domain": d["domain"], "rows": d["rows"], "share": fmt(d["share"], d["ci95"], True)}
        for d in s["top_domains"]
    ]
    countries = "; ".join(
        f"{x['country']} {fmt(x['share'], None, True)}" for x in s["countries"][:12]
    )
    text += f"\n\nBy TLD country: {countries}."
    return Section("Where the data comes from", text, table, images)


def _language_section(fig: dict[str, Any]) -> Section:
    lang = fig["language"]
    text = (
        f"Identifier: {lang['identifier']}; {lang['captions_identified']} captions identified (one row in "
        f"{lang['sample_stride']}); {lang['short_captions']} of them have fewer than 3 words, where "
        "identification is unreliable."
    )
    if lang.get("agreement"):
        a = lang["agreement"]
        text += (
            f"\n\nAgreement with the `language` column: {fmt(a['share'], a['ci95'], True)} of {a['compared']} "
            "captions. Most frequent disagreements (declared -> detected): "
            + ", ".join(
                f"{d['declared']}->{d['detected']} ({d['captions']})"
                for d in lang["disagreements"][:8]
            )
            + "."
        )
    else:
        text += "\n\nNo `language` column with values: nothing to compare."
    table = [
        {
            "language": x["language"],
            "captions": x["captions"],
            "share": fmt(x["share"], x["ci95"], True),
        }
        for x in lang.get("languages", lang["detected"])
    ]
    src = lang.get("languages_from")
    if src and src["language column"]:
        text += (
            f"\n\nThe table takes each row's `language` column where it has one "
            f"({src['language column']} captions) and the identifier for the rest ({src['identifier']})."
        )
    return Section("Language of captions", text, table)


def _images_section(fig: dict[str, Any], out: Path) -> Section:
    im = fig["images"]
    images, table = [], []
    text = f"{im['rows_with_size']} rows with a known size, {im['rows_without_size']} without."
    ds = im.get("declared_sizes") or {}
    if ds.get("compared"):
        text += (
            f" Sizes are the decoded ones; the declared width/height contradict them in "
            f"{ds['contradict']} of {ds['compared']} rows ({fmt(ds['contradict_share'], None, True)})"
            + (f", {ds['swapped']} of those with width and height swapped" if ds["swapped"] else "")
            + "."
        )
    if im["rows_with_size"]:
        for key in ("width", "height", "aspect", "megapixels"):
            table.append({"measure": key, **{k: round(v, 3) for k, v in im[key].items()}})
        text += (
            "\n\n"
            + "; ".join(f"{k}: {fmt(v['share'], v['ci95'], True)}" for k, v in im["shapes"].items())
            + "."
        )
        images.append(
            (
                _hist(out / "bias_width.png", im["width_hist"], "Image width", "pixels", True).name,
                "widths",
            )
        )
        images.append(
            (
                _hist(
                    out / "bias_aspect.png", im["aspect_hist"], "Aspect ratio (w/h)", "w/h", True
                ).name,
                "aspect ratios",
            )
        )
    for name, sc in im["scores"].items():
        ab = sc["above"]
        text += (
            f"\n\n`{name}`: {sc['rows']} rows, median {sc['quantiles']['p50']:.3g}, share above "
            f"{ab['threshold']}: {fmt(ab['share'], ab['ci95'], True)}."
        )
        images.append(
            (
                _hist(out / f"bias_{name}.png", sc["hist"], name, "score").name,
                f"{name} distribution",
            )
        )
    if im["scores_absent"]:
        text += "\n\nNo values for: " + ", ".join(f"`{s}`" for s in im["scores_absent"]) + "."
    return Section("Image properties", text, table or None, images)


def _probes_section(fig: dict[str, Any]) -> Section:
    p = fig["probes"]
    prompts = "\n".join(
        f"- {group}: " + "; ".join(f'"{t}"' for t in texts) for group, texts in p["prompts"].items()
    )
    head = (
        "Zero-shot CLIP prompts describing perceived presentation only, never identity; they inherit the "
        "model's own biases. Prompts used:\n\n" + prompts
    )
    if "skipped" in p:
        return Section("Perceived-attribute probes", f"Skipped: {p['skipped']}.\n\n{head}")
    table = [
        {
            "probe": name,
            "prompt": r["prompt"],
            "images": r["images"],
            "share": fmt(r["share"], r["ci95"], True),
        }
        for name, rows in p["probes"].items()
        for r in rows
    ]
    text = (
        f"{head}\n\n{p['images_with_person']} of {p['images']} images pass the person gate "
        f"(model {p['model'].get('model')} / {p['model'].get('pretrained')})."
    )
    return Section("Perceived-attribute probes", text, table)


def _context_section(fig: dict[str, Any]) -> Section:
    o, d = fig["optout"], fig["duplicates"]
    parts = []
    if o["present"]:
        for use, dec in o["decisions_by_use"].items():
            total = sum(dec.values())
            parts.append(
                f"Opt-outs, {use}: "
                + ", ".join(f"{k} {v} ({fmt(v / total, None, True)})" for k, v in dec.items())
                + ". Not allowed, by domain: "
                + (
                    ", ".join(f"{x['domain']} {x['rows']}" for x in o["not_allowed_by_domain"][use])
                    or "none"
                )
                + "."
            )
        recorded = (o.get("filter") or {}).get("summary")
        if recorded:
            f = FilterSummary.from_dict(recorded)
            parts.append(
                f"`audit filter` kept {f.kept} of {f.rows} rows for {f.use}"
                f" and removed {f.removed}"
                + (
                    " (" + ", ".join(f"{k} {v}" for k, v in f.by_decision.items()) + ")"
                    if f.by_decision
                    else ""
                )
                + "."
            )
    else:
        parts.append(f"Opt-outs: {o['note']}.")
    if d["present"]:
        parts.append(
            f"Duplicates: {d['rows_in_clusters']} rows in {d['clusters']} clusters; keeping one per cluster removes "
            f"{d['removable_if_one_kept']} rows ({fmt(d['removable_share'], d.get('removable_share_ci95'), True)}). "
            "Largest clusters: "
            + ", ".join(str(x) for x in d["largest_clusters"])
            + f" rows; the top 10 clusters hold "
            f"{fmt(d['top10_clusters_share_of_duplicated_rows'], None, True)} of duplicated rows; Gini over cluster sizes "
            f"{fmt(d['gini_cluster_sizes'])}. By kind: "
            + ", ".join(f"{k} {v}" for k, v in d["by_kind"].items())
            + ". Domains of duplicated rows: "
            + ", ".join(f"{x['domain']} {x['rows']}" for x in d["domains_of_duplicated_rows"])
            + "."
        )
    else:
        parts.append(f"Duplicates: {d['note']}.")
    return Section("Opt-outs and duplicates", "\n\n".join(parts))


def _method_section(fig: dict[str, Any]) -> Section:
    text = (
        "Captions are lower-cased and split into letter-only words; a term matches whole words "
        "(multi-word terms as word sequences; occupation plurals generated). Counts are of captions, not "
        f"occurrences. Intervals: {fig['bootstrap']['method']}, {fig['bootstrap']['reps']} resamples, seeded. "
        "Domains: Public Suffix List (offline copy from the publicsuffixlist package). Word lists:"
    )
    table = [dict(w) for w in fig["wordlists"]]
    return Section("Method and word lists", text, table)


def model_card_fragment(fig: dict[str, Any]) -> str:
    """Hugging Face model-card sections from the dataset figures, with YAML front matter."""
    g = fig["captions"]["gender"]
    s, lang = fig["sources"], fig["language"]
    c = s["concentration"]
    # front matter: languages of at least 5% of captions (the identifier misfires on a few short ones)
    langs = [
        x["language"] for x in lang.get("languages", lang["detected"])[:5] if x["share"] >= 0.05
    ]
    occ = [o for o in fig["captions"]["occupations"] if o["with_female"] + o["with_male"] >= 5]
    skew = sorted(
        occ, key=lambda o: abs((o["female_share_of_gendered"] or 0.5) - 0.5), reverse=True
    )[:5]
    top = ", ".join(f"{d['domain']} ({fmt(d['share'], None, True)})" for d in s["top_domains"][:5])
    front = (
        ["---", "datasets:", f"- {json.dumps(fig['dataset'])}", "language:"]
        + [f"- {x}" for x in langs]
        + ["tags:", "- audit", "- bias-report", "---", ""]
    )
    training = [
        "## Training Data",
        "",
        f"Dataset `{fig['dataset']}`: {fig['rows']} image-text rows from {s['domains']} registrable domains "
        f"({s['hosts']} hosts). "
        + (
            f"The top 10 domains hold {fmt(c.get('top10_share', {}).get('value'), c.get('top10_share', {}).get('ci95'), True)} of rows"
            if s["domains"] > 10
            else "By share of rows"
        )
        + f"; largest: {top or 'n/a'}.",
        "Caption languages (py3langid): "
        + ", ".join(f"{x['language']} {fmt(x['share'], None, True)}" for x in lang["detected"][:5])
        + ".",
        "Licences: "
        + (
            ", ".join(f"{x['license']} {fmt(x['share'], None, True)}" for x in s["licenses"][:5])
            or "not recorded"
        )
        + ".",
    ]
    if fig["duplicates"]["present"]:
        d = fig["duplicates"]
        training.append(
            f"Duplicates: {d['rows_in_clusters']} rows in {d['clusters']} clusters "
            f"({d['removable_if_one_kept']} removable by keeping one per cluster)."
        )
    groups = g["captions_with_term"]
    risks = [
        "",
        "## Bias, Risks, and Limitations",
        "",
        f"- Captions mentioning female terms: {fmt(groups['female']['share'], groups['female']['ci95'], True)}; male: "
        f"{fmt(groups['male']['share'], groups['male']['ci95'], True)}; female-to-male ratio "
        f"{fmt(g['female_to_male_ratio']['value'], g['female_to_male_ratio']['ci95'])} (95% intervals).",
    ]
    if skew:
        risks.append(
            "- Most gender-skewed occupations in captions (female share of gendered mentions): "
            + "; ".join(
                f"{o['occupation']} {fmt(o['female_share_of_gendered'], o.get('female_share_ci95'), True)}"
                for o in skew
            )
            + "."
        )
    risks.append(
        f"- Source concentration: Gini over domains {fmt(c.get('gini', {}).get('value'), c.get('gini', {}).get('ci95'))}; "
        f"{fmt(s['cctld_share']['share'], None, True)} of rows on country-code TLDs."
    )
    p = fig["probes"]
    risks.append(
        "- Perceived-attribute probes: "
        + (
            f"not run ({p['skipped']})."
            if "skipped" in p
            else f"run on {p['images_with_person']} images with a person (see bias report)."
        )
    )
    risks += [f"- {x}" for x in fig["limits"]]
    risks += [
        "",
        "Full figures: `bias.md` / `bias.json` in the bias report folder (made by `audit bias`).",
        "",
    ]
    paragraphs = [line for t in training for line in (t, "")]  # one paragraph per statement
    return "\n".join(front + paragraphs + risks)


# -- the generated-image report ----------------------------------------------------------------
GENERATED_LIMITS = [
    "Clusters are regions of the embedding space, not demographic groups; nobody's gender or ethnicity is inferred.",
    "A difference between descriptors shows that the prompt word changes what is generated, not which group the output depicts.",
    "With a few seeds per prompt the intervals are wide; compare each distance with `tv_null`, the distance expected by chance.",
    "The embedding model decides what 'similar' means; with untrained weights the clusters reflect only low-level image statistics.",
]


def write_generated_report(res: dict[str, Any], report_dir: str | Path) -> list[Path]:
    """Write bias_generated.md/.html/.json and plots for `bias_generated.analyse` results."""
    from audit.reports import UNTRAINED_WARNING

    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bias_generated.json", scrubbed(res, out, "bias_generated"))
    k = res["k"]
    model = res.get("model") or {}
    intro = (
        f"{res['images']} generated images from `{res.get('generated_dir')}`, prompts from "
        f"`{res.get('prompts_table')}`; embeddings by {model.get('model')} / {model.get('pretrained')}; "
        f"k-means with k = {k} clusters (best silhouette). 95% bootstrap intervals in brackets "
        f"({res['bootstrap']['reps']} resamples)."
    )
    if model and not model.get("trained", True):
        intro += " " + UNTRAINED_WARNING
    sections = [
        Section(
            "Method",
            (
                "Prompts cross professions with identity descriptors, several seeds each (after Luccioni et al. 2023, "
                "'Stable Bias'). Images are described only by which embedding cluster they fall in. Diversity = entropy "
                "of a prompt's cluster distribution / log k (0: all images in one cluster; 1: spread evenly). Each "
                "descriptor is compared with the plain prompt of the same profession by total variation (TV, 0..1) and "
                "Jensen-Shannon divergence (bits). `TV null` is the TV expected by chance at these sample sizes."
            ),
        )
    ]
    prompts = res["prompts"]
    sil = ", ".join(f"k={a}: {b:.3f}" for a, b in res["silhouette"].items())
    table = [
        {
            "profession": p["profession"],
            "descriptor": p["descriptor"] or "(none)",
            "images": p["images"],
            "diversity": fmt(p["entropy"], p["entropy_ci95"]),
            "clusters": " ".join(str(c) for c in p["clusters"]),
        }
        for p in prompts
    ]
    img = _heatmap(
        out / "bias_generated_clusters.png",
        [[c / max(1, p["images"]) for c in p["clusters"]] for p in prompts],
        [f"{p['profession']} | {p['descriptor'] or '(none)'}" for p in prompts],
        [str(i) for i in range(k)],
        "Share of each prompt's images per cluster",
        "cluster",
    )
    sections.append(
        Section(
            "Cluster distribution and diversity per prompt",
            f"Silhouette by k: {sil}.",
            table,
            [
                (
                    img.name,
                    "rows: profession | descriptor; columns: clusters; colour: share of images",
                )
            ],
        )
    )
    comps = res["comparisons"]
    ctable = [
        {
            "profession": c["profession"],
            "descriptor": c["descriptor"],
            "vs": c["baseline"] or "(plain prompt)",
            "images": f"{c['images']} vs {c['baseline_images']}",
            "TV": fmt(c["tv"], c.get("tv_ci95")),
            "TV null": fmt(c.get("tv_null")),
            "JS (bits)": fmt(c["js"], c.get("js_ci95")),
        }
        for c in comps
    ]
    images = []
    profs = sorted({c["profession"] for c in comps})
    descs = sorted({c["descriptor"] for c in comps})
    if comps:
        grid = [
            [
                next(
                    (c["tv"] for c in comps if c["profession"] == p and c["descriptor"] == d),
                    float("nan"),
                )
                for d in descs
            ]
            for p in profs
        ]
        images.append(
            (
                _heatmap(
                    out / "bias_generated_tv.png",
                    grid,
                    profs,
                    descs,
                    "TV distance to the plain prompt",
                    "descriptor",
                ).name,
                "total variation between each descriptor's cluster distribution and the plain prompt's",
            )
        )
    by_desc = "; ".join(
        f"{d}: mean TV {v['mean_tv']:.3f} (chance {v['mean_tv_null']:.3f}, {v['professions']} professions)"
        for d, v in res["by_descriptor"].items()
    )
    sections.append(
        Section(
            "Descriptors compared with the plain prompt",
            f"By descriptor: {by_desc or 'n/a'}.",
            ctable,
            images,
        )
    )
    sections.append(
        Section(
            "Cluster examples",
            "Up to 8 images per cluster (HTML page only).",
            html_extra=_cluster_thumbs(res),
        )
    )
    sections.append(Section("Limits", "\n".join(f"- {x}" for x in GENERATED_LIMITS)))
    md = write_page(out, "bias_generated", "Bias report: generated images", sections, intro)
    return [md, out / "bias_generated.html", out / "bias_generated.json"]


def _heatmap(
    path: Path, values: list[list[float]], rows: list[str], cols: list[str], title: str, xlabel: str
) -> Path:
    plt = _plt()
    import numpy as np

    arr = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(cols) + 3), max(2.5, 0.22 * len(rows) + 1)))
    im = ax.imshow(arr, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(rows)), rows, fontsize=6 if len(rows) > 30 else 8)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, path)


def _cluster_thumbs(res: dict[str, Any], per_cluster: int = 8) -> str:
    import html as _html

    from audit.reports import data_uri, png_bytes

    folder = res.get("generated_dir")
    if not folder:
        return ""
    from PIL import Image

    parts = []
    for c in range(res["k"]):
        files = [f for f, lab in zip(res["files"], res["labels"], strict=False) if lab == c][
            :per_cluster
        ]
        figs = []
        for f in files:
            try:
                with Image.open(Path(folder) / f) as img:
                    uri = data_uri(png_bytes(img.convert("RGB"), 96))
            except OSError:
                continue
            figs.append(
                f'<figure><img src="{uri}" alt="{_html.escape(f)}"><figcaption>{_html.escape(f)}</figcaption></figure>'
            )
        parts.append(
            f"<h3>Cluster {c} ({res['cluster_sizes'][c]} images)</h3><div class='grid'>{''.join(figs)}</div>"
        )
    return "".join(parts)


def write(result: dict[str, Any], report_dir: str | Path) -> list[Path]:
    """Render a bias result again into `report_dir`.

    Accepts the figures (`WS/bias/bias.json` contents) or the summary `checks.bias.compute`
    returns (then the figures are read from the workspace it names).
    """
    if "captions" in result and isinstance(result["captions"], dict):
        return write_dataset_report(result, report_dir)
    if "comparisons" in result:
        return write_generated_report(result, report_dir)
    ws = result.get("workspace")
    if ws is None:
        raise ValueError("write() needs bias figures or a summary from audit.checks.bias.compute")
    figures = json.loads((Path(ws) / "bias" / "bias.json").read_text("utf-8"))
    return write_dataset_report(figures, report_dir)
