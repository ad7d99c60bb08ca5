"""Calibration of the memorisation check: real pictures, planted twins, held-out negatives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_workspace, encode
from PIL import Image
from test_memorisation_check import sample_images

from audit.checks import calibrate as cal


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    import torch

    from audit import embeddings, experiments, hashes

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cal")
    images = [encode(im) for im in sample_images(16, skip=40)]
    images += [images[0], encode(Image.new("RGB", (64, 64), "white"))]  # a twin and a blank
    images.append(encode(_soft_disc()))  # featureless: the verifier's guard turns it away
    ws = build_workspace(root / "ws", images)
    hashes.compute(ws.root, workers=1)
    embeddings.compute(ws.root, model="tiny", pretrained="none", workers=0)
    r = experiments.calibrate(ws.root, n=6, negatives=4, seed=0, report_dir=root / "reports")
    return root, r


def _soft_disc():
    # openclipart's sun: an orange ball with soft edges in a corner, 3 SIFT keypoints
    from PIL import ImageDraw, ImageFilter

    img = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(img).ellipse((10, 10, 70, 70), fill=(250, 160, 20))
    return img.filter(ImageFilter.GaussianBlur(4))


def test_every_transformation_is_measured_and_found(result):
    _, r = result
    c = r["counts"]
    assert c["sources"] == 6 and c["negatives"] >= 4 and c["twin_groups"] == 18
    # sources come from pictures the low-information guard lets be a copy: not the blank,
    # not the featureless disc (a copy of it would measure the guard, not the check)
    assert r["readable_rows"] == 19 and r["usable_sources"] == 17
    assert c["queries"] == 6 * len(cal.TRANSFORMS) + 2 * 6 + c["negatives"]
    assert set(cal.TRANSFORMS) <= set(r["per_transform"])
    assert any("+" in k for k in r["per_transform"])  # chains beside the singles
    for name in ("mirror", "grey", "jpeg", "rescale"):
        assert r["per_transform"][name]["verdict"]["recall"] >= 5 / 6, name
    single = r["pooled"]["single"]["verdict"]
    assert single["recall"] > 0.8 and single["wrong_source"] <= 1
    assert r["negatives"]["called_copy"] == 0 and r["false_positives"] == []
    # every positive not called a copy of its source (or of another picture) is listed as
    # missed, with what the verdict called it
    verdicts = [v["verdict"] for v in r["per_transform"].values()]
    missed = sum(v["positives"] - v["true_positives"] - v["wrong_source"] for v in verdicts)
    assert len(r["missed"]) == missed
    assert all(m["verdict"] != "copy" and m["kind"] in r["per_transform"] for m in r["missed"])
    # the negatives are counted once per pool, never charged to each transformation's row
    assert single["negatives"] == r["negatives"]["queries"] == c["negatives"]
    assert "precision" not in r["per_transform"]["crop"]["verdict"]
    assert single["precision"] == pytest.approx(
        single["true_positives"]
        / (
            single["true_positives"]
            + single["wrong_source"]
            + single["false_positives_on_negatives"]
        )
    )
    # each descriptor alone is reported beside the verdict, and the old global rule with it
    assert {"verdict", "geometry", "tile_l2", "phash_hamming", "old_rule"} <= set(
        r["pooled"]["single"]
    )
    # mirror: the pHash of the mirror image finds what the plain pHash cannot
    assert r["candidates"]["mirror"]["phash"] >= 5 / 6
    assert r["candidates"]["single"]["any"] > 0.9


def test_calibration_outputs(result):
    root, r = result
    saved = json.loads((root / "reports" / "calibration.json").read_text())
    assert saved["pooled"]["single"]["verdict"]["recall"] == pytest.approx(
        r["pooled"]["single"]["verdict"]["recall"]
    )
    page = (root / "reports" / "calibration.md").read_text()
    assert "per transformation" in page and "Candidate recall" in page
    assert "The negatives" in page and "false-positive rate" in page
    assert (root / "reports" / "calibration.html").exists()


def test_twin_groups_join_sha_thumbnails_and_families():
    rng = np.random.default_rng(0)
    thumbs = rng.random((5, 32, 32)).astype(np.float32)
    thumbs[3] = thumbs[1] + 0.01  # a near-identical thumbnail
    g = cal.twin_groups(["a", "b", "a", None, "c"], thumbs, families=[None, None, None, None, "f"])
    assert g.tolist() == [0, 1, 0, 1, 4]
    g = cal.twin_groups(["a", "b", "c", "d", "e"], thumbs, families=["x", None, None, None, "x"])
    assert g.tolist() == [0, 1, 2, 1, 0]
    src, neg = cal.plan(np.array([0, 1, 0, 3, 4, 5]), np.ones(6, bool), sources=2, negatives=1)
    held = {int(np.array([0, 1, 0, 3, 4, 5])[i]) for i in neg}
    assert len(held) == 1 and len(src) == 2 and not set(src) & set(neg)
    if 0 in held:
        assert sorted(neg) == [0, 2]  # a whole twin group is held out


def test_transforms_change_the_image():
    img = sample_images(1, skip=50)[0]
    rng = np.random.default_rng(0)
    for name, fn in cal.TRANSFORMS.items():
        out = fn(img, rng)
        assert out.mode == "RGB", name
        assert out.size != img.size or not np.array_equal(np.asarray(out), np.asarray(img)), name


def test_calibrate_command(result, tmp_path):
    from audit.cli import cli

    root, _ = result
    r = CliRunner().invoke(
        cli,
        [
            "calibrate",
            str(root / "ws"),
            "--n",
            "3",
            "--negatives",
            "2",
            "--report-dir",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "3 images x 10 transforms, 2 negatives: verdict copy recall" in r.output
    bad = CliRunner().invoke(cli, ["calibrate", str(root / "ws"), "--n", "2"])
    assert bad.exit_code == 1 and "--n must be at least 3" in bad.output
    bad = CliRunner().invoke(cli, ["calibrate", str(root / "ws"), "--group-by", "nope"])
    assert bad.exit_code == 1 and "no such metadata column" in bad.output


def test_variants_of_one_drawing_are_kept_out_of_the_negatives_together():
    # openclipart names variants "arrow04"/"arrow05" and files recoloured ones under one
    # series: the family key and the series thumbnails join them, without the verifier
    assert cal.family_key(("shapes / arrows", "arrow04")) == cal.family_key(
        ("shapes / arrows", "arrow05")
    )
    assert cal.family_key(("cars", "dodge neon green")) == cal.family_key(
        ("cars", "dodge neon pink")
    )
    assert cal.family_key(("cars", "dodge")) != cal.family_key(("cars", "truck"))
    assert cal.family_key((None, None)) is None
    assert cal.series_key("recreation / games / cards / simple") == "recreation / games"
    img, other = sample_images(2, skip=60)
    from PIL import ImageEnhance, ImageOps

    recolour = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(0.6)).enhance(0.3)
    darker = ImageEnhance.Brightness(img).enhance(0.4)
    pics = [img, recolour, ImageOps.mirror(img), other, darker]
    thumbs = np.stack([cal.thumbnail(p) for p in pics])
    series = ["cards", "cards", "cards", "cards", "maps"]
    g = cal.twin_groups(list("abcde"), thumbs, families=[None] * 5, series=series)
    # recolour and mirror image join their drawing; an unrelated picture of the series and
    # the same recolour filed under another series do not
    assert g[0] == g[1] == g[2] and g[3] != g[0] and g[4] != g[0]
    assert cal.twin_groups(list("abcde"), thumbs, series=["cards"] * 5)[4] == g[0]
    assert cal.twin_groups(list("abcde"), thumbs).tolist() == [0, 1, 2, 3, 4]


def test_negatives_are_counted_once_not_per_transformation():
    def outcome(kind, result, positive=True):
        return {
            "kind": kind,
            "positive": positive,
            "judged": {"verdict": result},
            "low_information": False,
        }

    outcomes = [outcome("crop", "tp"), outcome("crop", "miss"), outcome("mirror", "tp")]
    outcomes += [outcome("negative", "fp", False), outcome("negative", "miss", False)]
    crop = cal._stats(outcomes, {"crop"})["verdict"]
    assert crop["recall"] == 0.5 and crop["wrong_source"] == 0 and "precision" not in crop
    pooled = cal._stats(outcomes, {"crop", "mirror"}, pooled=True)["verdict"]
    assert pooled["negatives"] == 2 and pooled["false_positives_on_negatives"] == 1
    assert pooled["precision"] == pytest.approx(2 / 3)
    neg = cal._negative_stats(outcomes)
    assert neg["called_copy"] == 1 and neg["false_positive_rate"] == 0.5


def test_one_drawing_filed_under_two_category_paths_is_grouped():
    # openclipart's hummer: the same drawing titled 'hummer' under 'transportation' and under
    # 'transportation / vehicles / hummers' (two series, two families); a recoloured copy's
    # thumbnail correlates but is not near-identical
    rng = np.random.default_rng(1)
    base = rng.random((32, 32)).astype(np.float32)
    other = rng.random((32, 32)).astype(np.float32)
    thumbs = np.stack([base, 0.6 * base + 0.3, other, 0.6 * other + 0.3])
    cats = ["transportation", "transportation / vehicles / hummers", "office", "food"]
    titles = ["hummer", "Hummer H2", "pin", "pie"]
    fam = [cal.family_key((c, t)) for c, t in zip(cats, titles, strict=True)]
    ser = [cal.series_key(c) for c in cats]
    names = [cal.name_key(t) for t in titles]
    assert names[:2] == ["hummer", "hummer"]
    without = cal.twin_groups(["a", "b", "c", "d"], thumbs, families=fam, series=ser)
    assert without.tolist() == [0, 1, 2, 3]  # what the family and series keys missed
    g = cal.twin_groups(["a", "b", "c", "d"], thumbs, families=fam, series=ser, names=names)
    assert g.tolist() == [0, 0, 2, 3]  # same name + correlating thumbnails: one drawing
    # same picture, different names: not grouped by name (no name shared)
    assert g[2] != g[3]
