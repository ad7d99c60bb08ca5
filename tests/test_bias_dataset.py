"""The dataset bias report end to end on `make_workspace` fixtures: CLI, files, context, probes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import encode, synthetic_image

from audit.checks import bias
from audit.checks.bias import probes
from audit.cli import cli
from audit.workspace import (
    Output,
    Workspace,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_parquet,
)

CAPTIONS = [
    "a woman doctor at work",
    "a man who is a doctor",
    "a nurse and her cat",
    "Le chat noir dort sur le canapé du salon",
    "a photo of a farmer",
    "",
    "a landscape at dawn",
    "a Muslim family at the mosque",
    "a police officer and his dog",
    "the quick brown fox jumps",
]
URLS = [
    "https://img.example.co.uk/1.png",
    "https://cdn.example.co.uk/2.png",
    "https://a.b.pics.de/3.png",
    "http://10.0.0.1/4.png",
    "not a url",
    "https://site.io/6.png",
    "https://img.example.co.uk/7.png",
    "https://img.example.co.uk/8.png",
    "https://pics.de/9.png",
    "https://other.com/10.png",
]


@pytest.fixture
def ws(make_workspace) -> Workspace:
    images = [encode(synthetic_image(i, 32)) for i in range(10)]
    return make_workspace(
        images,
        captions=CAPTIONS,
        urls=URLS,
        rows_per_part=4,
        extra={
            "license": ["cc-by"] * 6 + [None] * 4,
            "language": ["en"] * 10,
            "punsafe": [i / 10 for i in range(10)],
            "width": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
            "height": [100] * 10,
        },
    )


def test_cli_dataset_report(ws: Workspace, tmp_path: Path):
    rep = tmp_path / "rep"
    r = CliRunner().invoke(
        cli, ["bias", str(ws.root), "--report-dir", str(rep), "--bootstrap", "100", "--seed", "1"]
    )
    assert r.exit_code == 0, r.output
    assert "9 captions, 5 domains, female:male 1" in r.output
    for name in (
        "bias.md",
        "bias.html",
        "bias.json",
        "MODEL_CARD.fragment.md",
        "bias_gender.png",
        "bias_lorenz.png",
    ):
        assert (rep / name).exists(), name
    fig = json.loads((rep / "bias.json").read_text())
    # the report's copy is the workspace's figures with this machine's paths made relative
    in_ws = json.loads((ws.root / "bias" / "bias.json").read_text())
    assert in_ws["workspace"] == str(ws.root) and not Path(fig["workspace"]).is_absolute()
    assert {k: v for k, v in fig.items() if k != "workspace"} == {
        k: v for k, v in in_ws.items() if k != "workspace"
    }
    g = fig["captions"]["gender"]["captions_with_term"]
    assert (g["female"]["captions"], g["male"]["captions"]) == (2, 2)
    occ = {o["occupation"]: o for o in fig["captions"]["occupations"]}
    # doctor: 2 of 9 captions, with female 1: one co-occurrence is below the minimum, so no PMI
    assert occ["doctor"]["pmi_female"] is None and occ["doctor"]["pmi_female_too_few"]
    assert fig["captions"]["identity"]["categories"]["religion"]["captions"] == 1
    src = fig["sources"]
    assert (src["malformed_urls"], src["domains"]) == (1, 5)
    assert src["top_domains"][0] == {**src["top_domains"][0], "domain": "example.co.uk", "rows": 4}
    assert src["concentration"]["rows"] == 9
    assert (
        fig["language"]["agreement"]["compared"] == 9
    )  # every non-empty caption, all declared "en"
    assert fig["language"]["detected"][0]["language"] == "en"
    assert fig["images"]["rows_with_size"] == 10 and fig["images"]["width"]["p50"] == pytest.approx(
        550
    )
    assert fig["images"]["scores"]["punsafe"]["above"]["rows"] == 4
    assert (
        "skipped" in fig["probes"]
        and not fig["optout"]["present"]
        and not fig["duplicates"]["present"]
    )
    html = (rep / "bias.html").read_text()
    assert html.count("data:image/png;base64") >= 3
    md = (rep / "bias.md").read_text()
    for words in (
        "a photo of a person with a feminine appearance",
        "Limits",
        "gender.tsv",
        "Skipped",
    ):
        assert words in md
    frag = (rep / "MODEL_CARD.fragment.md").read_text()
    assert (
        frag.startswith("---\n")
        and "## Training Data" in frag
        and "## Bias, Risks, and Limitations" in frag
    )
    assert Workspace.open(ws.root).stage("bias")["status"] == "done"
    # same seed, same intervals
    again = bias.compute(ws.root, report_dir=tmp_path / "rep2", bootstrap=100, seed=1)
    assert json.loads((tmp_path / "rep2" / "bias.json").read_text())["captions"] == fig["captions"]
    assert again["report_dir"] == str(tmp_path / "rep2")


def test_optout_and_duplicate_context(ws: Workspace, tmp_path: Path):
    uses = ["genai_training"] * 10
    decisions = ["reserved", "reserved", "allowed", "allowed", "unchecked"] + ["allowed"] * 5
    atomic_write_parquet(
        ws.path("optout/decisions.parquet"),
        pa.table(
            {
                "row_id": pa.array(range(10), pa.int64()),
                "use": uses,
                "decision": decisions,
                "signal": ["registry-domain"] * 10,
                "location": [""] * 10,
                "evidence": [""] * 10,
            }
        ),
    )
    atomic_write_parquet(
        ws.path("duplicates.parquet"),
        pa.table(
            {
                "row_id": pa.array([0, 6, 7, 2, 8], pa.int64()),
                "cluster_id": pa.array([0, 0, 0, 1, 1], pa.int64()),
                "cluster_size": pa.array([3, 3, 3, 2, 2], pa.int64()),
                "kind": ["exact"] * 3 + ["near_hash"] * 2,
            }
        ),
    )
    # views read only recorded files: record the planted ones as their stages would
    for stage, rel in (("optout", "optout/decisions.parquet"), ("dedup", "duplicates.parquet")):
        ws.start_stage(stage, {"planted": True}).finish({}, [Output(rel)])
    bias.compute(ws.root, report_dir=tmp_path / "rep", bootstrap=50)
    fig = json.loads((tmp_path / "rep" / "bias.json").read_text())
    o = fig["optout"]
    assert o["decisions_by_use"]["genai_training"] == {"allowed": 7, "reserved": 2, "unchecked": 1}
    assert o["not_allowed_by_domain"]["genai_training"][0] == {"domain": "example.co.uk", "rows": 2}
    d = fig["duplicates"]
    assert (d["rows_in_clusters"], d["clusters"], d["removable_if_one_kept"]) == (5, 2, 3)
    assert d["largest_clusters"] == [3, 2] and d["by_kind"] == {"exact": 3, "near_hash": 2}
    assert d["domains_of_duplicated_rows"][0] == {"domain": "example.co.uk", "rows": 3}
    assert "keeping one per cluster removes 3 rows" in (tmp_path / "rep" / "bias.md").read_text()


def test_probes_need_trained_weights_and_count_planted_images(ws: Workspace):
    rng = np.random.default_rng(0)
    texts = [t for group in probes.prompts().values() for t in group]
    vec = {
        t: v / np.linalg.norm(v)
        for t, v in zip(texts, rng.normal(size=(len(texts), 32)), strict=False)
    }

    def encode_texts(batch: list[str]) -> np.ndarray:
        return np.stack([vec[t] for t in batch])

    person, nobody = vec[probes.GATE[0]], vec[probes.GATE[1]]
    fem, masc = (vec[t] for t in probes.PROBES["perceived gender presentation"][:2])
    emb = np.stack([person + fem] * 3 + [person + masc] * 2 + [nobody] * 4 + [np.zeros(32)])
    info = {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "trained": True}
    res = probes.run([emb], encode_texts, info, 100, rng)
    assert (res["images"], res["images_with_person"]) == (
        9,
        5,
    )  # the zero row (failed image) is skipped
    gender = {r["prompt"]: r["images"] for r in res["probes"]["perceived gender presentation"]}
    assert list(gender.values()) == [3, 2, 0]
    untrained = probes.run([emb], encode_texts, {**info, "trained": False}, 100, rng)
    assert "untrained" in untrained["skipped"] and untrained["prompts"] == probes.prompts()
    assert "could not be loaded" in probes.run([emb], None, info, 100, rng)["skipped"]

    # through compute: model.json says trained, the caller passes the encoder
    atomic_write_json(ws.path("embeddings/model.json"), {**info, "dim": 32})
    for part in ws.metadata_parts():
        atomic_write_npy(
            ws.path(f"embeddings/img-{part.stem}.npy"),
            emb[part.row_offset : part.row_offset + part.rows],
        )
    bias.compute(ws.root, report_dir=ws.root / "rep", bootstrap=20, encode_texts=encode_texts)
    assert (
        json.loads((ws.root / "bias" / "bias.json").read_text())["probes"]["images_with_person"]
        == 5
    )


def test_bad_arguments(tmp_path: Path, ws: Workspace):
    runner = CliRunner()
    r = runner.invoke(cli, ["bias", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "not an audit workspace" in r.output
    r = runner.invoke(cli, ["bias", str(ws.root), "--bootstrap", "-1"])
    assert r.exit_code == 1 and "--bootstrap must be >= 0" in r.output


def test_report_write_accepts_a_compute_summary(ws: Workspace, tmp_path: Path):
    """The composer renders again from the summary `compute` returns (pipeline.run does)."""
    from audit.reports import bias as report

    summary = bias.compute(ws.root, report_dir=tmp_path / "a", bootstrap=10)
    pages = report.write(summary, tmp_path / "b")
    assert (tmp_path / "b" / "bias.md").read_text() == (tmp_path / "a" / "bias.md").read_text()
    assert {p.name for p in pages} >= {"bias.md", "bias.html", "MODEL_CARD.fragment.md"}
