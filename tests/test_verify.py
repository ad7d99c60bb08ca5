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
