"""The match benchmark's pieces: planted sources are found, both index kinds are measured,
the vote counting is timed on the same search answers, and the workspace-scale figures
follow `audit.features`' own index choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit import features, sample
from audit.bench import match
from audit.checks import calibrate


def test_flat_index_finds_every_planted_source():
    row = match._search(1_000, 30, seed=3)
    assert row["index"] == {"kind": "flat"}
    assert row["indexed_descriptors"] == 1_000 * match.PER_IMAGE
    assert row["source_in_top10"] == 1.0
    assert row["train_seconds"] == 0.0
    assert row["faiss_search_ms_per_query"] > 0 and row["vote_counting_ms_per_query"] > 0


def test_past_flat_max_the_bench_trains_the_ivf_index_features_picks():
    n = features.FLAT_MAX // match.PER_IMAGE + 500
    row = match._search(n, 20, seed=4)
    _, spec = features._index(n * match.PER_IMAGE, 128)
    assert row["index"]["kind"] == "ivf_sq8" == spec["kind"]
    assert row["index"]["nlist"] == spec["nlist"] and row["index"]["nprobe"] == spec["nprobe"]
    assert row["index"]["training_descriptors"] == min(n * match.PER_IMAGE, 256 * spec["nlist"])
    assert row["train_seconds"] > 0
    assert row["source_in_top10"] >= 0.9  # approximate search: nearly all, not necessarily all


def test_vote_counting_alone_gives_the_same_candidates():
    rng = np.random.default_rng(0)
    x = match._descriptors(200, rng)
    owners = np.repeat(np.arange(200), match.PER_IMAGE)
    index, _, _ = match._index(x, 0)
    sources = np.arange(0, 200, 20)
    qs = [
        [type("F", (), {"descriptors": x[s * match.PER_IMAGE : (s + 1) * match.PER_IMAGE]})()]
        for s in sources
    ]
    out = match._vote(index, owners, qs, sources)  # asserts the two votes agree
    assert out["hits"] == [True] * len(sources)
    assert out["query_descriptors_mean"] == match.PER_IMAGE


def test_workspace_scale_uses_features_index_choice_and_scales_training_cost():
    measured = {
        "training_images": 100_000,
        "indexed_descriptors": 1_600_000,
        "index": {
            "kind": "ivf_sq8",
            "nlist": 5059,
            "nprobe": 16,
            "training_descriptors": 1_295_104,
        },
        "train_seconds": 100.0,
    }
    w = match._at_workspace_scale(measured)
    n = 100_000 * features.PER_IMAGE
    _, spec = features._index(n, 128)
    assert w["descriptors"] == n and w["index"] == spec
    assert w["training_descriptors"] == min(n, 256 * spec["nlist"])
    expected = 100.0 * w["training_descriptors"] * spec["nlist"] / (1_295_104 * 5059)
    assert w["train_seconds_estimated"] == pytest.approx(expected, abs=0.5)
    assert w["descriptors_mb"] == pytest.approx(n * 512 / 2**20, abs=0.1)


@pytest.mark.skipif(
    not Path(sample.SOURCE_ROOT).is_dir(), reason="Debian's openclipart-png not installed"
)
def test_real_copies_are_searched_by_ivf_and_exactly(monkeypatch):
    monkeypatch.setattr(match, "EXACT_QUERIES", 4)  # fewer exact queries than queries
    row = match._real(60, 12, seed=5)
    assert row["queries"] == 12 and row["exact_queries"] == 4
    assert set(row["source_in_top10_by_transformation"]) == set(calibrate.TRANSFORMS)
    assert 0 <= row["source_in_top10_exact_index"] <= 1
    assert row["source_or_same_family_in_top10"] >= row["source_in_top10"]
    assert row["training_images"] + row["skipped_pixel_identical"] + row["skipped_unusable"] == 60
    # the match stage's candidates hold the feature top 10, and twins only add to them
    assert row["source_in_candidates"] >= row["source_in_top10"]
    assert row["source_or_twin_in_candidates"] >= row["source_in_candidates"]
    assert set(row["source_in_candidates_by_transformation"]) == set(calibrate.TRANSFORMS)
    # the thumbnails only add candidates, measured beside the union without them
    assert row["source_in_candidates"] >= row["source_in_candidates_before"]
    assert row["source_in_candidates"] >= row["source_in_thumbnail_top10"]
    assert row["source_or_twin_in_candidates"] >= row["source_or_twin_in_candidates_before"]
    assert row["thumbnail_index"] == {"kind": "flat"} and row["thumbnail_ms_per_query"] > 0
    assert 0 <= row["star_queries"] <= 12 and row["twin_groups"] <= row["training_images"]
    assert set(row["without_stars"]["source_in_candidates_by_transformation"]) == set(
        calibrate.TRANSFORMS
    )


def test_thumbnail_search_uses_the_stage_index_kind_and_finds_the_noisy_source():
    small = match._thumbnail_search(2_000, 20, seed=1)
    assert small["index"] == {"kind": "flat"} and small["query_vectors"] == 18
    assert small["source_in_top10"] == 1.0
    big = match._thumbnail_search(features.THUMB_FLAT_MAX + 1_000, 20, seed=2)
    _, spec = features._index(features.THUMB_FLAT_MAX + 1_000, 256, features.THUMB_FLAT_MAX)
    assert big["index"]["kind"] == "ivf_sq8" and big["index"]["nlist"] == spec["nlist"]
    assert big["source_in_top10"] >= 0.9  # approximate, nearly all


def test_hamming_the_bench_uses_counts_differing_bits_of_64_on_uint64_codes():
    import numpy as np

    from audit.checks.memorisation.core import hamming

    codes = np.array([0, 1, 2**64 - 1, 0b1011], np.uint64)  # as `hashes.hash_images` gives
    assert hamming(codes, np.uint64(0)).tolist() == [0, 1, 64, 3]
    assert hamming(codes, np.uint64(2**64 - 1)).tolist() == [64, 63, 0, 61]
