"""Stage `embed`: shapes, normalisation, determinism, error rows, missing weights, resume, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import DATA, build_workspace, encode, synthetic_image

from audit import embeddings
from audit.cli import cli
from audit.errors import AuditError, MissingWeightsError
from audit.images import decode

FIX = DATA / "descriptors"


@pytest.fixture(scope="module")
def tiny():
    import torch

    torch.set_num_threads(1)  # 2 cores shared by many jobs: more threads only spin
    return embeddings.load_model("tiny", "none")


def test_tiny_model_shapes_normalised_deterministic(tiny):
    imgs = [decode((FIX / n).read_bytes()) for n in ["cat.png", "dog.png", "penguin.png"]]
    a = tiny.embed_images(imgs)
    assert a.shape == (3, 64) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    t = tiny.embed_texts(["a cat", "a dog", ""])
    assert t.shape == (3, 64) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    again = embeddings.load_model("tiny", "none")  # a second build has the very same weights
    assert np.array_equal(again.embed_images(imgs), a)
    assert np.array_equal(again.embed_texts(["a cat", "a dog", ""]), t)
    assert not np.allclose(a[0], a[1])  # different images, different vectors
    assert tiny.info == {
        "model": "tiny",
        "pretrained": "none",
        "trained": False,
        "dim": 64,
        "image_size": 64,
    }
    assert tiny.embed_images([]).shape == (0, 64)


def test_missing_weights_error_is_fast_and_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(MissingWeightsError) as e:
        embeddings.load_model("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    msg = str(e.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg and "open_clip_pytorch_model.bin" in msg
    assert "--pretrained /path/to/" in msg and "--model tiny --pretrained none" in msg
    assert time.perf_counter() - t0 < 20
    with pytest.raises(MissingWeightsError, match="does not exist"):
        embeddings.load_model("tiny", str(tmp_path / "nope.safetensors"))
    with pytest.raises(AuditError, match="not an open_clip pretrained tag"):
        embeddings.load_model("ViT-B-32", "no_such_tag")
    with pytest.raises(AuditError, match="unknown model"):
        embeddings.load_model("ViT-Z-99", "none")


def test_local_checkpoint_loads_and_is_marked_trained(tiny, tmp_path):
    import torch

    path = tmp_path / "tiny.bin"
    torch.save(tiny.model.state_dict(), path)
    loaded = embeddings.load_model("tiny", str(path))
    assert loaded.info["trained"] is True and loaded.info["checkpoint"] == str(path)
    assert len(loaded.info["checkpoint_sha256"]) == 64
    assert np.allclose(loaded.embed_texts(["x y z"]), tiny.embed_texts(["x y z"]), atol=1e-6)


def test_compute_writes_aligned_float16_parts_and_error_rows(make_workspace, tiny):
    imgs = [encode(synthetic_image(s, 90), "JPEG" if s % 3 else "PNG") for s in range(9)]
    imgs[4] = (FIX / "broken_corrupt.jpg").read_bytes()
    imgs.append(None)
    captions = [f"picture {i}" for i in range(10)]
    ws = make_workspace(imgs, captions=captions, rows_per_part=4)
    s = embeddings.compute(ws.root, batch_size=3, workers=0)
    assert (s["rows"], s["embedded"], s["errors"], s["trained"]) == (10, 8, 2, False)
    img = np.concatenate([np.load(ws.path(f"embeddings/img-{p:05d}.npy")) for p in range(3)])
    txt = np.concatenate([np.load(ws.path(f"embeddings/txt-{p:05d}.npy")) for p in range(3)])
    assert img.dtype == np.float16 and img.shape == (10, 64) and txt.shape == (10, 64)
    norms = np.linalg.norm(img.astype(np.float32), axis=1)
    assert np.all(norms[[4, 9]] == 0) and np.allclose(np.delete(norms, [4, 9]), 1, atol=2e-3)
    # the stored rows are what the model gives for each image on its own
    direct = tiny.embed_images([decode(imgs[0]), decode(imgs[5])])
    assert np.allclose(img[[0, 5]].astype(np.float32), direct, atol=2e-3)
    assert np.allclose(txt[7].astype(np.float32), tiny.embed_texts(["picture 7"])[0], atol=2e-3)
    rows = (
        ws.connect()
        .execute("select row_id, clip_similarity from clip_scores order by row_id")
        .fetchall()
    )
    scores = {"row_id": [r[0] for r in rows], "clip_similarity": [r[1] for r in rows]}
    assert scores["row_id"] == list(range(10))
    assert scores["clip_similarity"][4] is None and scores["clip_similarity"][9] is None
    want = float(img[2].astype(np.float32) @ txt[2].astype(np.float32))
    assert scores["clip_similarity"][2] == pytest.approx(want, abs=1e-5)
    errors = pq.read_table(ws.root / "errors").sort_by("row_id").to_pydict()
    assert errors["row_id"] == [4, 9] and errors["reason"] == ["image_undecodable", "image_missing"]
    model = json.loads(ws.path("embeddings/model.json").read_text())
    assert model["trained"] is False and model["model"] == "tiny"
    manifest = json.loads(ws.path("manifest.json").read_text())
    assert manifest["stages"]["embed"]["params"]["trained"] is False


def test_cli_embed_warns_untrained(make_workspace):
    from audit.reports import UNTRAINED_WARNING

    ws = make_workspace([encode(synthetic_image(s, 64)) for s in range(3)])
    r = CliRunner().invoke(
        cli,
        [
            "embed",
            str(ws.root),
            "--model",
            "tiny",
            "--pretrained",
            "none",
            "--workers",
            "0",
            "--batch-size",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert UNTRAINED_WARNING in r.output and "3 embedded" in r.output
    r = CliRunner().invoke(
        cli,
        [
            "embed",
            str(ws.root),
            "--model",
            "ViT-B-32",
            "--pretrained",
            "/nonexistent/open_clip_pytorch_model.bin",
        ],
    )
    assert r.exit_code == 1 and "does not exist" in r.output


def _arrays(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "embeddings").glob("*.npy"))}


@pytest.mark.slow
def test_kill_dash_nine_then_resume_gives_identical_output(tmp_path):
    imgs = [encode(synthetic_image(s, 400), "PNG") for s in range(160)]
    a = build_workspace(tmp_path / "a", imgs, rows_per_part=20)
    b = build_workspace(tmp_path / "b", imgs, rows_per_part=20)

    def cmd(ws):
        return [
            sys.executable,
            "-m",
            "audit",
            "embed",
            str(ws.root),
            "--batch-size",
            "5",
            "--workers",
            "0",
        ]

    env = dict(os.environ, AUDIT_NO_PROGRESS="1")
    root = Path(__file__).parent.parent
    subprocess.run(cmd(b), check=True, env=env, cwd=root, capture_output=True)
    proc = subprocess.Popen(
        cmd(a), env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        stage = json.loads((a.root / "manifest.json").read_text())["stages"].get("embed", {})
        if stage.get("parts"):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stage = json.loads((a.root / "manifest.json").read_text())["stages"]["embed"]
    assert stage["status"] == "running" and 1 <= len(stage["parts"]) < 8, (
        "killed too late to test resume"
    )
    r = subprocess.run(cmd(a), env=env, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((a.root / "manifest.json").read_text())
    assert manifest["stages"]["embed"]["summary"]["resumed_parts"] >= 1
    assert _arrays(a.root) == _arrays(b.root) and len(_arrays(a.root)) == 16
    for p in range(8):
        name = f"embeddings/scores-{p:05d}.parquet"
        assert pq.read_table(a.root / name).equals(pq.read_table(b.root / name))
