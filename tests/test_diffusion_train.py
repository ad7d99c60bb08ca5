"""Training loop at tiny size: model folder contents, save/load, and exact resume after a kill."""

from __future__ import annotations

import csv
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from audit import diffusion
from audit.errors import AuditError

train_module = importlib.import_module("audit.diffusion.train")  # the module, not the function
TINY = diffusion.ModelConfig(
    resolution=16, base_channels=8, channel_mults=(1, 2), attention_resolution=8
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(n: int = 6, seed: int = 0) -> np.ndarray:
    """Coloured squares on white, like tiny clip art."""
    rng = np.random.default_rng(seed)
    out = np.full((n, 16, 16, 3), 255, np.uint8)
    for i in range(n):
        x, y = rng.integers(0, 8, 2)
        out[i, y : y + 8, x : x + 8] = rng.integers(0, 256, 3)
    return out


def config(**kw) -> diffusion.TrainConfig:
    base = dict(
        steps=6,
        batch_size=4,
        lr=1e-3,
        warmup_steps=2,
        checkpoint_every=3,
        sample_grid=0,
        model=TINY,
        schedule=diffusion.ScheduleConfig(timesteps=100),
    )
    base.update(kw)
    return diffusion.TrainConfig(**base)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_model_folder_holds_everything(tmp_path):
    out = tmp_path / "m"
    s = diffusion.train(images(), None, config(sample_grid=4), out)
    assert s["steps"] == 6 and s["resumed_from"] == 0 and s["images"] == 6
    for name in ("config.json", "model.safetensors", "train_log.csv", "loss.png", "samples.png"):
        assert (out / name).stat().st_size > 0, name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["step"] == 6 and cfg["lr"] == 1e-3 and cfg["batch_size"] == 4 and cfg["seed"] == 0
    assert cfg["model"]["base_channels"] == 8 and cfg["schedule"] == {
        "timesteps": 100,
        "beta_schedule": "cosine",
    }
    assert cfg["data"]["images"] == 6 and len(cfg["data"]["images_sha256"]) == 64
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [p.name for p in (out / "checkpoints").iterdir()] == [
        "step-0000006"
    ]  # older ones pruned
    assert not any(p.name.startswith(".tmp") for p in out.rglob("*"))
    # No pickles anywhere: only safetensors, json, csv, png.
    assert {p.suffix for p in out.rglob("*") if p.is_file()} <= {
        ".safetensors",
        ".json",
        ".csv",
        ".png",
    }


def test_save_and_load_give_identical_samples(tmp_path):
    out = tmp_path / "m"
    diffusion.train(images(), None, config(), out)
    model, schedule, cfg = diffusion.load(out)
    assert cfg["step"] == 6 and schedule.T == 100 and not model.training
    a = diffusion.sample(model, schedule, 3, seed=5, steps=8)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    model2, schedule2, _ = diffusion.load(out)
    assert np.array_equal(a, diffusion.sample(model2, schedule2, 3, seed=5, steps=8))
    # The last checkpoint is a loadable model folder too, with the same sampling weights.
    ckpt_model, _, _ = diffusion.load(out / "checkpoints" / "step-0000006")
    assert np.array_equal(a, diffusion.sample(ckpt_model, schedule, 3, seed=5, steps=8))
    # Image i depends only on seed + i, not on how many images or the batch size.
    b = diffusion.sample(model, schedule, 2, seed=6, steps=8, batch_size=1)
    assert np.array_equal(a[1:], b)
    ddpm = diffusion.sample(model, schedule, 3, seed=5, steps=8, sampler="ddpm")
    assert np.array_equal(
        ddpm, diffusion.sample(model, schedule, 3, seed=5, steps=8, sampler="ddpm")
    )


def test_resume_after_a_kill_equals_uninterrupted_training(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    diffusion.train(images(), None, config(), whole)

    killed = tmp_path / "killed"
    real_update, calls = train_module._ema_update, {"n": 0}

    def dies_at_step_5(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of step 5
        real_update(*args)

    monkeypatch.setattr(train_module, "_ema_update", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        diffusion.train(images(), None, config(), killed)
    monkeypatch.setattr(train_module, "_ema_update", real_update)
    assert [p.name for p in (killed / "checkpoints").iterdir()] == ["step-0000003"]
    assert not (killed / "model.safetensors").exists()

    s = diffusion.train(images(), None, config(), killed)
    assert s["resumed_from"] == 3 and s["steps"] == 6
    assert_same_weights(weights(whole), weights(killed))
    state = "checkpoints/step-0000006/training_state.safetensors"
    assert_same_weights(load_file(str(whole / state)), load_file(str(killed / state)))
    losses = [[r["step"], r["loss"]] for r in csv.DictReader(open(whole / "train_log.csv"))]
    assert losses == [
        [r["step"], r["loss"]] for r in csv.DictReader(open(killed / "train_log.csv"))
    ]


def test_more_steps_continue_a_finished_run(tmp_path):
    whole, extended = tmp_path / "whole", tmp_path / "extended"
    diffusion.train(images(), None, config(steps=6), whole)
    diffusion.train(images(), None, config(steps=3), extended)
    assert diffusion.train(images(), None, config(steps=6), extended)["resumed_from"] == 3
    assert_same_weights(weights(whole), weights(extended))


def test_resume_refuses_other_settings_or_data(tmp_path):
    out = tmp_path / "m"
    diffusion.train(images(), None, config(steps=3), out)
    with pytest.raises(AuditError, match=r"differs in: lr"):
        diffusion.train(images(), None, config(steps=6, lr=5e-4), out)
    with pytest.raises(AuditError, match=r"differs in: data"):
        diffusion.train(images(seed=1), None, config(steps=6), out)
    with pytest.raises(AuditError, match="already at step 3"):
        diffusion.train(images(), None, config(steps=2), out)


def test_class_conditioned_training_and_bad_inputs(tmp_path):
    cond = diffusion.ModelConfig(**{**TINY.to_dict(), "channel_mults": (1, 2), "num_classes": 2})
    labels = np.array([0, 1, 0, 1, 0, 1])
    out = tmp_path / "c"
    diffusion.train(images(), labels, config(model=cond, classes=["red", "blue"], steps=2), out)
    model, schedule, cfg = diffusion.load(out)
    assert cfg["classes"] == ["red", "blue"] and model.config.num_classes == 2
    a = diffusion.sample(model, schedule, 2, seed=0, steps=4, class_labels=[0, 1])
    b = diffusion.sample(model, schedule, 2, seed=0, steps=4, class_labels=[1, 0])
    assert not np.array_equal(a, b)  # the labels reach the network
    with pytest.raises(AuditError, match="unconditionally"):
        diffusion.sample(diffusion.UNet(TINY), schedule, 1, class_labels=[0])
    with pytest.raises(AuditError, match="class labels must be in 0..1"):
        diffusion.sample(model, schedule, 1, class_labels=[7])
    with pytest.raises(AuditError, match="labels must be"):
        diffusion.train(
            images(), np.array([0, 1, 2, 0, 1, 2]), config(model=cond, steps=1), tmp_path / "bad"
        )
    with pytest.raises(AuditError, match="uint8"):
        diffusion.train(images().astype(np.float32), None, config(), tmp_path / "bad2")


KILL_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from tests.test_diffusion_train import config, images
from audit import diffusion
diffusion.train(images(), None, config(steps=400, checkpoint_every=10), sys.argv[1])
"""


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=root), str(killed)])
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "step-0000020").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [p.name for p in (killed / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")]
    assert done and not (killed / "model.safetensors").exists()
    s = diffusion.train(images(), None, config(steps=60, checkpoint_every=10), killed)
    assert 20 <= s["resumed_from"] < 60
    whole = tmp_path / "whole"
    diffusion.train(images(), None, config(steps=60, checkpoint_every=10), whole)
    assert_same_weights(weights(whole), weights(killed))


def test_bf16_precision_is_recorded_and_a_resume_must_match(tmp_path):
    out = tmp_path / "bf16"
    s = diffusion.train(images(), None, config(steps=3, precision="bf16"), out)
    assert s["precision"] == "bf16" and np.isfinite(s["final_loss"])
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    fp32 = diffusion.train(images(), None, config(steps=3), tmp_path / "fp32")
    assert fp32["precision"] == "fp32" and fp32["final_loss"] != s["final_loss"]
    with pytest.raises(AuditError, match="precision"):  # a fp32 run cannot continue a bf16 one
        diffusion.train(images(), None, config(steps=6, precision="fp32"), out)
    with pytest.raises(AuditError, match="precision must be"):
        diffusion.train(images(), None, config(precision="fp16"), tmp_path / "bad")
    auto = diffusion.train(images(), None, config(steps=1, precision="auto"), tmp_path / "auto")
    assert auto["precision"] == ("bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32")


def test_min_snr_weights_cap_the_clean_timesteps():
    schedule = diffusion.Schedule(diffusion.ScheduleConfig(timesteps=100))
    t = torch.arange(100)
    w = train_module._min_snr_weights(schedule, t, 5.0)
    abar = schedule.alphas_cumprod[t]
    snr = abar / (1 - abar)
    noisy = snr <= 5
    assert noisy.any() and (~noisy).any()  # both sides of gamma occur in the schedule
    assert torch.equal(w[noisy], torch.ones(int(noisy.sum())))
    assert torch.allclose(w[~noisy].double(), 5 / snr[~noisy], rtol=1e-6)
    assert w[0] < 0.01  # t=0 is almost clean: a tiny weight
    assert torch.isfinite(train_module._min_snr_weights(schedule, t, 1e9)).all()


def test_min_snr_training_is_recorded_changes_the_weights_and_resumes_exactly(tmp_path):
    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    diffusion.train(images(), None, config(), plain)
    diffusion.train(images(), None, config(min_snr_gamma=5.0), weighted)
    assert json.loads((weighted / "config.json").read_text())["min_snr_gamma"] == 5.0
    a, b = weights(plain), weights(weighted)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # The same data order and noise: the logged (unweighted) losses agree at step 1, where
    # both models are the same, and differ once the weighting has changed the weights.
    rows = [list(csv.DictReader(open(d / "train_log.csv"))) for d in (plain, weighted)]
    assert rows[0][0]["loss"] == rows[1][0]["loss"] and rows[0][-1]["loss"] != rows[1][-1]["loss"]
    # Resuming a weighted run continues it exactly; another gamma is another run.
    resumed = tmp_path / "resumed"
    diffusion.train(images(), None, config(steps=3, min_snr_gamma=5.0), resumed)
    assert diffusion.train(images(), None, config(min_snr_gamma=5.0), resumed)["resumed_from"] == 3
    assert_same_weights(weights(weighted), weights(resumed))
    with pytest.raises(AuditError, match=r"differs in: min_snr_gamma"):
        diffusion.train(images(), None, config(steps=6, min_snr_gamma=2.0), resumed)


def test_a_folder_trained_before_a_setting_existed_still_resumes(tmp_path):
    """Settings added later (budget minutes, Min-SNR) are absent from an old folder's config:
    their defaults are what that run did, so it resumes; a non-default value still refuses."""
    out = tmp_path / "old"
    diffusion.train(images(), None, config(steps=3), out)
    for path in out.glob("checkpoints/*/config.json"):
        stored = json.loads(path.read_text())
        del stored["minutes"], stored["min_snr_gamma"]
        path.write_text(json.dumps(stored))
    assert diffusion.train(images(), None, config(steps=6), out)["resumed_from"] == 3
    with pytest.raises(AuditError, match=r"differs in: min_snr_gamma"):
        diffusion.train(images(), None, config(steps=9, min_snr_gamma=5.0), out)
