"""Training by wall-clock budget: steps, schedule and checkpoints agree, and kill -9 resumes
within the same budget (a real subprocess killed with SIGKILL)."""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from audit import diffusion
from audit.errors import AuditError

train_module = importlib.import_module("audit.diffusion.train")
ROOT = Path(__file__).resolve().parents[1]

# Run in a child process by the kill -9 test; the same data and config as `config()` below.
CHILD = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from audit import diffusion
rng = np.random.default_rng(0)
imgs = np.full((6, 16, 16, 3), 255, np.uint8)
for i in range(6):
    x, y = rng.integers(0, 8, 2)
    imgs[i, y : y + 8, x : x + 8] = rng.integers(0, 256, 3)
model = diffusion.ModelConfig(resolution=16, base_channels=8, channel_mults=(1, 2), attention_resolution=8)
cfg = diffusion.TrainConfig(minutes=float(sys.argv[2]), batch_size=4, lr=1e-3, warmup_steps=20,
    sample_grid=0, model=model, schedule=diffusion.ScheduleConfig(timesteps=100))
diffusion.train(imgs, None, cfg, sys.argv[1])
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.full((6, 16, 16, 3), 255, np.uint8)
    for i in range(6):
        x, y = rng.integers(0, 8, 2)
        out[i, y : y + 8, x : x + 8] = rng.integers(0, 256, 3)
    return out


def config(minutes: float) -> diffusion.TrainConfig:
    return diffusion.TrainConfig(
        minutes=minutes,
        batch_size=4,
        lr=1e-3,
        warmup_steps=20,
        sample_grid=0,
        model=diffusion.ModelConfig(
            resolution=16, base_channels=8, channel_mults=(1, 2), attention_resolution=8
        ),
        schedule=diffusion.ScheduleConfig(timesteps=100),
    )


def log_rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(out / "train_log.csv")))


def test_budget_plans_steps_schedule_and_checkpoints_that_agree(tmp_path):
    out = tmp_path / "m"
    budget = 6.0
    started = time.perf_counter()
    s = diffusion.train(images(), None, config(budget / 60), out)
    wall = time.perf_counter() - started
    cfg = json.loads((out / "config.json").read_text())
    plan = cfg["budget"]
    rows = log_rows(out)
    steps = s["steps"]
    assert steps >= 2 and cfg["step"] == cfg["steps"] == steps == len(rows)
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    # Within budget: the loop stops before a step that would not fit.
    assert float(rows[-1]["seconds"]) <= budget + 0.5 and plan["spent_seconds"] <= budget + 0.5
    assert wall < budget + 60  # setup and the final writes on top, on a busy machine
    assert plan["minutes"] == pytest.approx(budget / 60) and plan["steps_per_s"] > 0
    # The schedule scales with the plan: warm-up 5% of it (at most warmup_steps), a
    # checkpoint every tenth, and the learning rate decays towards 0.1 x lr at the end.
    planned = plan["planned_steps"]
    assert planned >= steps - train_module.REPLAN_EVERY
    assert plan["warmup_steps"] == max(1, min(20, round(0.05 * planned)))
    assert plan["checkpoint_every"] == max(1, planned // 10)
    lrs = [float(r["lr"]) for r in rows]
    assert max(lrs) <= 1e-3 * (1 + 1e-6)
    if steps > plan["warmup_steps"] + 2:  # past warm-up: the cosine decay has begun
        peak = lrs.index(max(lrs))
        assert lrs[-1] < lrs[peak]
        assert all(b <= a + 1e-9 for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    # The final checkpoint is the final model and records the same plan.
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == [f"step-{steps:07d}"]
    in_ckpt = json.loads((ckpts[0] / "config.json").read_text())["budget"]
    assert in_ckpt["spent_seconds"] <= plan["spent_seconds"]  # saved just before the end
    assert {**in_ckpt, "spent_seconds": None} == {**plan, "spent_seconds": None}
    spent = json.loads((out / "budget.json").read_text())
    assert spent["step"] == steps and spent["spent_seconds"] == pytest.approx(
        plan["spent_seconds"], abs=0.1
    )
    # Run again: it resumes, and trains at most what is left of the budget.
    again = diffusion.train(images(), None, config(budget / 60), out)
    assert again["resumed_from"] == steps and again["spent_seconds"] <= budget + 0.5


def test_plan_fits_the_remaining_budget():
    plan = train_module._Plan.fit(step=100, spent=50.0, budget_s=60.0, rate=2.0, max_warmup=100)
    assert (plan.steps, plan.warmup_steps, plan.checkpoint_every) == (120, 6, 12)
    assert train_module._Plan.fit(10, 70.0, 60.0, 2.0, 100).steps == 11  # over budget: one more
    cosine = [plan.lr(1e-3, s, decay=True) for s in range(plan.steps)]
    assert cosine[0] == pytest.approx(1e-3 / 6) and cosine[5] == pytest.approx(1e-3)
    assert cosine[-1] == pytest.approx(1e-4, rel=0.01)
    mid = plan.lr(1e-3, 6 + (120 - 6) // 2, decay=True)
    assert mid == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=0.01)
    assert plan.lr(1e-3, 100, decay=False) == 1e-3  # by steps: constant after warm-up


def test_a_different_budget_is_a_different_run(tmp_path):
    out = tmp_path / "m"
    diffusion.train(images(), None, config(1.5 / 60), out)
    with pytest.raises(AuditError, match="minutes"):
        diffusion.train(images(), None, config(3 / 60), out)
    with pytest.raises(AuditError, match="minutes"):
        diffusion.train(images(), None, config(0), out)  # by steps from a budgeted run


@pytest.mark.slow  # a real subprocess, killed: ~15 s quiet, longer on a busy machine
def test_resume_after_kill_9_continues_within_the_same_budget(tmp_path):
    out = tmp_path / "m"
    budget = 8.0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUDIT_NO_PROGRESS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), str(budget / 60)], env=env, cwd=tmp_path
    )
    try:
        deadline = time.time() + 120
        # Wait for a checkpoint and a few seconds of recorded training time, then kill -9.
        while time.time() < deadline:
            record = out / "budget.json"
            if record.exists() and (out / "checkpoints").exists():
                spent = json.loads(record.read_text())["spent_seconds"]
                if spent >= 3.0 and any(
                    not p.name.endswith(".tmp") for p in (out / "checkpoints").iterdir()
                ):
                    break
            assert child.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 120 s")
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    killed_at = json.loads((out / "budget.json").read_text())
    ckpt_step = int(sorted((out / "checkpoints").glob("step-???????"))[-1].name[5:])
    assert not (out / "model.safetensors").exists()  # the run had not finished

    started = time.perf_counter()
    s = diffusion.train(images(), None, config(budget / 60), out)
    resumed_for = time.perf_counter() - started
    cfg = json.loads((out / "config.json").read_text())
    assert s["resumed_from"] == ckpt_step and s["steps"] >= ckpt_step
    # The time before the kill counts: the two sessions together stay within one budget,
    # and the resumed session trained only for what was left of it.
    assert cfg["budget"]["spent_seconds"] <= budget + 0.5
    assert cfg["budget"]["spent_seconds"] >= killed_at["spent_seconds"]
    assert s["seconds"] <= budget - killed_at["spent_seconds"] + 0.5
    assert resumed_for < budget + 30
    rows = log_rows(out)
    assert [int(r["step"]) for r in rows] == list(range(1, s["steps"] + 1))
    assert cfg["step"] == cfg["steps"] == s["steps"]
