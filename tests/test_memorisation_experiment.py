"""The memorisation experiment end to end on the bundled sample (slow: trains a model)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from audit import pipeline

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    not (pipeline.sample_dir() / "shards").is_dir(), reason="bundled sample not built"
)
def test_experiment_command_quick(tmp_path):
    from audit.cli import cli

    out = tmp_path / "exp"
    r = CliRunner().invoke(
        cli, ["experiment", "memorisation", "--quick", "--steps", "30", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    text = (out / "experiment.json").read_text()
    # read elsewhere like its pages: no absolute path of this machine (registries, workspace)
    assert str(tmp_path) not in text and str(pipeline.sample_dir().resolve()) not in text
    # its workspaces, committed beside the sample they read, keep no absolute fallback for
    # their input roots (whose recorded path holds; it is relative on one filesystem)
    manifests = sorted((out / "work").rglob("manifest.json"))
    assert len(manifests) == 3
    for manifest in manifests:
        roots = json.loads(manifest.read_text())["roots"]
        assert roots and all("absolute" not in rec for rec in roots.values()), manifest
    result = json.loads(text)
    assert result["steps"] == 30 and result["sets"]["train"] == 24
    assert result["sampler"]["name"] == "ddpm"  # what was run is what is recorded
    assert result["training"]["precision"] in ("bf16", "fp32")
    groups = {row["copies_in_training"]: row["members"] for row in result["by_duplication"]}
    assert groups == {16: 4, 4: 4, 1: 16}
    mia = result["mia"]
    for key in ("auc_members_vs_heldout", "auc_members_vs_optedout", "auc_x16_vs_heldout"):
        lo, hi = mia[f"{key}_ci95"]
        assert 0 <= lo <= mia[key] <= hi <= 1
    card = (out / "MODEL_CARD.md").read_text()
    assert (
        card.startswith("---\nlicense:")
        and "## Memorisation experiment" in card
        and "mia_auc" in card
    )
    for page in (
        "experiment.md",
        "experiment.html",
        "memorisation.md",
        "replication_by_duplication.png",
    ):
        assert (out / page).exists(), page
