"""The memorisation check's core on arrays: tiled l2, Hamming, bootstrap, verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_image
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.checks.memorisation import (
    Thresholds,
    bootstrap_rate,
    decide,
    hamming,
    relative_distances,
    tile_distance,
    tile_distance_matrix,
    tile_distances,
    to_pixels,
)


def test_tile_distance_identical_is_zero_and_symmetric():
    a, b = to_pixels(synthetic_image(1)), to_pixels(synthetic_image(2))
    assert tile_distance(a, a) == 0.0
    assert tile_distance(a, b) == pytest.approx(tile_distance(b, a))
    assert 0.0 < tile_distance(a, b) <= 1.0


def test_tile_distance_extremes_and_golden_value():
    black, white = np.zeros((64, 64, 3), np.float32), np.ones((64, 64, 3), np.float32)
    assert tile_distance(black, white) == pytest.approx(1.0)
    # a uniform shift of every pixel by 0.05 is 0.05 in every tile, so the max is 0.05
    assert tile_distance(black + 0.05, black) == pytest.approx(0.05, abs=1e-6)


def test_one_altered_tile_counts_more_than_a_uniform_small_shift():
    rng = np.random.default_rng(0)
    a = rng.random((64, 64, 3), dtype=np.float32) * 0.8
    shifted = a + 0.04  # the whole image a little brighter
    patched = a.copy()
    patched[:16, :16] = 1.0 - patched[:16, :16]  # one 16x16 tile replaced
    whole_l2 = lambda x, y: float(np.sqrt(np.mean((x - y) ** 2)))  # noqa: E731
    assert tile_distance(a, patched) > tile_distance(a, shifted)
    # the max over tiles is what makes the local change count: a whole-image RMS dilutes it 16x
    assert tile_distance(a, patched) > 3 * whole_l2(a, patched)


def test_tile_distance_matrix_matches_pairwise():
    imgs = np.stack([to_pixels(synthetic_image(s)) for s in range(5)])
    m = tile_distance_matrix(imgs[:3], imgs)
    assert m.shape == (3, 5)
    assert np.allclose(np.diag(m[:, :3]), 0)
    for i in range(3):
        assert np.allclose(m[i], tile_distances(np.broadcast_to(imgs[i], imgs.shape), imgs))


def test_pil_input_and_rescale_is_close():
    img = synthetic_image(3, size=128)
    small = img.resize((96, 96))
    other = synthetic_image(4, size=128)
    assert tile_distance(img, small) < 0.05 < tile_distance(img, other)


def test_hamming_popcount():
    assert hamming(np.uint64(0), np.uint64(2**64 - 1)) == 64
    assert hamming(np.int64(-1), np.int64(0)) == 64  # signed storage of the same bits
    assert hamming(0b1011, 0b0001) == 2
    assert np.array_equal(hamming(np.array([[1, 2]]), np.array([[1], [3]])), [[0, 2], [1, 1]])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_hamming_is_a_metric_on_random_codes(a, b):
    assert hamming(a, a) == 0
    assert hamming(a, b) == hamming(b, a) == bin(a ^ b).count("1")


def test_relative_distances():
    d = np.array([0.0, 0.3, 0.4])
    assert relative_distances(d)[0] == 0.0
    # all neighbours equally far: d / (0.5 * mean) = 2, far from a copy
    assert np.allclose(relative_distances([0.3, 0.3, 0.3]), 2.0)
    # the mean comes from the neighbours given (duplicates collapsed by the caller)
    assert np.allclose(relative_distances([0.1, 0.1], neighbours=[0.1, 0.5]), 0.1 / (0.5 * 0.3))
    assert np.isnan(relative_distances([0.2], neighbours=[0.2])).all()


def test_bootstrap_interval_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 500, 5000):
        flags = rng.random(n) < 0.1
        p, lo, hi = bootstrap_rate(flags, reps=2000, seed=0)
        assert p == pytest.approx(flags.mean())
        assert lo <= p <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0
    # the binomial shortcut agrees with resampling indices (same distribution)
    flags = rng.random(400) < 0.2
    idx = rng.integers(0, 400, (2000, 400))
    lo2, hi2 = np.percentile(flags[idx].mean(1), [2.5, 97.5])
    _, lo, hi = bootstrap_rate(flags)
    assert abs(lo - lo2) < 0.015 and abs(hi - hi2) < 0.015


def test_bootstrap_edge_cases():
    assert bootstrap_rate(np.zeros(10, bool)) == (0.0, 0.0, 0.0)
    assert bootstrap_rate(np.ones(10, bool)) == (1.0, 1.0, 1.0)
    assert all(np.isnan(bootstrap_rate([])))


def test_decide_rule():
    th = Thresholds(
        copy_tile=0.02,
        near_tile=0.1,
        copy_relative=0.3,
        near_relative=1.5,
        copy_hamming=None,
        near_hamming=6,
        copy_cosine=0.97,
        near_cosine=0.9,
    )
    nan = np.nan
    tile = np.array([0.01, 0.05, 0.05, 0.5, 0.5, nan, 0.5, 0.05])
    rel = np.array([1.9, 2.0, 1.0, 0.2, 1.9, nan, 1.9, 2.0])
    ham = np.array([30, 4, 30, 30, 30, 0, 30, 30])
    cos = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.95, 0.98])
    codes, votes = decide(tile, rel, ham, cos, th)
    # strong tile; tile+phash near; tile+relative near; strong relative; nothing;
    # unreadable image with phash 0 (phash alone never strong); cosine near only; strong cosine + tile near
    assert codes.tolist() == [0, 0, 0, 0, 2, 1, 1, 0]
    assert votes.tolist() == [1, 2, 2, 1, 0, 1, 1, 2]
    # with untrained weights the cosine does not vote at all
    codes, votes = decide(tile, rel, ham, cos, th, use_cosine=False)
    assert codes.tolist() == [0, 0, 0, 0, 2, 1, 2, 1]
    # a None threshold switches that level off
    codes, _ = decide(tile, rel, ham, cos, Thresholds(**{**th.to_dict(), "copy_tile": None}))
    assert codes[0] == 1


def test_loss_auc_on_planted_losses():
    from audit.checks.memorisation import loss_auc

    rng = np.random.default_rng(0)
    members, others = rng.normal(0.1, 0.02, 40), rng.normal(0.3, 0.05, 60)
    auc, (lo, hi) = loss_auc(members, others, reps=500)
    assert auc > 0.99 and lo <= auc <= hi
    same_auc, (lo, hi) = loss_auc(rng.normal(0.3, 0.05, 300), rng.normal(0.3, 0.05, 300), reps=500)
    assert lo < 0.5 < hi and abs(same_auc - 0.5) < 0.08
    # members with *higher* loss than the others: below chance, not flipped
    assert loss_auc(others, members, reps=50)[0] < 0.01
    with pytest.raises(Exception, match="needs losses"):
        loss_auc([], others)
