"""The geometric copy verifier and the low-information guard, on real clip art."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps
from test_memorisation_check import sample_images

from audit import verify


@pytest.fixture(scope="module")
def pictures():
    return sample_images(6, skip=30)


def test_copies_through_crop_mirror_rotation_border_and_grey(pictures):
    img = pictures[0]
    w, h = img.size
    edits = {
        "crop to half the area": img.crop((0, 0, int(w * 0.72), int(h * 0.7))),
        "mirror": ImageOps.mirror(img),
        "rotation 20": img.rotate(-20, fillcolor=(255, 255, 255), resample=Image.BILINEAR),
        "border": ImageOps.expand(img, border=20, fill=(30, 90, 200)),
        "grey, half size": img.convert("L").convert("RGB").resize((w // 2, h // 2)),
    }
    for name, copy in edits.items():
        e = verify.verify(copy, img)
        assert verify.is_copy(e), (name, e)
    assert verify.verify(edits["mirror"], img).mirrored
    assert verify.verify(edits["rotation 20"], img).rotation == pytest.approx(20, abs=3)


def test_unrelated_pictures_are_not_copies(pictures):
    for a in pictures:
        for b in pictures:
            if a is not b:
                e = verify.verify(a, b)
                assert not verify.is_copy(e), e


def test_blank_and_tiny_foreground_are_low_information(pictures):
    white, black = Image.new("RGB", (80, 80), "white"), Image.new("RGB", (80, 80), "black")
    dot = Image.new("RGB", (200, 200), "white")
    dot.paste((0, 0, 0), (100, 100, 112, 112))
    for img, reason in ((white, "blank"), (black, "blank"), (dot, "tiny_foreground")):
        f = verify.extract(img)
        assert f.low_information and f.low_information.startswith(reason), f.low_information
    e = verify.verify(black, Image.new("RGB", (60, 60), (3, 3, 3)))
    assert e.low_information and not verify.is_copy(e)  # blank against blank is not a copy
    assert verify.extract(pictures[0]).low_information is None


def test_overlay_shows_the_aligned_pair(pictures):
    img = pictures[1]
    copy = ImageOps.mirror(img.rotate(-10, fillcolor=(255, 255, 255)))
    e = verify.verify(copy, img)
    panel = verify.overlay(copy, img, e.transform, e.mirrored, side=100)
    assert panel.size == (316, 100)
    third = np.asarray(panel)[:, 216:]
    assert third.std() > 5  # the aligned overlap is drawn, not left blank


def test_a_picture_drawn_inside_a_larger_one_is_not_its_copy(pictures):
    # openclipart's grapes on a wine label: the small picture is all there, at a third of
    # the size, beside another drawing; a copy edit (crop to half the area, 20% border)
    # never rescales that far, so the verifier does not call it a copy
    small, other = pictures[2], pictures[3]
    canvas = Image.new("RGB", (400, 400), "white")
    canvas.paste(other.resize((180, 180)), (215, 215))
    f = 210 / max(small.size)  # about half the canvas: a scale of 0.5, past MIN_SCALE
    canvas.paste(small.resize((round(small.width * f), round(small.height * f))), (2, 2))
    e = verify.verify(canvas, small)
    assert not verify.is_copy(e), e
    # the same picture at the size a half-area crop leaves is still found
    w, h = small.size
    assert verify.is_copy(verify.verify(small.crop((0, 0, int(w * 0.75), int(h * 0.75))), small))


def test_the_tile_median_never_replaces_a_global_correlation():
    # the rule on evidence: many inliers and agreeing tiles, but a different picture overall
    # (another pictogram in the same road-sign frame) is not a copy; with a global agreement it is
    e = verify.Evidence(
        matches=20,
        inliers=18,
        hypothesis="similarity",
        scale=1.0,
        rotation=0.0,
        correlation=0.6,
        tile_correlation=0.95,
        overlap=1.0,
    )
    assert not verify.is_copy(e)
    assert verify.is_copy(verify.Evidence(**{**e.to_dict(), "correlation": 0.85}))
    few = verify.Evidence(**{**e.to_dict(), "inliers": 5, "correlation": 0.85})
    assert not verify.is_copy(few)  # few inliers need a near-perfect global alignment
    assert verify.is_copy(verify.Evidence(**{**few.to_dict(), "correlation": 0.95}))
    far = verify.Evidence(**{**e.to_dict(), "correlation": 0.95, "scale": 0.35})
    assert not verify.is_copy(far)  # a picture inside another, not a copy edit


def test_an_identity_alignment_without_keypoint_support_is_not_a_copy():
    # openclipart's blue globe against a grey CD: two discs on white correlate at 0.94
    # under the identity with no keypoint in common
    bare = verify.Evidence(hypothesis="identity", correlation=0.95, overlap=1.0, inliers=0)
    assert not verify.is_copy(bare)
    supported = verify.Evidence(hypothesis="identity", correlation=0.95, overlap=1.0, inliers=3)
    assert verify.is_copy(supported)


def test_the_identity_counts_the_matches_it_carries():
    # a copy rescaled to half size: the identity stretch carries its matches onto each other
    cp = np.array([[10.0, 10.0], [100.0, 40.0], [60.0, 200.0], [5.0, 5.0]])
    qp = cp / 2
    qp[3] = (90.0, 90.0)  # a match the identity does not explain
    half = np.array([[0.5, 0, 0], [0, 0.5, 0]])
    assert verify._supporting(qp, cp, half) == 3
    assert verify._supporting(qp, cp, np.eye(2, 3)) == 0
