"""`audit card`: merging training, opt-out, memorisation and bias parts; missing parts say "Not run"."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import encode, synthetic_image

from audit import cards
from audit.checks import bias
from audit.cli import cli
from audit.workspace import Workspace, atomic_write_json

CAPTIONS = ["a woman doctor", "a man and his dog", "a nurse", "a red car"]


@pytest.fixture
def ws(make_workspace) -> Workspace:
    return make_workspace([encode(synthetic_image(i, 16)) for i in range(4)], captions=CAPTIONS)


def test_card_with_nothing_but_a_workspace(ws: Workspace, tmp_path: Path):
    s = cards.build_model_card(ws.root, bias_dir=tmp_path / "no-bias", out=tmp_path / "CARD.md")
    text = (tmp_path / "CARD.md").read_text()
    meta, body = cards.split_front_matter(text)
    assert meta["datasets"] == [ws.dataset] and meta["license"] == "other"
    sec = cards.sections(body)
    for title in (
        "Model Details",
        "Training Data",
        "Consent and opt-outs",
        "Evaluation",
        "Bias, Risks, and Limitations",
    ):
        assert title in sec or f"### {title}" in body, title
    assert sec["Model Details"].startswith("Not run")
    assert sec["Evaluation"].startswith("Not run")
    assert sec["Bias, Risks, and Limitations"].startswith("Not run")
    assert "`optout`: Not run" in body and "`filter`: Not run" in body
    assert s == {
        "out": str(tmp_path / "CARD.md"),
        "model_details": False,
        "bias": False,
        "optout": False,
        "filter": False,
        "memorisation_results": 0,
    }


def test_card_with_every_part(ws: Workspace, tmp_path: Path):
    bias.compute(ws.root, report_dir=tmp_path / "bias", bootstrap=20)  # records its report dir
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    atomic_write_json(
        model / "config.json",
        {"resolution": 32, "steps": 1500, "lr": 0.0002, "data": {"rows": 3, "sha256": "abc"}},
    )
    for stage, summary in (
        ("optout", {"rows": 4, "reserved": 1}),
        ("filter", {"kept": 3, "removed": 1}),
    ):
        Workspace.open(ws.root).start_stage(stage, {"use": "genai_training"}).finish(summary)
    atomic_write_json(
        ws.path("memorisation/ddpm/summary.json"),
        {
            "generated": 64,
            "replication_rate": 0.03125,
            "replication_ci95": [0.0, 0.078],
            "counts": {"copy": 2, "near": 3, "novel": 59},
            "membership_inference": {
                "auc_members_vs_heldout": 0.61,
                "auc_members_vs_heldout_ci95": [0.52, 0.7],
                "auc_x8_vs_heldout": 0.9,
            },
        },
    )
    r = CliRunner().invoke(cli, ["card", str(ws.root), "--model-dir", str(model)])
    assert r.exit_code == 0, r.output
    text = (model / "MODEL_CARD.md").read_text()
    meta, body = cards.split_front_matter(text)
    assert meta["metrics"] == ["mia_auc_ddpm", "replication_rate_ddpm"]
    sec = cards.sections(body)
    assert (
        "`resolution`: 32" in sec["Model Details"] and "`data.sha256`: abc" in sec["Model Details"]
    )
    assert "Dataset `ws`: 4 image-text rows" in sec["Training Data"]
    assert "`kept`: 3" in body and "`reserved`: 1" in body
    assert "Replication rate (verdict copy): 0.03125 (95% CI 0-0.078)" in sec["Evaluation"]
    assert "AUC, members vs held-out: 0.61 (95% CI 0.52-0.7)" in sec["Evaluation"]
    assert "AUC, members copied x8 vs held-out: 0.9" in sec["Evaluation"]
    assert "female-to-male ratio" in sec["Bias, Risks, and Limitations"]
    assert "model_details, bias, optout, filter; 1 memorisation result(s)" in r.output
    # the model's pictures: linked in place inside the model folder, copied beside a card elsewhere
    (model / "samples.png").write_bytes(b"png")
    (model / "training_images.png").write_bytes(b"png2")
    assert "![samples" not in sec["Model Details"]
    elsewhere = tmp_path / "report" / "CARD.md"
    cards.build_model_card(ws.root, model_dir=model, out=elsewhere)
    details = cards.sections(cards.split_front_matter(elsewhere.read_text())[1])["Model Details"]
    assert "(m_samples.png)" in details and "(m_training_images.png)" in details
    assert "loss.png" not in details  # only pictures that exist
    assert (tmp_path / "report" / "m_training_images.png").read_bytes() == b"png2"
    cards.build_model_card(ws.root, model_dir=model)
    assert "](samples.png)" in (model / "MODEL_CARD.md").read_text()


def test_front_matter_is_yaml():
    yaml = pytest.importorskip("yaml")
    text = cards.front_matter(
        {"license": "other", "datasets": ["my data: v1", "yes"], "tags": ["a"], "metrics": []}
    )
    assert yaml.safe_load(text.strip().strip("-")) == {
        "license": "other",
        "datasets": ["my data: v1", "yes"],
        "tags": ["a"],
    }
    meta, body = cards.split_front_matter(text + "## A\nb\n")
    assert meta["datasets"] == ["my data: v1", "yes"] and cards.sections(body) == {"A": "b"}


def test_bad_model_dir(ws: Workspace, tmp_path: Path):
    r = CliRunner().invoke(cli, ["card", str(ws.root), "--model-dir", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "is not a folder" in r.output
