"""`audit card`: a Hugging Face model card whose metadata the Hub accepts, from the audit's parts.

The Hub validates card metadata online; what can be checked offline is checked here with
huggingface_hub's own classes: the card loads with `ModelCard`, its licence fields follow the
Hub's rule (`other` needs `license_name` and `license_link`), `pipeline_tag` is set, and
`model-index` parses back into the same `EvalResult`s (`model_index_to_eval_results`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import encode, synthetic_image
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from audit import cards
from audit.checks import bias
from audit.cli import cli
from audit.workspace import Workspace, atomic_write_json

CAPTIONS = ["a woman doctor", "a man and his dog", "a nurse", "a red car"]


@pytest.fixture
def ws(make_workspace) -> Workspace:
    return make_workspace([encode(synthetic_image(i, 16)) for i in range(4)], captions=CAPTIONS)


def hub_metadata_problems(card: ModelCard) -> list[str]:
    """The Hub's model-card metadata rules that hold without asking the Hub."""
    meta = card.data.to_dict()
    problems = []
    lic = meta.get("license")
    if lic not in cards.HUB_LICENSES:
        problems.append(f"license {lic!r} is not a Hub licence id")
    if lic == "other" and not (meta.get("license_name") and meta.get("license_link")):
        problems.append("license: other needs license_name and license_link")
    if meta.get("license_name") and not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", meta["license_name"]):
        problems.append("license_name must be lower-case letters, digits, '-' and '.'")
    if meta.get("pipeline_tag") != "unconditional-image-generation":
        problems.append(f"pipeline_tag {meta.get('pipeline_tag')!r}")
    for d in meta.get("datasets") or []:
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", d):
            problems.append(f"dataset {d!r} is not a Hub id")
    if "model-index" in meta:
        name, results = model_index_to_eval_results(meta["model-index"])
        if eval_results_to_model_index(name, results) != meta["model-index"]:
            problems.append("model-index does not round-trip through EvalResult")
        for r in results:
            if not (r.task_type and r.dataset_type and r.dataset_name and r.metric_type):
                problems.append(f"incomplete result {r}")
            if not isinstance(r.metric_value, (int, float)):
                problems.append(f"metric value {r.metric_value!r} is not a number")
    return problems


def test_card_with_nothing_but_a_workspace(ws: Workspace, tmp_path: Path):
    s = cards.build_model_card(ws.root, bias_dir=tmp_path / "no-bias", out=tmp_path / "CARD.md")
    card = ModelCard.load(tmp_path / "CARD.md")
    assert hub_metadata_problems(card) == []
    meta = card.data.to_dict()
    # no licence recorded anywhere: `other`, with the terms in LICENSE.md beside the card
    assert (meta["license"], meta["license_link"]) == ("other", "LICENSE.md")
    assert (tmp_path / "LICENSE.md").exists()
    assert "datasets" not in meta and "model-index" not in meta  # a local dataset is no Hub id
    sec = cards.sections(card.text)
    for title in (
        "Model Details",
        "Uses",
        "Training Data",
        "Evaluation",
        "Bias, Risks, and Limitations",
    ):
        assert title in sec, title
    assert sec["Model Details"].startswith("Not run")
    assert sec["Evaluation"].startswith("Not run")
    assert sec["Bias, Risks, and Limitations"].startswith("Not run")
    assert "Opt-outs: not run" in sec["Training Data"]
    assert "is local (not on the Hugging Face Hub)" in sec["Training Data"]
    assert s["model_details"] is False and s["memorisation_results"] == 0
    assert (tmp_path / "CARD.html").exists()


def test_card_with_every_part(ws: Workspace, tmp_path: Path):
    bias.compute(ws.root, report_dir=tmp_path / "bias", bootstrap=20)  # records its report dir
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    atomic_write_json(
        model / "config.json",
        {
            "steps": 1500,
            "step": 1500,
            "batch_size": 32,
            "lr": 0.0002,
            "model": {"resolution": 32, "channels": 3, "base_channels": 32},
            "data": {"workspace": str(ws.root), "rows": 3, "images": 3, "images_sha256": "abc123"},
        },
    )
    for stage, summary in (
        ("optout", {"rows": 4, "decisions": {"genai_training": {"reserved": 1, "allowed": 3}}}),
        ("filter", {"rows": 4, "kept": 3, "removed": 1, "use": "genai_training"}),
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
    card = ModelCard.load(model / "MODEL_CARD.md")
    assert hub_metadata_problems(card) == []
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "m"
    assert {(x.metric_type, x.metric_value) for x in results} == {
        ("replication_rate", 3.125),
        ("mia_auc_heldout", 0.61),
        ("mia_auc_x8_heldout", 0.9),
    }
    assert card.text.lstrip().startswith("# m: a 32x32 diffusion model trained on `ws`")
    sec = cards.sections(card.text)
    assert "**Resolution:** 32x32 pixels" in sec["Model Details"]
    assert "| ddpm | 64 | 2 | 3 | 3.1% [0.0%, 7.8%] |" in sec["Evaluation"]  # one interval format
    assert "(members vs held-out), AUC: 0.61 [0.52, 0.7]" in sec["Evaluation"]
    assert "(members copied x8 vs held-out), AUC: 0.9" in sec["Evaluation"]
    assert "`audit filter` kept 3 of 4 rows" in sec["Training Data"]
    assert "female-to-male ratio" in sec["Bias, Risks, and Limitations"]
    assert "1 memorisation result(s)" in r.output
    text = (model / "MODEL_CARD.md").read_text()
    assert str(tmp_path) not in text and "/tmp/" not in text  # no absolute path of this machine
    # a card elsewhere gets copies of the model's pictures beside it
    (model / "samples.png").write_bytes(encode(synthetic_image(1, 32)))
    (model / "training_images.png").write_bytes(encode(synthetic_image(2, 32)))
    elsewhere = tmp_path / "report" / "CARD.md"
    cards.build_model_card(ws.root, model_dir=model, out=elsewhere)
    details = cards.sections(ModelCard.load(elsewhere).text)["Model Details"]
    assert "(m_samples.png)" in details and "(m_training_images.png)" in details
    assert "loss.png" not in details  # only pictures that exist
    assert (tmp_path / "report" / "m_training_images.png").exists()


def test_licence_from_the_data_or_the_author(ws: Workspace, tmp_path: Path):
    assert cards.hub_license("https://creativecommons.org/licenses/by-sa/4.0/") == "cc-by-sa-4.0"
    assert cards.hub_license("https://creativecommons.org/licenses/publicdomain/") == "cc0-1.0"
    assert cards.hub_license("https://creativecommons.org/publicdomain/zero/1.0/") == "cc0-1.0"
    assert cards.hub_license("MIT") == "mit" and cards.hub_license("all rights reserved") is None
    s = cards.build_model_card(ws.root, out=tmp_path / "c.md", license="apache-2.0")
    assert s["license"] == "apache-2.0" and not (tmp_path / "LICENSE.md").exists()
    r = CliRunner().invoke(
        cli, ["card", str(ws.root), "--out", str(tmp_path / "d.md"), "--license", "mine"]
    )
    assert r.exit_code == 1 and "not a Hub licence id" in r.output


def test_bad_model_dir(ws: Workspace, tmp_path: Path):
    r = CliRunner().invoke(cli, ["card", str(ws.root), "--model-dir", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "is not a folder" in r.output
