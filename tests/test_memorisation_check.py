"""The memorisation check end to end: a planted copy is found and nothing else is."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import build_workspace, encode, synthetic_image

from audit.checks.memorisation import load_embeddings

N_TRAIN = 24
EXACT, TRANSFORMED = 3, 7


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A described training workspace and a folder: exact copy, crop+JPEG copy, 4 novel images."""
    import torch

    from audit import embeddings, experiments, hashes, knn

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mem")
    train = [synthetic_image(s, size=96) for s in range(N_TRAIN)]
    ws = build_workspace(root / "train", [encode(im) for im in train])
    hashes.compute(ws.root, workers=1)
    embeddings.compute(ws.root, model="tiny", pretrained="none", workers=0)
    knn.build(ws.root)
    gen = root / "generated"
    gen.mkdir()
    (gen / "a-exact.png").write_bytes(encode(train[EXACT]))
    crop = train[TRANSFORMED].crop((2, 1, 94, 95)).resize((80, 80))  # 4% cropped, rescaled
    (gen / "b-crop-jpeg.jpg").write_bytes(encode(crop, "JPEG", quality=75))
    for i, s in enumerate(range(1000, 1004)):
        (gen / f"c-novel-{i}.png").write_bytes(encode(synthetic_image(s, size=96)))
    summary = experiments.match(
        gen, against=ws.root, name="planted", report_dir=root / "reports", workers=1
    )
    return root, ws, gen, summary


def test_match_finds_exactly_the_planted_copies(planted):
    root, ws, gen, summary = planted
    m = pd.read_parquet(ws.path("memorisation/planted/matches.parquet")).sort_values(
        "generated_key"
    )
    by_file = {
        os.path.basename(f).split(".")[0]: r
        for f, r in zip(m["generated_file"], m.itertuples(), strict=True)
    }
    assert by_file["a-exact"].verdict == "copy" and by_file["a-exact"].train_row_id == EXACT
    assert (
        by_file["a-exact"].tile_distance == pytest.approx(0, abs=1e-6)
        and by_file["a-exact"].phash_hamming == 0
    )
    assert (
        by_file["b-crop-jpeg"].verdict == "copy"
        and by_file["b-crop-jpeg"].train_row_id == TRANSFORMED
    )
    novel = [r for k, r in by_file.items() if k.startswith("c-novel")]
    assert [r.verdict for r in novel] == ["novel"] * 4
    assert summary["counts"] == {"copy": 2, "near": 0, "novel": 4}
    assert summary["replication_rate"] == pytest.approx(2 / 6)
    lo, hi = summary["replication_ci95"]
    assert lo <= 2 / 6 <= hi and hi - lo > 0.1  # six images: a wide interval
    assert summary["training_images_copied"] == 2
    assert (
        "warning" in summary and summary["cosine_votes"] is False
    )  # tiny model has random weights
    # the generated images were described with the training workspace's model
    _, info = load_embeddings(type(ws).open(ws.path("memorisation/planted/generated")))
    assert info["model"] == "tiny"
    # the report page has the pairs and the histogram inlined
    page = (root / "reports" / "memorisation.html").read_text()
    assert page.count("<img") >= 3 and "replication rate" in page
    assert (root / "reports" / "memorisation.md").exists()
    # the training manifest records the check, and duckdb sees the matches view
    assert ws.open(ws.root).stage("match-planted")["status"] == "done"
    assert ws.open(ws.root).connect().execute("SELECT count(*) FROM matches").fetchone()[0] == 6


def test_match_command_and_thresholds(planted):
    from audit.cli import cli

    root, ws, gen, _ = planted
    described = ws.path(
        "memorisation/planted/generated"
    )  # an already described workspace is used as is
    # switching every descriptor off at both levels leaves nothing but novel images
    off = [
        a
        for f in ("tile", "relative", "hamming", "cosine")
        for a in (f"--copy-{f}", "none", f"--near-{f}", "none")
    ]
    r = CliRunner().invoke(
        cli,
        [
            "match",
            str(described),
            "--against",
            str(ws.root),
            "--name",
            "off",
            "--report-dir",
            str(root / "r2"),
            *off,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "replication rate 0.00%" in r.output
    s = json.loads(ws.path("memorisation/off/summary.json").read_text())
    assert s["counts"]["copy"] == 0 and s["thresholds"]["copy_tile"] is None
    assert not ws.path("memorisation/off/generated").exists()
    bad = CliRunner().invoke(
        cli, ["match", str(gen), "--against", str(ws.root), "--copy-tile", "x"]
    )
    assert bad.exit_code == 1 and "--copy-tile must be a number" in bad.output


def test_generated_model_mismatch_is_an_error(planted, tmp_path):
    import shutil

    from audit.checks import memorisation
    from audit.errors import AuditError

    _, ws, _, _ = planted
    other = tmp_path / "other"
    shutil.copytree(ws.path("memorisation/planted/generated"), other)
    info = json.loads((other / "embeddings/model.json").read_text())
    (other / "embeddings/model.json").write_text(json.dumps({**info, "model": "ViT-B-32"}))
    with pytest.raises(AuditError, match="describe the generated images"):
        memorisation.check(other, ws.root, lambda *a: None, lambda *a, **k: None, tmp_path / "o")


def test_tile_distance_of_identical_workspace_images_is_zero(planted):
    from audit.checks.memorisation import load_pixels, tile_distances

    _, ws, _, _ = planted
    px = load_pixels(ws, [0, 1, EXACT])
    assert set(px) == {0, 1, EXACT}
    assert np.all(tile_distances(px[0], px[0]) == 0) and tile_distances(px[0], px[1])[0] > 0.05


def test_folder_written_by_generate_is_read_from_its_image_files(planted, tmp_path):
    """`audit generate` writes generated.parquet + generated/*.png (img2dataset's "files" layout);
    the images must not come out missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from audit import experiments

    _, ws, _, _ = planted
    out = tmp_path / "gen"
    (out / "generated").mkdir(parents=True)
    (out / "generated" / "000000.png").write_bytes(encode(synthetic_image(EXACT, size=96)))
    (out / "generated" / "000001.png").write_bytes(encode(synthetic_image(2000, size=96)))
    pq.write_table(
        pa.table(
            {
                "key": ["000000", "000001"],
                "url": ["file:///x/0.png", "file:///x/1.png"],
                "caption": ["", ""],
                "file": ["generated/000000.png", "generated/000001.png"],
            }
        ),
        out / "generated.parquet",
    )
    s = experiments.match(
        out, against=ws.root, name="fromgenerate", report_dir=tmp_path / "r", workers=1
    )
    assert s["counts"] == {"copy": 1, "near": 0, "novel": 1} and s["errors"] == 0
