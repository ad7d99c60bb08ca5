"""The geometric copy verifier and the low-information guard, on real clip art."""

from __future__ import annotations

from dataclasses import replace

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


def test_a_training_picture_among_other_ink_is_held_back_fill_around_a_copy_is_not(pictures):
    # openclipart's crayon on a note, the table a man counts coins at: the candidate is all
    # there at a copy's scale, and the query holds ink beyond its edge (the joker figure on a
    # whole playing card sits below MIN_SCALE; the test above covers that case).
    # A bordered copy rotated with another fill colour holds only flat fill out there.
    rng = np.random.default_rng(7)
    outside = []
    for small, other in zip(pictures[:4], [*pictures[1:4], pictures[0]], strict=True):
        w, h = small.size
        canvas = Image.new("RGB", (round(w * 1.3), round(h * 1.3)), "white")
        canvas.paste(small, (0, 0))
        beside = other.resize((canvas.width - w, canvas.height))  # a figure beside it
        canvas.paste(beside, (w, 0))
        e = verify.verify(canvas, small)
        assert verify.MIN_SCALE <= e.scale <= 0.85, e  # a 15% border's scale: not the guard
        outside.append(verify.held_back_by_unexplained(e))
        assert outside[-1] or verify.is_copy(e), e  # copy but for the ink, or a copy
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        bordered = ImageOps.expand(small, border=max(2, w // 7), fill=fill)
        turned = bordered.rotate(14, fillcolor=(200, 40, 40), resample=Image.BILINEAR)
        copy = verify.verify(turned, small)
        assert verify.is_copy(copy), copy
        assert copy.unexplained <= verify.MAX_UNEXPLAINED, copy
    # `near`, the rest of the rule holding; measured 3 of 4: the fourth has a shopping bag
    # drawn in pale green beside it, lighter than RESIDUAL against the white (not ink)
    assert sum(outside) >= 3


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


def test_a_drawing_added_to_the_source_is_left_unexplained_a_caption_is_not(pictures):
    # openclipart's derived drawings: the same box with an arrow out of it, the same monkey
    # under a sailor's hat. A filled shape over a fifth of the picture has no counterpart in
    # the source; a caption's strokes are thinner than the opening takes away.
    from PIL import ImageDraw

    from audit.checks import calibrate

    rng = np.random.default_rng(4)
    held = []
    for img in pictures[:4]:
        w, h = img.size
        derived = img.copy()
        ImageDraw.Draw(derived).ellipse(
            (int(w * 0.45), int(h * 0.05), int(w * 0.95), int(h * 0.45)), fill=(20, 160, 40)
        )
        added = verify.verify(derived, img)
        assert added.unexplained > verify.MAX_UNEXPLAINED, added
        assert not verify.is_copy(added), added
        # a smaller addition (a hat, an arrow) leaves the rest agreeing: held back from
        # `copy` by the blob alone, so `near`, for a person to look at
        small = img.copy()
        ImageDraw.Draw(small).ellipse(
            (int(w * 0.7), int(h * 0.05), int(w * 0.95), int(h * 0.3)), fill=(20, 160, 40)
        )
        held.append(verify.held_back_by_unexplained(verify.verify(small, img)))
        captioned = verify.verify(calibrate.overlay_text(img, rng), img)
        assert captioned.unexplained <= verify.MAX_UNEXPLAINED, captioned
        assert verify.is_copy(captioned) and not verify.held_back_by_unexplained(captioned)
        same = verify.verify(img, img)
        assert same.unexplained == 0.0
    assert sum(held) >= 3  # measured: 3 of 4 (the fourth correlates too little anyway)


def test_a_picture_without_keypoints_is_a_copy_only_where_it_agrees_all_over():
    # openclipart's flag of Poland: two colour fields, not one SIFT keypoint; its JPEG,
    # grey and half-size copies agree with it at 0.99+ under the identity. Indonesia's flag
    # is the same two fields the other way up; a three-stripe flag is another picture.
    import io

    from PIL import ImageDraw

    def flag(bands: list[tuple[int, int, int]]) -> Image.Image:
        img = Image.new("RGB", (256, 160), "white")
        d = ImageDraw.Draw(img)
        for i, colour in enumerate(bands):
            d.rectangle((0, i * 160 // len(bands), 256, (i + 1) * 160 // len(bands)), fill=colour)
        return img

    white, red, blue = (255, 255, 255), (220, 20, 60), (0, 56, 168)
    poland = flag([white, red])
    buf = io.BytesIO()
    poland.save(buf, format="JPEG", quality=30)
    copies = [
        Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        poland.convert("L").convert("RGB"),
        poland.resize((128, 80)),
    ]
    for copy in copies:
        e = verify.verify(copy, poland)
        assert e.hypothesis == "identity" and e.inliers == 0, e
        assert e.correlation >= verify.MIN_CORRELATION_UNSUPPORTED and verify.is_copy(e), e
    for other in (flag([red, white]), flag([white, blue, red])):
        e = verify.verify(other, poland)
        assert not verify.is_copy(e), e


def _most_ink_box(img: Image.Image, share: float) -> tuple[int, int, int, int]:
    """The box of `share` of each side holding the most ink (grey far from white)."""
    g = np.asarray(img.convert("L"), np.float32)
    ink = (np.abs(g - 255) > 64).astype(np.float64)
    bw, bh = int(img.width * share), int(img.height * share)
    ii = np.pad(ink.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = ii[bh:, bw:] - ii[:-bh, bw:] - ii[bh:, :-bw] + ii[:-bh, :-bw]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(x), int(y), int(x) + bw, int(y) + bh


def test_a_detail_replaced_is_held_back_at_working_size_copies_are_not(pictures):
    # openclipart's road signs: the same red triangle round a curve, a junction, falling
    # rocks; a drawing pin alone and the same pin on a note. Here the box with the most ink,
    # a sixth of each side, is replaced by a smaller copy of another picture: too small a
    # blob at ALIGN_SIDE, where the rest of the rule holds, but not at working size.
    from audit.checks import calibrate

    held = []
    for i, img in enumerate(pictures[1:4], start=1):
        x0, y0, x1, y1 = _most_ink_box(img, 1 / 6)
        bw, bh = x1 - x0, y1 - y0
        changed = img.copy()
        changed.paste((255, 255, 255), (x0, y0, x1, y1))
        other = pictures[(i + 1) % len(pictures)].resize((bw * 3 // 4, bh * 3 // 4))
        changed.paste(other, (x0 + bw // 8, y0 + bh // 8))
        e = verify.verify(changed, img)
        assert not verify.is_copy(e), e
        coarse = replace(e, fine_unexplained=float("nan"))
        held.append(verify.is_copy(coarse) and e.fine_unexplained > verify.MAX_FINE_UNEXPLAINED)
        assert verify.held_back_by_unexplained(e) or not verify.is_copy(coarse), e
    assert sum(held) >= 2, held  # measured: all 3 pass the coarse rule, held back by the fine
    # every copy edit `audit calibrate` makes, on the same pictures: where the coarse rule
    # says copy, the fine comparison agrees (blur, JPEG and rescaling lose detail the source
    # has: the candidate is blurred to match; a caption's strokes are opened away)
    rng = np.random.default_rng(11)
    for img in pictures[:4]:
        for name, edit in calibrate.TRANSFORMS.items():
            e = verify.verify(edit(img.copy(), rng), img)
            if verify.is_copy(replace(e, fine_unexplained=float("nan"))):
                assert e.fine_unexplained <= verify.MAX_FINE_UNEXPLAINED, (name, e)
                assert verify.is_copy(e), (name, e)


def test_the_fine_comparison_may_turn_an_identity_alignment(pictures):
    # openclipart's plain hearts and discs have too few keypoints for a RANSAC fit, so a
    # copy rotated with fill is carried by the identity, which agrees at ALIGN_SIDE but at
    # working size leaves the turned edges unexplained unless ECC may turn it (`_turned`).
    # Another picture stays unexplained however it is turned.
    def grey(img: Image.Image) -> np.ndarray:
        return verify.extract(img).grey

    for img in pictures[1:5]:  # the other two hold too little ink for the turn to show
        source = grey(img)
        for angle in (-15, 12):
            turned = grey(img.rotate(angle, fillcolor=(255, 255, 255), resample=Image.BILINEAR))
            ident = verify._identity(turned, source)
            fixed = verify._fine_unexplained(turned, source, ident)
            free = verify._fine_unexplained(turned, source, ident, identity=True)
            assert fixed > verify.MAX_FINE_UNEXPLAINED >= free, (angle, fixed, free)
    # a detail replaced (as in the test above), then turned: the turn explains the edges,
    # not the detail
    for i, img in enumerate(pictures[1:4], start=1):
        x0, y0, x1, y1 = _most_ink_box(img, 1 / 6)
        changed = img.copy()
        changed.paste((255, 255, 255), (x0, y0, x1, y1))
        other = pictures[(i + 1) % len(pictures)].resize(((x1 - x0) * 3 // 4, (y1 - y0) * 3 // 4))
        changed.paste(other, (x0 + (x1 - x0) // 8, y0 + (y1 - y0) // 8))
        q, c = (
            grey(changed.rotate(12, fillcolor=(255, 255, 255), resample=Image.BILINEAR)),
            grey(img),
        )
        left = verify._fine_unexplained(q, c, verify._identity(q, c), identity=True)
        assert left > verify.MAX_FINE_UNEXPLAINED, (i, left)


def test_a_plain_picture_framed_is_a_copy_through_its_content_box():
    # a soft-edged heart (openclipart has many): two or three keypoints, too few for RANSAC,
    # and the frame keeps the identity from laying one over the other. The drawings' own
    # boxes (background and frame flooded away) do; the heart upside down or on its side,
    # or a disc, framed alike, stays apart.
    from PIL import ImageDraw, ImageFilter

    def heart(lobes: float = 0.26, tip: float = 0.9) -> Image.Image:
        img = Image.new("RGB", (256, 256), "white")
        d = ImageDraw.Draw(img)
        r = int(256 * lobes)
        for cx in (128 - r + 6, 128 + r - 6):
            d.ellipse((cx - r, 77 - r, cx + r, 77 + r), fill=(210, 20, 40))
        d.polygon(
            [(128 - 2 * r + 8, 92), (128 + 2 * r - 8, 92), (128, int(256 * tip))],
            fill=(210, 20, 40),
        )
        return img.filter(ImageFilter.GaussianBlur(2))

    source = heart()
    disc = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(disc).ellipse((40, 30, 216, 206), fill=(210, 20, 40))
    others = [source.rotate(180), source.transpose(Image.Transpose.TRANSPOSE), disc]
    for pad, colour in ((20, (0, 0, 0)), (40, (240, 200, 0))):
        framed = ImageOps.expand(source, border=pad, fill=colour)
        e = verify.verify(framed, source)
        assert e.hypothesis == "content box" and verify.is_copy(e), e
        assert e.scale == pytest.approx(256 / (256 + 2 * pad), abs=0.03), e
        for other in others:
            e = verify.verify(ImageOps.expand(other, border=pad, fill=colour), source)
            assert not verify.is_copy(e), e
