"""Calibration of the copy descriptors on synthetic images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_workspace, encode, synthetic_image

from audit.checks import calibrate as cal


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    import torch

    from audit import embeddings, experiments, hashes

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cal")
    images = [encode(synthetic_image(s, size=96)) for s in range(20)]
    images += [images[0]]  # an exact duplicate is skipped, not counted as a negative
    ws = build_workspace(root / "ws", images)
    hashes.compute(ws.root, workers=1)
    embeddings.compute(ws.root, model="tiny", pretrained="none", workers=0)
    return root, experiments.calibrate(ws.root, n=18, seed=0, report_dir=root / "reports")


def test_every_transformation_is_found_above_chance(result):
    _, r = result
    assert r["images"] == 18 and r["pairs"] == {"positives": 18 * 7, "negatives": 18 * 17 * 7}
    assert set(r["per_transform"]) == set(cal.TRANSFORMS)
    for name, per in r["per_transform"].items():
        best = max(per.values(), key=lambda s: s["auc"])
        assert best["auc"] > 0.75, name
        assert best["recall_at_best_f1"] > best["chance_recall_at_best_f1"] + 0.3, name
    # pixel and hash descriptors see through mild copies almost perfectly
    for name in ("jpeg", "rescale"):
        assert r["per_transform"][name]["tile_relative"]["auc"] > 0.95
        assert r["rule"][name]["copy_recall"] > r["rule"][name]["copy_false_positive_rate"]
    # phash is not mirror-invariant: a flip is far harder for it than a JPEG
    assert (
        r["per_transform"]["flip"]["phash_hamming"]["auc"]
        < r["per_transform"]["jpeg"]["phash_hamming"]["auc"]
    )


def test_calibration_outputs(result):
    root, r = result
    assert r["warning"].startswith("untrained") and r["cosine_votes"] is False
    saved = json.loads((root / "reports" / "calibration.json").read_text())
    assert saved["suggested"]["near_tile"] == pytest.approx(
        r["pooled"]["tile_l2"]["best_f1_threshold"]
    )
    assert "Per transformation" in (root / "reports" / "calibration.md").read_text()
    assert (root / "reports" / "calibration.html").exists()


def test_pr_stats_on_a_planted_split():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(50, bool), np.zeros(500, bool)]
    dist = np.r_[rng.uniform(0, 0.1, 50), rng.uniform(0.05, 1, 500)]
    s = cal.pr_stats(dist, labels, lower_is_closer=True)
    assert 0.9 < s["auc"] <= 1
    assert s["threshold_at_p99"] <= 0.05 + 1e-9  # below the overlap, only positives
    assert s["precision_at_best_f1"] > 0.7 and 0 <= s["chance_recall_at_best_f1"] < 0.05
    assert cal.pr_stats(-dist, labels)["auc"] == pytest.approx(s["auc"])


def test_transforms_change_the_image_but_keep_its_size_class():
    img = synthetic_image(5, size=96)
    rng = np.random.default_rng(0)
    for name, fn in cal.TRANSFORMS.items():
        out = fn(img, rng)
        assert out.mode == "RGB", name
        assert (
            np.asarray(out.resize(img.size)).astype(int).tolist()
            != np.asarray(img).astype(int).tolist()
        ), name


def test_calibrate_command(result):
    from audit.cli import cli

    root, _ = result
    r = CliRunner().invoke(
        cli, ["calibrate", str(root / "ws"), "--n", "6", "--report-dir", str(root / "r2")]
    )
    assert r.exit_code == 0, r.output
    assert "6 images x 7 transforms" in r.output
    bad = CliRunner().invoke(cli, ["calibrate", str(root / "ws"), "--n", "2"])
    assert bad.exit_code == 1 and "--n must be at least 3" in bad.output
