"""Content thumbnails (`audit.features`): the drawing's own descriptor, whatever its margin,
frame, scale, rotation or mirror image; and the search the match stage takes candidates from."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from conftest import build_workspace, encode

from audit import features, verify
from audit.checks import calibrate as cal


@pytest.fixture(scope="module")
def pictures():
    """Clip art of the bundled sample with enough structure to tell apart (decoded once)."""
    from audit.images import decode
    from audit.pipeline import sample_dir

    out = []
    with tarfile.open(sample_dir() / "shards" / "00000.tar") as tar:
        for m in tar.getmembers():
            if m.name.endswith((".png", ".jpg")):
                img = decode(tar.extractfile(m).read())  # transparency on white, as audit reads
                if verify.extract(img).low_information is None:
                    out.append(img)
            if len(out) == 30:
                return out
    raise AssertionError("the bundled sample has too few pictures")


def grey(img):
    return verify.extract(img).grey


def test_margin_frame_scale_and_encoding_leave_the_thumbnail_unchanged(pictures):
    from PIL import Image, ImageFilter, ImageOps

    rng = np.random.default_rng(0)
    library = np.stack([features.content_thumbnail(grey(p)) for p in pictures])
    nearest, similar, total = 0, 0, 0
    for i, p in enumerate(pictures):
        w, h = p.size
        buf = io.BytesIO()
        p.save(buf, format="JPEG", quality=20)
        copies = (
            ImageOps.expand(p, border=max(2, w // 6), fill=(200, 30, 90)),  # coloured frame
            ImageOps.expand(p, border=w // 3, fill=(255, 255, 255)),  # a wider white margin
            p.resize((max(8, int(w * 0.4)), max(8, int(h * 0.4)))),
            p.filter(ImageFilter.GaussianBlur(max(p.size) * 0.01)),
            Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
            cal.border(p, rng),
        )
        for copy in copies:
            sims = library @ features.content_thumbnail(grey(copy))
            best = int(np.argmax(sims))
            # its source first, or a twin of it (the sample holds one star polygon twice)
            nearest += best == i or float(library[best] @ library[i]) >= cal.CONTENT_CORRELATION
            similar += sims[i] >= 0.8
            total += 1
    # measured: 177 of 180 nearest and 168 similar (a photo on a grey gradient, a picture on
    # a dark ground and a banner that touches its edges lose)
    assert nearest >= 0.95 * total
    assert similar >= 0.9 * total


def test_plain_thumbnails_do_not_survive_a_frame(pictures):
    # what the content thumbnail is for: the whole picture's 32x32 thumbnail moves with a frame
    from PIL import ImageOps

    p = pictures[3]  # clip art on white
    framed = ImageOps.expand(p, border=p.width // 5, fill=(20, 20, 160))
    a, b = (cal.thumbnail(x).ravel() for x in (p, framed))
    a, b = a - a.mean(), b - b.mean()
    plain = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    content = float(features.content_thumbnail(grey(p)) @ features.content_thumbnail(grey(framed)))
    assert content > 0.95 > plain + 0.1


def test_query_thumbnails_undo_rotation_with_fill_and_mirroring(pictures):
    from PIL import Image, ImageOps

    library = np.stack([features.content_thumbnail(grey(p)) for p in pictures])
    found_upright, found = 0, 0
    for i, p in enumerate(pictures[:12]):
        angle = (-1) ** i * (8 + i)  # 8-19 degrees either way
        fill = (255, 255, 255) if i % 2 else (40, 160, 40)
        turned = ImageOps.mirror(p.rotate(angle, fillcolor=fill, resample=Image.BILINEAR))
        variants = features.query_thumbnails(grey(turned))
        assert variants.shape == (2 * len(features.QUERY_ANGLES), features.THUMB_SIDE**2)
        found += int(np.argmax((library @ variants.T).max(1))) == i
        found_upright += int(np.argmax(library @ variants[0])) == i
    assert found >= 10  # rotated back and mirrored, the source is the nearest picture
    assert found_upright <= 4  # as they are, almost never


def test_blank_and_all_background_pictures_keep_a_defined_thumbnail():
    white = np.full((64, 64), 255, np.uint8)
    square = np.zeros((64, 64), np.uint8)  # all one colour: the flood is undone
    for g in (white, square):
        t = features.content_thumbnail(g)
        assert t.shape == (features.THUMB_SIDE**2,) and np.isfinite(t).all()


def test_the_features_stage_indexes_thumbnails_and_finds_a_framed_rotated_copy(pictures, tmp_path):
    from PIL import Image, ImageOps

    ws = build_workspace(tmp_path / "ws", [encode(p) for p in pictures])
    summary = features.build(ws.root)
    assert summary["thumbnails"]["images"] == len(pictures)
    assert ws.path("faiss/thumbnails.faiss").exists()
    index, owners = features.open_thumbnails(ws.root)
    assert index.ntotal == len(owners) == len(pictures)
    source = 5
    p = pictures[source]
    copy = ImageOps.expand(p.rotate(-12, fillcolor=(250, 200, 0), resample=Image.BILINEAR), 20)
    top = features.search_thumbnails(ws.root, [grey(copy)], k=3)[0]
    assert top[0][0] == source and top[0][1] > top[1][1]  # build_workspace: row_id = index


def test_a_workspace_without_thumbnails_says_what_to_run(tmp_path, pictures):
    from audit.errors import AuditError

    ws = build_workspace(tmp_path / "ws", [encode(p) for p in pictures[:3]])
    with pytest.raises(AuditError, match="audit features"):
        features.open_thumbnails(ws.root)


def test_near_identical_content_thumbnails_are_one_twin_group():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, features.THUMB_SIDE**2)).astype(np.float32)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    near = a + 0.05 * b  # correlation ~0.999
    mirrored = a.reshape(16, 16)[:, ::-1].ravel()
    content = np.stack([a, near / np.linalg.norm(near), b, mirrored])
    thumbs = rng.random((4, 32, 32)).astype(np.float32)  # plain thumbnails all unrelated
    assert cal.twin_groups(["w", "x", "y", "z"], thumbs).tolist() == [0, 1, 2, 3]
    g = cal.twin_groups(["w", "x", "y", "z"], thumbs, content=content)
    assert g.tolist() == [0, 0, 2, 0]  # a, a nearly, b, a mirrored
    strict = cal.twin_groups(
        ["w", "x", "y", "z"], thumbs, content=content, content_correlation=1.01
    )
    assert strict.tolist() == [0, 1, 2, 3]
