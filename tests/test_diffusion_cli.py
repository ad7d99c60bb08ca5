"""`audit train` and `audit generate` on a small workspace, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from conftest import encode, synthetic_image
from PIL import Image

from audit import diffusion
from audit.cli import cli
from audit.training import square_on_white
from audit.workspace import Workspace, atomic_write_parquet, sha256_file

CATEGORIES = ["animals / cats", "food", "animals", "food / fruit", None, "food"] * 2


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ws(make_workspace):
    """12 rows: row 3 is a corrupt file, row 5 has no image; rows 0-9 are consented."""
    imgs: list[bytes | None] = [encode(synthetic_image(i, size=40 + 4 * i)) for i in range(12)]
    imgs[3] = b"\x89PNG\r\n\x1a\n not really a png"
    imgs[5] = None
    ws = make_workspace(imgs, extra={"category": CATEGORIES})
    atomic_write_parquet(
        ws.path("optout/kept.parquet"), pa.table({"row_id": pa.array(range(10), pa.int64())})
    )
    return ws


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_square_on_white_pads_then_resizes():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    out = np.asarray(square_on_white(img, 8))
    assert out.shape == (8, 8, 3)
    assert (out[0, 0] == 255).all() and (out[-1, -1] == 255).all()  # white bands above and below
    assert tuple(out[4, 4]) == (255, 0, 0)


def test_train_refuses_without_filter_and_names_the_fix(make_workspace, tmp_path):
    ws = make_workspace([encode(synthetic_image(i)) for i in range(3)])
    result = CliRunner().invoke(cli, ["train", str(ws.root), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "optout/kept.parquet" in result.output and "audit filter" in result.output
    assert "--all-rows" in result.output
    assert not (tmp_path / "m").exists()


def test_train_then_generate(ws, tmp_path):
    model = tmp_path / "models" / "m"
    result = run(
        "train",
        ws.root,
        "--out",
        model,
        "--steps",
        2,
        "--batch-size",
        4,
        "--sample-grid",
        2,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output and "on 8 images (2 skipped)" in result.output
    rows = pq.read_table(model / "training_rows.parquet").to_pydict()
    assert rows["row_id"] == [0, 1, 2, 4, 6, 7, 8, 9]  # consented, decodable; 10, 11 opted out
    errors = pq.read_table(model / "errors.parquet").to_pydict()
    assert sorted(zip(errors["row_id"], errors["reason"], strict=True)) == [
        (3, "image_undecodable"),
        (5, "image_missing"),
    ]
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["data"]["rows"] == 8 and cfg["data"]["selection"].startswith(
        "optout/kept.parquet sha256"
    )
    assert cfg["data"]["workspace"] == str(ws.root.resolve()) and cfg["classes"] == []
    assert (model / "samples.png").exists() and (model / "loss.png").exists()

    out = tmp_path / "gen"
    result = run("generate", model, "--n", 3, "--out", out, "--steps", 4, "--seed", 10)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "generated.parquet").to_pydict()
    assert table["key"] == ["000000", "000001", "000002"] and table["seed"] == [10, 11, 12]
    assert all(Path(u.removeprefix("file://")).exists() for u in table["url"])
    assert (
        table["width"] == [32] * 3
        and table["model_sha256"] == [sha256_file(model / "model.safetensors")] * 3
    )
    assert table["sampler"] == ["ddpm"] * 3 and table["model_step"] == [2] * 3
    # The files are exactly what the library samples for those seeds.
    net, schedule, _ = diffusion.load(model)
    expected = diffusion.sample(net, schedule, 3, seed=10, steps=4)
    for i in range(3):
        assert np.array_equal(
            np.asarray(Image.open(out / "generated" / f"{i:06d}.png")), expected[i]
        )

    # `audit ingest` reads the folder as img2dataset "files" output: images and every column.
    result = run("ingest", tmp_path / "ws-gen", out)
    assert result.exit_code == 0, result.output
    con = Workspace.open(tmp_path / "ws-gen").connect()
    got = con.execute(
        "SELECT key, image_status, seed, caption FROM metadata ORDER BY key"
    ).fetchall()
    assert got == [(f"{i:06d}", "ok", 10 + i, "") for i in range(3)]

    # Running again replaces the earlier images; a folder of something else is refused.
    assert run("generate", model, "--n", 1, "--out", out, "--steps", 2).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["generated", "generated.parquet"]
    assert [p.name for p in (out / "generated").iterdir()] == ["000000.png"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    bad = CliRunner().invoke(cli, ["generate", str(model), "--out", str(tmp_path / "other")])
    assert bad.exit_code == 1 and "not empty" in bad.output
    bad = CliRunner().invoke(
        cli, ["generate", str(model), "--out", str(tmp_path / "g2"), "--class-label", "food"]
    )
    assert bad.exit_code == 1 and "without classes" in bad.output


def test_category_conditioning_labels_and_prompts(ws, tmp_path):
    model = tmp_path / "c"
    result = run(
        "train",
        ws.root,
        "--out",
        model,
        "--steps",
        1,
        "--batch-size",
        4,
        "--sample-grid",
        0,
        "--conditioning",
        "category",
        "--all-rows",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    rows = pq.read_table(model / "training_rows.parquet").to_pydict()
    assert rows["row_id"] == [0, 1, 2, 4, 6, 7, 8, 9, 10, 11]  # --all-rows: opted-out rows too
    assert json.loads((model / "config.json").read_text())["classes"] == [
        "(none)",
        "animals",
        "food",
    ]
    assert rows["class_label"][:3] == ["animals", "food", "animals"] and rows["label"][:3] == [
        1,
        2,
        1,
    ]

    out = tmp_path / "g"
    assert (
        run(
            "generate",
            model,
            "--n",
            2,
            "--out",
            out,
            "--steps",
            2,
            "--class-label",
            "food",
            "--class-label",
            "1",
        ).exit_code
        == 0
    )
    table = pq.read_table(out / "generated.parquet").to_pydict()
    assert (
        table["class_label"] == ["food", "food", "animals", "animals"]
        and table["caption"][0] == "food"
    )

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,class_label\na red cat,animals\nsome bread,\n")
    out2 = tmp_path / "g2"
    assert (
        run(
            "generate", model, "--n", 1, "--out", out2, "--steps", 2, "--prompts", prompts
        ).exit_code
        == 0
    )
    table = pq.read_table(out2 / "generated.parquet").to_pydict()
    assert table["caption"] == ["a red cat", "some bread"] and table["class_label"] == [
        "animals",
        None,
    ]
    bad = CliRunner().invoke(
        cli, ["generate", str(model), "--out", str(tmp_path / "g3"), "--class-label", "dogs"]
    )
    assert bad.exit_code == 1 and "animals, food" in bad.output


def test_train_by_budget_records_the_steps_done_and_the_budget(ws, tmp_path):
    model = tmp_path / "models" / "b"
    result = run(
        "train", ws.root, "--out", model, "--minutes", 0.05, "--batch-size", 4,
        "--base-channels", 8, "--sample-grid", 0, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["model"]["base_channels"] == 8 and cfg["minutes"] == 0.05
    assert cfg["step"] == cfg["steps"] >= 1
    # Within the 3 s budget, except that the first step always runs (a busy machine).
    assert cfg["steps"] == 1 or cfg["budget"]["spent_seconds"] <= 3.5
    assert f"trained {cfg['steps']} steps" in result.output and "of 3 s budget" in result.output
