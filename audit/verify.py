"""Is one image a copy of another? Geometric verification with evidence you can look at.

A copy made by cropping, rotating, mirroring, rescaling or re-encoding a picture keeps its
*local structure*: corners and blobs reappear, moved by one similarity transform. So:

1. **Features**: SIFT keypoints and RootSIFT descriptors (OpenCV; SIFT is patent-free
   since 2020) of both images, at a working size of `WORK_SIDE` pixels. The mirrored query
   is described too, since SIFT is rotation- but not reflection-invariant.
2. **Geometry**: descriptor matches (mutual nearest neighbours passing Lowe's ratio test)
   fitted by RANSAC to a similarity transform (`cv2.estimateAffinePartial2D`: rotation,
   uniform scale, translation; no shear, which no copy-style edit introduces). Inliers that
   agree on one transform are very unlikely between unrelated pictures.
3. **Pixels**: the candidate is warped into the query's frame by that transform (or by
   the identity, which is what a rescale, recolour or re-encode needs when there are too
   few keypoints to fit anything, or by laying the two drawings' content boxes over each
   other, which is what a frame around such a picture needs) and compared over the
   aligned overlap: zero-normalised correlation of grey levels (so a grey or
   colour-shifted copy still correlates), after a light blur (so JPEG blocks and
   resampling do not count). Inliers alone can be fooled by repeated patterns (the five
   of spades against the five of clubs); a high correlation over most of the picture
   cannot. Nor may the alignment leave a blob of the query unexplained (`_unexplained`):
   a drawing added to the source is not a copy of it. A pair that passes all this is
   compared once more at working size (`_fine_unexplained`), the fit refined by OpenCV's
   ECC (the identity may also be turned: a plain heart rotated with fill has no keypoints
   to fit) and the candidate blurred as much as the query is: another pictogram in the
   same sign frame differs in details the coarse comparison blurs away.
4. **Low information**: a blank, near-uniform or tiny-foreground picture is "similar" to
   every other such picture under any pixel distance or hash. `information` says so, with
   the reason, and such a pair is never called a copy (it gets its own verdict upstream).

`verify(query, candidate)` returns an `Evidence` dataclass; `is_copy(evidence)` is the
decision at thresholds measured by `audit calibrate` on openclipart images outside the
calibration workspace. The duplicate check (issue 16) uses the same function on hash pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

WORK_SIDE = 256  # images are described at this longest side
MAX_FEATURES = 400  # strongest SIFT keypoints kept per image
RATIO = 0.85  # Lowe's ratio test
CONTRAST = 0.02  # SIFT contrast threshold (OpenCV's default 0.04 finds too few on flat clip art)
MUTUAL = False
RANSAC_PX = 6.0  # reprojection error (pixels at WORK_SIDE) for an inlier
ALIGN_SIDE = 96  # the aligned comparison runs at this longest side
TILES = 4  # ... and also per tile of a TILES x TILES grid

# Low-information guard, on a grey 64x64 thumbnail in [0, 1] (alpha composited on white).
BLANK_STD = 0.02  # grey standard deviation below this: blank / uniform
FOREGROUND_DIFF = 0.1  # a pixel differs from the background colour by more than this...
MIN_FOREGROUND = 0.01  # ...on at least this share of the picture, or it is "tiny foreground"
MIN_KEYPOINTS = 8  # fewer keypoints: too little structure to verify (with uniform tones)

# Decision (see `is_copy`); from `audit calibrate` tuning on openclipart outside the sample.
MIN_INLIERS = 12  # inliers of a fit that, with MIN_CORRELATION, make a copy...
MIN_CORRELATION = 0.8  # ...global aligned zero-normalised correlation (not a tile median)
MANY_INLIERS = 30  # ...or this many inliers (a rotated copy of thin line art loses
MANY_INLIERS_CORRELATION = 0.7  # correlation to resampling) with at least this...
FEW_INLIERS = 4  # ...or this few inliers (simple clip art has few keypoints)...
FEW_INLIERS_CORRELATION = 0.93  # ...with a near-perfect alignment (global or tile median)...
FEW_INLIERS_GLOBAL = 0.9  # ...and a high global correlation too
MIN_CORRELATION_IDENTITY = 0.93  # ... with the identity (no fitted transform)...
# ...carrying at least this many keypoint matches onto each other: a blue globe and a grey
# CD correlate at 0.94 as two discs on white with not one keypoint in common
MIN_IDENTITY_SUPPORT = 1
# ...unless the two agree all over: a two-stripe flag has no keypoint at all, and its JPEG,
# grey or rescaled copy still correlates at 0.999 with it (the globe and the CD: 0.94)
MIN_CORRELATION_UNSUPPORTED = 0.99
MIN_OVERLAP = 0.3  # share of the smaller picture inside the other once aligned
# What the alignment leaves unexplained: the query fitted to the warped candidate by one
# gain and offset (a grey, recoloured or re-contrasted copy fits), the residual above
# RESIDUAL (of the grey range), opened by a 3x3 square at ALIGN_SIDE (a caption's strokes,
# JPEG blocks and resampled edges are thinner than that), its largest blob as a share of
# the overlap. A copy has no such blob; another pictogram in the same road-sign frame,
# an arrow drawn out of the same box, a hat on the same monkey have one. Tuned by `audit
# calibrate` on seeds 0 and 2 of a 2,000-image openclipart workspace (20 sources each): the
# copies it called right left at most 1.1% unexplained on single transformations (3.1% on
# one chain of three, the only copy this rejects); 5 of its 12 false copies left 2.5-5%.
# Outside the overlap a copy holds only fill: a border, the corners a rotation filled, each
# one flat colour (FLAT_RANGE). Ink there (an outline, a letter, a figure beside the
# candidate: the crayon on a note, the table a man counts coins at) is left
# unexplained too, its largest blob as a share of the query: on seeds 0 and 2 the copies it
# called right left at most 0.8% outside (one mirror copy 2.5%, through a partial fit that
# the mirrored fit replaces), the pictures holding a training picture among other ink 2.5-9%.
RESIDUAL = 0.25
MAX_UNEXPLAINED = 0.02
FLAT_RANGE = 12  # grey levels a 3x3 neighbourhood of a fill spans (JPEG q15 included)
MIN_FILL = 0.005  # share of the query a flat region covers to count as fill
MAX_ROTATION = 30.0  # degrees
# Candidate -> query scale of a plausible copy. Both images are described at WORK_SIDE, so a
# rescale does not change it; a crop to half the area magnifies by 1.41, a 20% border
# shrinks by 0.71 (fits land within 0.02 of it). Beyond this band the pair is a picture
# inside another (a bunch of grapes drawn on a wine label, a juice box on a menu, the joker
# figure on a playing card at 0.60), which openclipart is full of.
MIN_SCALE, MAX_SCALE = 0.65, 1.8
# The same comparison at working size, for the pairs the rules above call copies. Reused
# clip art (another pictogram in the same road-sign frame, a drawing pin alone and the same
# pin on a note, a table and a man counting coins at it) differs in details that ALIGN_SIDE
# blurs away, and the RANSAC fit can be a pixel or two off, which at working size looks
# like a difference too. So the fit is refined by ECC (`cv2.findTransformECC`, affine,
# kept if it moves no corner of the query by more than REFINE_MOVE pixels), the candidate
# is blurred by whichever of FINE_BLURS leaves the smallest residual (a blurred, rescaled or
# JPEG copy has lost detail its source has), and the residual above RESIDUAL is opened by a
# FINE_OPENING square (a caption's strokes are thinner) inside the overlap shrunk by four
# pixels (resampled edges). Its largest blob, as a share of that overlap, is
# `fine_unexplained`. Tuned on seeds 0 and 2 (20 sources each, 2,000-image workspace): the
# copies called right on single transformations left at most 0.32%, but for mirror copies
# of near-symmetric pictures that fitted unmirrored (the mirrored fit replaces them); the
# false copies 0.45-2.0%. With the turned identity and the content boxes below, seeds 1, 3,
# 5, 7, 9 and 11 called 96-99% of the single-transformation copies right at precision
# >= 0.995 (README, "Copy thresholds").
FINE_BLURS = (0.0, 1.0, 2.0, 3.0, 4.5)  # Gaussian sigma at working size; calibrate blurs to 4 px
FINE_OPENING = 5
REFINE_MOVE = 12.0
# The content boxes of query and candidate (the drawing, background and frame flooded away)
# give one more hypothesis for plain pictures without keypoints to fit: laid over each other
# by one scale if their aspect ratios agree within BOX_ASPECT (a border keeps the drawing's).
BOX_ASPECT = 1.05
# Only where RANSAC's fit has fewer inliers than this: a fit of its own on another part of
# the picture (the same car falling off a quay, drawn at another place inside the same
# warning triangle as the boxes align) means a reused element, not a framed copy.
BOX_MAX_INLIERS = 8
# The drawing itself (`background_whitened`): corner floods of the background and any frame
FILL_TOLERANCE = 12  # grey levels: a corner flood takes pixels this close to its seed
EDGE = np.ones((5, 5), np.uint8)  # a coloured flood's antialiased edge (2 px at 256)
MIN_INK = 0.01  # a flood that would leave less ink than this share is undone
ROTATION_STARTS = (0.0, -10.0, 10.0, -20.0, 20.0)  # degrees; see _turned
MAX_FINE_UNEXPLAINED = 0.004
ANGLE_SLACK = 20.0  # degrees of keypoint-orientation noise allowed on top


@dataclass(frozen=True)
class Features:
    """SIFT features of one image at working size: (n, 2) xy, (n, 128) RootSIFT, grey image."""

    points: Any
    angles: Any  # keypoint orientations, degrees
    descriptors: Any
    grey: Any  # uint8 (h, w) at working size, kept for the aligned comparison
    low_information: str | None
    # (x0, y0, x1, y1) of the drawing itself, background and any frame flooded away
    # (`background_whitened`), or None if it fills the picture
    content_box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Evidence:
    """What `verify` found for one (query, candidate) pair. Angles in degrees."""

    matches: int = 0
    inliers: int = 0
    mirrored: bool = False
    hypothesis: str = "none"  # "similarity" (RANSAC fit), "identity", "content box" or "none"
    scale: float = float("nan")  # candidate -> query scale
    rotation: float = float("nan")
    correlation: float = float("nan")  # aligned zero-normalised correlation, -1..1
    tile_correlation: float = float("nan")  # median over the tiles with content
    overlap: float = 0.0  # share of the smaller picture covered by the other, once aligned
    # largest residual blob / overlap, or ink outside the overlap / query (see RESIDUAL)
    unexplained: float = float("nan")
    # the same at working size, measured for pairs that are copies otherwise (see FINE_BLURS)
    fine_unexplained: float = float("nan")
    low_information: str | None = None  # reason, for the query or the candidate
    # 2x3 candidate -> query, row-major; for a pair compared at working size, as ECC refined it
    transform: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SIFT: Any = None


def _sift() -> Any:
    global _SIFT
    import cv2

    if _SIFT is None:
        _SIFT = cv2.SIFT_create(  # type: ignore[attr-defined]  # missing from OpenCV's stubs
            nfeatures=MAX_FEATURES, contrastThreshold=CONTRAST
        )
    return _SIFT


def _grey(img: Any, side: int = WORK_SIDE) -> Any:
    """PIL image -> uint8 grey array with longest side `side` (aspect ratio kept)."""
    from PIL import Image

    g = img.convert("L")
    w, h = g.size
    f = side / max(w, h)
    g = g.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
    return np.asarray(g, dtype=np.uint8)


def information(grey: Any) -> str | None:
    """Why a grey uint8 image carries too little to be called anybody's copy, or None.

    'blank' (uniform tone), 'tiny_foreground' (almost all background colour) or
    'featureless' is decided by `extract`, which also counts keypoints.
    """
    import cv2

    small = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    if small.std() < BLANK_STD:
        return f"blank: grey standard deviation {small.std():.3f} < {BLANK_STD}"
    border = np.r_[small[0], small[-1], small[:, 0], small[:, -1]]
    background = float(np.median(border))
    fg = float(np.mean(np.abs(small - background) > FOREGROUND_DIFF))
    if fg < MIN_FOREGROUND:
        return f"tiny_foreground: {fg:.1%} of the picture differs from its background"
    return None


def extract(img: Any, mirrored: bool = False) -> Features:
    """SIFT features of a PIL image (or its mirror image) at working size."""
    grey = _grey(img)
    if mirrored:
        grey = np.ascontiguousarray(grey[:, ::-1])
    reason = information(grey)
    kps, desc = _sift().detectAndCompute(grey, None)
    if desc is None or len(kps) == 0:
        points, desc = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
        angles = np.zeros(0, np.float32)
    else:
        order = np.argsort([-k.response for k in kps], kind="stable")  # strongest first
        points, desc = np.array([kps[i].pt for i in order], np.float32), desc[order]
        angles = np.array([kps[i].angle for i in order], np.float32)
        desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-7))  # RootSIFT
    if reason is None and len(points) < MIN_KEYPOINTS and float(grey.std()) < 40:
        reason = f"featureless: {len(points)} keypoints"
    return Features(points, angles, desc.astype(np.float32), grey, reason, _content_box(grey))


def ink(grey: Any) -> Any:
    """The pixels of a `background_whitened` grey image that are not background."""
    return grey < 255 - FILL_TOLERANCE


def background_whitened(grey: Any) -> Any:
    """`grey` (uint8) with its background, frame and rotation fill turned white: flood from
    the four corners; a flood that started on a colour (a frame, a fill, a dark background)
    also takes its antialiased edge. While what is left is a rectangle (its bounding box's
    corners not flooded: a picture inside a frame or a margin), flood again from its
    corners, to reach the picture's own background inside the frame."""
    import cv2

    g = np.ascontiguousarray(grey, np.uint8).copy()
    h, w = g.shape
    flooded = np.zeros((h, w), bool)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (255 << 8)
    tol = (FILL_TOLERANCE,)
    for _ in range(4):  # a frame, its antialiased edge, a margin, the picture's background
        rows, cols = np.flatnonzero((~flooded).any(1)), np.flatnonzero((~flooded).any(0))
        corners = [(int(c), int(r)) for r in (rows[0], rows[-1]) for c in (cols[0], cols[-1])]
        if any(flooded[y, x] for x, y in corners):
            break  # what is left is a drawing, not a rectangle inside a frame
        mask = np.zeros((h + 2, w + 2), np.uint8)
        coloured = False
        for x, y in corners:
            if not mask[y + 1, x + 1]:
                coloured |= int(g[y, x]) < 255 - FILL_TOLERANCE
                cv2.floodFill(g, mask, (x, y), 0, tol, tol, flags)  # type: ignore[call-overload]
        region = mask[1:-1, 1:-1] > 0
        if coloured:
            region = cv2.dilate(region.astype(np.uint8), EDGE) > 0
        if not (region & ~flooded).any():
            break
        out = g.copy()
        out[region] = 255
        if ink(out).mean() < MIN_INK:  # the picture was all background colour: keep it
            break
        g, flooded = out, flooded | region
    return g


def _content_box(grey: Any) -> tuple[float, float, float, float] | None:
    drawn = ink(background_whitened(grey))
    if drawn.mean() < MIN_FOREGROUND:
        return None
    rows, cols = np.flatnonzero(drawn.any(1)), np.flatnonzero(drawn.any(0))
    box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
    h, w = grey.shape
    return None if box == (0.0, 0.0, float(w), float(h)) else box


def _moved(a: Any, b: Any, shape: tuple[int, ...]) -> float:
    """How far (pixels) two 2x3 transforms carry a corner of a (h, w) picture apart."""
    h, w = shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64)
    return float(np.abs(corners @ (np.asarray(a, np.float64) - np.asarray(b, np.float64)).T).max())


def _boxed(q: Features, c: Features) -> Any:
    """The similarity that lays `c`'s drawing over `q`'s (content boxes), or None: a border
    or margin around a copy of a plain picture, too few keypoints for RANSAC to fit it."""
    qb = q.content_box or (0.0, 0.0, float(q.grey.shape[1]), float(q.grey.shape[0]))
    cb = c.content_box or (0.0, 0.0, float(c.grey.shape[1]), float(c.grey.shape[0]))
    if q.content_box is None and c.content_box is None:
        return None  # the identity already lays one frame over the other
    sx, sy = (qb[2] - qb[0]) / (cb[2] - cb[0]), (qb[3] - qb[1]) / (cb[3] - cb[1])
    if abs(np.log(sx / sy)) > np.log(BOX_ASPECT):
        return None  # not one scale: a crop cut the drawing, or another drawing
    scale = float(np.sqrt(sx * sy))
    if not MIN_SCALE <= scale <= MAX_SCALE:
        return None
    qc = np.array([qb[0] + qb[2], qb[1] + qb[3]]) / 2
    cc = np.array([cb[0] + cb[2], cb[1] + cb[3]]) / 2
    shift = qc - scale * cc
    return np.array([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]], np.float64)


def _matches(a: Features, b: Features) -> tuple[Any, Any]:
    """Mutual nearest neighbours passing the ratio test: (query points, candidate points)."""
    import cv2

    if len(a.points) < 2 or len(b.points) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    m = cv2.BFMatcher(cv2.NORM_L2)
    fwd = m.knnMatch(a.descriptors, b.descriptors, k=2)
    back = (
        {x[0].queryIdx: x[0].trainIdx for x in m.knnMatch(b.descriptors, a.descriptors, k=1)}
        if MUTUAL
        else {}
    )
    pairs = [
        (x[0].queryIdx, x[0].trainIdx)
        for x in fwd
        if len(x) == 2
        and x[0].distance < RATIO * x[1].distance
        and (not MUTUAL or back.get(x[0].trainIdx) == x[0].queryIdx)
    ]
    if not pairs:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    qi, ci = np.array(pairs).T
    # a copy turns every keypoint by the same small angle: matches that disagree by more
    # than MAX_ROTATION (+ slack for orientation noise) cannot belong to a plausible fit, and
    # on symmetric pictures they would let RANSAC prefer the half-turn
    turn = (a.angles[qi] - b.angles[ci] + 180.0) % 360.0 - 180.0
    keep = np.abs(turn) <= MAX_ROTATION + ANGLE_SLACK
    return a.points[qi[keep]], b.points[ci[keep]]


def _unexplained(q: Any, c: Any, inside: Any) -> float:
    """The largest blob the aligned candidate `c` leaves unexplained in `q` (see RESIDUAL),
    as a share of the overlap `inside`."""
    strong = ((np.abs(q - _gain_fitted(q, c, inside)) > RESIDUAL * 255) & inside).astype(np.uint8)
    return _largest_opened_blob(strong) / max(1, int(inside.sum()))


def _gain_fitted(q: Any, c: Any, inside: Any) -> Any:
    """`c` mapped onto `q` by the one gain and offset that fit them best over `inside` (a grey,
    recoloured or re-contrasted copy fits)."""
    a, b = q[inside], c[inside]
    var = float(b.var())
    gain = float(((a - a.mean()) * (b - b.mean())).mean() / var) if var > 1e-6 else 0.0
    return gain * (c - b.mean()) + a.mean()


def _flat(q: Any) -> Any:
    """Pixels whose 3x3 neighbourhood spans less than FLAT_RANGE grey levels: fill."""
    import cv2

    square = np.ones((3, 3), np.uint8)
    return cv2.dilate(q, square) - cv2.erode(q, square) < FLAT_RANGE


def _largest_opened_blob(mask: Any, side: int = 3) -> int:
    """Pixels in the largest 8-connected blob of uint8 `mask` once opened by a square."""
    import cv2

    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((side, side), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0


def _ink_outside(q: Any, inside: Any) -> float:
    """The largest blob of ink in `q` outside the aligned candidate `inside` (grown by two
    pixels for resampled edges), as a share of `q`: pixels neither in a flat fill region nor
    within RESIDUAL of a fill next to them (the step between a border and a rotation's fill
    is a line of in-between pixels that the 3x3 opening removes; an outline is not)."""
    import cv2

    outside = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    if outside.sum() < 16:
        return 0.0
    flat = _flat(q) & outside
    n, labels, stats, _ = cv2.connectedComponentsWithStats(flat.astype(np.uint8), connectivity=4)
    fills = sorted(
        (i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_FILL * q.size),
        key=lambda i: -stats[i, cv2.CC_STAT_AREA],
    )[:10]
    explained = np.zeros(q.shape, bool)
    for i in fills:
        fill = labels == i
        beside = cv2.dilate(fill.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        explained |= fill | (beside & (np.abs(q - float(np.median(q[fill]))) <= RESIDUAL * 255))
    return _largest_opened_blob((outside & ~explained).astype(np.uint8)) / q.size


def _aligned(query: Any, cand: Any, transform: Any) -> tuple[float, float, float, float]:
    """(correlation, overlap share, median tile correlation, unexplained share) of `cand`
    warped into `query`'s frame; correlations are zero-normalised, over the aligned
    overlap."""
    import cv2

    h, w = query.shape
    f = ALIGN_SIDE / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    q = cv2.resize(query, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    t = np.asarray(transform, np.float64).copy()
    t *= f  # candidate (working px) -> query at the comparison size
    c = cv2.warpAffine(cand.astype(np.float32), t, size, flags=cv2.INTER_AREA, borderValue=-1.0)
    mask = cv2.warpAffine(
        np.ones(cand.shape, np.float32), t, size, flags=cv2.INTER_NEAREST, borderValue=0.0
    )
    inside = mask > 0.5
    # the share of the smaller picture that the other one covers: a bordered copy holds
    # all of its source in part of its area, a crop is all inside its source
    cand_area = abs(np.linalg.det(t[:, :2])) * cand.shape[0] * cand.shape[1]
    overlap = float(inside.sum() / max(1.0, min(inside.size, cand_area)))
    if inside.sum() < 16:
        return float("nan"), overlap, float("nan"), float("nan")
    qb, cb = cv2.GaussianBlur(q, (3, 3), 0.8), cv2.GaussianBlur(c, (3, 3), 0.8)
    corr = _correlation(qb[inside], cb[inside])
    unexplained = max(_unexplained(qb, cb, inside), _ink_outside(q, inside))
    # per tile: an overlaid caption spoils the tiles it covers, not the others
    th, tw = size[1] // TILES, size[0] // TILES
    if th < 2 or tw < 2:
        return corr, overlap, float("nan"), unexplained

    def tiles(a: Any) -> Any:
        return (
            a[: th * TILES, : tw * TILES]
            .reshape(TILES, th, TILES, tw)
            .swapaxes(1, 2)
            .reshape(TILES * TILES, -1)
        )

    m, a, b = tiles(inside.astype(np.float32)), tiles(qb), tiles(cb)
    cnt = np.maximum(m.sum(1, keepdims=True), 1)
    a, b = a - (a * m).sum(1, keepdims=True) / cnt, b - (b * m).sum(1, keepdims=True) / cnt
    va, vb, cov = (a * a * m).sum(1), (b * b * m).sum(1), (a * b * m).sum(1)
    n = cnt[:, 0]
    content = (m.mean(1) >= 0.5) & (np.maximum(va, vb) / n > 64) & (va > 1e-6) & (vb > 1e-6)
    tiled = (
        float(np.median(cov[content] / np.sqrt(va[content] * vb[content])))
        if content.any()
        else float("nan")
    )
    return corr, overlap, tiled, unexplained


def _refined(query: Any, cand: Any, transform: Any) -> Any:
    """`transform` (candidate -> query, 2x3) refined by ECC on the two float grey images at
    working size, or unchanged if ECC does not converge or moves a corner too far."""
    import cv2

    forward = np.vstack([np.asarray(transform, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    start = np.linalg.inv(forward)[:2].astype(np.float32)  # ECC's warp: query -> candidate
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4)
    try:
        # its default 5x5 Gaussian pre-blur; the stubs omit that argument
        _, warp = cv2.findTransformECC(query, cand, start.copy(), cv2.MOTION_AFFINE, criteria, None)
    except cv2.error:  # no convergence (flat pictures, a poor start): keep the fit
        return forward[:2]
    if not np.isfinite(warp).all() or _moved(warp, start, query.shape) > REFINE_MOVE:
        return forward[:2]
    return np.linalg.inv(np.vstack([warp.astype(np.float64), [0.0, 0.0, 1.0]]))[:2]


def _turned(query: Any, cand: Any, transform: Any) -> Any:
    """The identity `transform` turned about the query's centre by Euclidean ECC started at
    each of ROTATION_STARTS, best ECC correlation kept, or unchanged if none converges
    within MAX_ROTATION keeping the centre within REFINE_MOVE pixels. A plain shape rotated
    with fill (a heart, a disc on a sign) has too few keypoints for a RANSAC fit, and its
    identity alignment agrees at ALIGN_SIDE yet leaves the turned edges at working size."""
    import cv2

    h, w = query.shape
    forward = np.vstack([np.asarray(transform, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    stretched = cv2.warpAffine(
        cand, forward[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    centre = np.array([w / 2.0, h / 2.0])
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    best: tuple[float, Any] | None = None
    for angle in ROTATION_STARTS:
        start = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
        try:
            rho, warp = cv2.findTransformECC(
                query, stretched, start.astype(np.float32), cv2.MOTION_EUCLIDEAN, criteria, None
            )
        except cv2.error:
            continue
        warp = warp.astype(np.float64)  # query -> stretched candidate
        turn = float(np.degrees(np.arctan2(warp[1, 0], warp[0, 0])))
        shift = float(np.hypot(*(warp[:, :2] @ centre + warp[:, 2] - centre)))
        ok = np.isfinite(warp).all() and abs(turn) <= MAX_ROTATION and shift <= REFINE_MOVE
        if ok and (best is None or rho > best[0]):
            best = (float(rho), warp)
    if best is None:
        return forward[:2]
    back = np.linalg.inv(np.vstack([best[1], [0.0, 0.0, 1.0]]))  # stretched -> query
    return (back @ forward)[:2]


def _blurred(a: Any, sigma: float) -> Any:
    import cv2

    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(a, (k, k), sigma) if sigma > 0 else a


def _fine_unexplained(query: Any, cand: Any, transform: Any, identity: bool = False) -> float:
    """The largest blob `cand` aligned by `transform` leaves unexplained in `query` at
    working size (see FINE_BLURS), as a share of the overlap; NaN without one. `identity`:
    `transform` is no keypoint fit (the identity, the content boxes), which ECC may also
    turn (`_turned`)."""
    return _fine_compared(query, cand, transform, identity)[0]


def _fine_compared(
    query: Any, cand: Any, transform: Any, identity: bool = False
) -> tuple[float, Any]:
    """(`_fine_unexplained`, the refined 2x3 transform it was measured with)."""
    import cv2

    q, c = query.astype(np.float32), cand.astype(np.float32)
    t = np.asarray(transform, np.float64).reshape(2, 3)
    size = (q.shape[1], q.shape[0])

    def footprint_of(t: Any) -> Any:
        return cv2.warpAffine(
            np.ones(c.shape, np.uint8), t, size, flags=cv2.INTER_NEAREST, borderValue=0
        )

    if (cv2.erode(footprint_of(t), np.ones((9, 9), np.uint8)) > 0).sum() < 100:
        return float("nan"), t
    refined = _refined(q, c, t)
    if identity and np.array_equal(refined, t):  # ECC moved too far: perhaps a turn
        refined = _turned(q, c, t)
    t = refined
    # the footprint of the transform compared: a turned candidate leaves the corners out
    footprint = footprint_of(t)
    inside = cv2.erode(footprint, np.ones((9, 9), np.uint8)) > 0
    if inside.sum() < 100:
        return float("nan"), t
    warped = cv2.warpAffine(c, t, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    qb = _blurred(q, 0.8)
    best: tuple[float, Any] | None = None
    for sigma in FINE_BLURS:
        fitted = _gain_fitted(qb, _blurred(warped, float(np.hypot(sigma, 0.8))), inside)
        error = float(np.abs(qb[inside] - fitted[inside]).mean())
        if best is None or error < best[0]:
            best = (error, fitted)
    assert best is not None
    strong = (np.abs(qb - best[1]) > RESIDUAL * 255) & inside & ~_fill_mostly_outside(q, footprint)
    return _largest_opened_blob(strong.astype(np.uint8), FINE_OPENING) / int(inside.sum()), t


def _fill_mostly_outside(q: Any, footprint: Any) -> Any:
    """Flat regions of `q` (see FLAT_RANGE) lying mostly outside the candidate's `footprint`:
    a border or a rotation's fill, which covers whatever part of the source the copy cut
    away (a rotated copy's corners, then framed; a crop, then framed)."""
    import cv2

    flat = _flat(q).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=4)
    outside = np.bincount(labels[(footprint == 0) & (flat > 0)], minlength=n)
    # mostly outside: a frame, not the white background a sign's interior connects to
    fills = (outside >= MIN_FILL * q.size) & (outside >= 0.5 * stats[:, cv2.CC_STAT_AREA])
    fills[0] = False
    return fills[labels]


def _correlation(a: Any, b: Any) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-6 else float("nan")


def _identity(query: Any, cand: Any) -> Any:
    """The transform that stretches `cand` over `query` (what rescaling does)."""
    (qh, qw), (ch, cw) = query.shape, cand.shape
    return np.array([[qw / cw, 0, 0], [0, qh / ch, 0]], np.float64)


def _fit(q: Features, c: Features) -> tuple[Evidence, Any, Any, Any]:
    """RANSAC's similarity fit of `c` onto `q`: (evidence, 2x3 transform or None, and the
    matched query and candidate points)."""
    import cv2

    qp, cp = _matches(q, c)
    if len(qp) < 3:
        return Evidence(matches=len(qp)), None, qp, cp
    t, inl = cv2.estimateAffinePartial2D(
        cp, qp, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=2000, confidence=0.99
    )
    if t is None:
        return Evidence(matches=len(qp)), None, qp, cp
    scale = float(np.hypot(t[0, 0], t[1, 0]))
    rot = float(np.degrees(np.arctan2(t[1, 0], t[0, 0])))
    return (
        Evidence(
            matches=len(qp),
            inliers=int(inl.sum()),
            scale=scale,
            rotation=rot,
            hypothesis="similarity",
            transform=tuple(float(v) for v in t.ravel()),
        ),
        t,
        qp,
        cp,
    )


def _supporting(qp: Any, cp: Any, transform: Any) -> int:
    """How many matches `transform` (candidate -> query) carries to within `RANSAC_PX`."""
    if len(qp) == 0:
        return 0
    t = np.asarray(transform, np.float64).reshape(2, 3)
    moved = cp.astype(np.float64) @ t[:, :2].T + t[:, 2]
    return int((np.hypot(*(moved - qp).T) <= RANSAC_PX).sum())


def verify(
    query: Any,
    candidate: Any,
    query_features: tuple[Features, Features] | None = None,
    candidate_features: Features | None = None,
) -> Evidence:
    """Evidence that `candidate` (PIL) is the source of `query` (PIL), mirror included.

    Pass precomputed features (`(extract(q), extract(q, mirrored=True))`, `extract(c)`) to
    verify one query against many candidates without describing it again.
    """
    qf = query_features or (extract(query), extract(query, mirrored=True))
    cf = candidate_features or extract(candidate)
    low = qf[0].low_information or cf.low_information
    best: Evidence | None = None
    for mirrored, q in ((False, qf[0]), (True, qf[1])):
        if mirrored and best is not None and is_copy(best) and best.correlation >= 0.9:
            break  # a confident copy as it is: the mirror image cannot do better
        ev, t, qp, cp = _fit(q, cf)
        hyps = [] if t is None or not _plausible(ev) else [(ev, t)]
        # the identity's own keypoint support: the matches it carries onto each other
        ident = _identity(q.grey, cf.grey)
        hyps.append(
            (
                Evidence(
                    matches=ev.matches, inliers=_supporting(qp, cp, ident), hypothesis="identity"
                ),
                ident,
            )
        )
        # the content boxes laid over each other, where the keypoints fit no transform of
        # their own and that is not the identity again
        boxed = _boxed(q, cf) if ev.inliers < BOX_MAX_INLIERS else None
        if boxed is not None and _moved(boxed, ident, cf.grey.shape) > 2.0:
            support = _supporting(qp, cp, boxed)
            box = Evidence(
                matches=ev.matches,
                inliers=support,
                hypothesis="content box",
                scale=float(boxed[0, 0]),
                rotation=0.0,
            )
            hyps.append((box, boxed))
        for e, tr in hyps:
            corr, overlap, tiled, unexplained = _aligned(q.grey, cf.grey, tr)
            e = Evidence(
                **{
                    **e.to_dict(),
                    "mirrored": mirrored,
                    "correlation": corr,
                    "tile_correlation": tiled,
                    "overlap": overlap,
                    "unexplained": unexplained,
                    "low_information": low,
                    "transform": tuple(float(v) for v in np.asarray(tr).ravel()),
                }
            )
            if is_copy(e):  # only a copy so far is worth the closer look
                # the transform the pair was last compared with, for the page's overlay
                share, refined = _fine_compared(
                    q.grey, cf.grey, tr, identity=e.hypothesis != "similarity"
                )
                e = replace(
                    e,
                    fine_unexplained=share,
                    transform=tuple(float(v) for v in np.asarray(refined).ravel()),
                )
            if best is None or _rank(e) > _rank(best):
                best = e
    assert best is not None
    return best


def _plausible(e: Evidence) -> bool:
    """A copy edit rescales within `MIN_SCALE`..`MAX_SCALE` (at working size) and tilts by
    less than `MAX_ROTATION`; a quarter turn is a different composition (one cone drawn
    upright and one lying down share their keypoints), not a copy."""
    return MIN_SCALE <= e.scale <= MAX_SCALE and abs(e.rotation) <= MAX_ROTATION


def strength(e: Evidence) -> float:
    """One number to rank candidates by: copies first, then copies but for an unexplained
    blob (`near`), then correlation, then inliers."""
    corr = float(np.nan_to_num(e.correlation, nan=-2.0))
    held = held_back_by_unexplained(e)
    return 10.0 * is_copy(e) + 5.0 * held + corr + 0.001 * min(e.inliers, 500)


def _rank(e: Evidence) -> float:
    return strength(e)


def is_copy(e: Evidence) -> bool:
    """The verifier's verdict: enough inliers on one transform (or a near-perfect identity
    alignment) and a high correlation over enough of the picture; never on low information."""
    if e.low_information is not None or not np.isfinite(e.correlation) or e.overlap < MIN_OVERLAP:
        return False
    if e.unexplained > MAX_UNEXPLAINED or e.fine_unexplained > MAX_FINE_UNEXPLAINED:
        return False
    if e.hypothesis == "similarity":
        # The tile median forgives a caption over part of the picture, but it also forgives
        # a different pictogram inside the same road-sign frame or a different suit beside
        # the same card face: it only ever backs a high global correlation, never replaces it.
        if not MIN_SCALE <= e.scale <= MAX_SCALE:
            return False
        corr = max(e.correlation, np.nan_to_num(e.tile_correlation, nan=-1.0))
        return (
            (e.inliers >= MIN_INLIERS and e.correlation >= MIN_CORRELATION)
            or (e.inliers >= MANY_INLIERS and e.correlation >= MANY_INLIERS_CORRELATION)
        ) or (
            e.inliers >= FEW_INLIERS
            and corr >= FEW_INLIERS_CORRELATION
            and e.correlation >= FEW_INLIERS_GLOBAL
        )
    # the identity, or the content boxes laid over each other (no keypoints fitted either)
    return e.hypothesis in ("identity", "content box") and (
        (e.correlation >= MIN_CORRELATION_IDENTITY and e.inliers >= MIN_IDENTITY_SUPPORT)
        or e.correlation >= MIN_CORRELATION_UNSUPPORTED
    )


def held_back_by_unexplained(e: Evidence) -> bool:
    """The copy rule holds but for a blob the alignment leaves unexplained: a drawing added
    to a training picture, a training picture drawn among other ink (a figure beside it, a
    card around it), or a generated copy with a smudge on it (the memorisation
    experiment's samples of an image repeated 32 times). `near`, for a person to look at."""
    left = e.unexplained > MAX_UNEXPLAINED or e.fine_unexplained > MAX_FINE_UNEXPLAINED
    return (
        not is_copy(e)
        and left
        and is_copy(replace(e, unexplained=0.0, fine_unexplained=float("nan")))
    )


def settings() -> dict[str, Any]:
    """The verifier's parameters and thresholds, for summaries and reports."""
    names = (
        "WORK_SIDE MAX_FEATURES CONTRAST RATIO RANSAC_PX MAX_ROTATION ANGLE_SLACK ALIGN_SIDE "
        "TILES BLANK_STD FOREGROUND_DIFF MIN_FOREGROUND MIN_KEYPOINTS MIN_INLIERS "
        "MIN_CORRELATION MANY_INLIERS MANY_INLIERS_CORRELATION FEW_INLIERS FEW_INLIERS_CORRELATION FEW_INLIERS_GLOBAL "
        "MIN_CORRELATION_IDENTITY MIN_IDENTITY_SUPPORT MIN_CORRELATION_UNSUPPORTED MIN_OVERLAP "
        "MIN_SCALE MAX_SCALE RESIDUAL MAX_UNEXPLAINED FLAT_RANGE MIN_FILL FINE_BLURS FINE_OPENING "
        "REFINE_MOVE ROTATION_STARTS BOX_ASPECT BOX_MAX_INLIERS MAX_FINE_UNEXPLAINED"
    ).split()
    return {n.lower(): globals()[n] for n in names}


def overlay(query: Any, candidate: Any, transform: Any, mirrored: bool, side: int = 160) -> Any:
    """query | candidate | aligned overlap, as one RGB PIL image.

    The overlap shows the query in red and the candidate, warped into the query's frame by
    the verifier's transform, in green and blue: where they agree the picture is grey,
    where they differ it is red or cyan. Without a transform the third panel is blank.
    """
    import cv2
    from PIL import Image

    qg = _grey(query)
    if mirrored:
        qg = np.ascontiguousarray(qg[:, ::-1])
    cg = _grey(candidate)
    h, w = qg.shape
    panel = Image.new("RGB", (3 * side + 16, side), (255, 255, 255))
    for i, img in enumerate((Image.fromarray(qg), Image.fromarray(cg))):
        img = img.convert("RGB")
        img.thumbnail((side, side))
        panel.paste(img, (i * (side + 8), 0))
    if transform is not None:
        t = np.asarray(transform, np.float64).reshape(2, 3)
        warped = cv2.warpAffine(cg, t, (w, h), borderValue=255)
        rgb = Image.fromarray(np.dstack([qg, warped, warped]))
        rgb.thumbnail((side, side))
        panel.paste(rgb, (2 * (side + 8), 0))
    return panel
