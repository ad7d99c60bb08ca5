"""Training loop: epsilon-prediction loss, AdamW, EMA, checkpoints, exact resume.

The loss is Ho et al.'s "simple" objective: pick t uniformly, noise the image to x_t, and
regress the noise, `|| eps - model(x_t, t) ||^2`. With `min_snr_gamma > 0` each image's term
is weighted by `min(SNR_t, gamma) / SNR_t`, SNR_t = abar_t / (1 - abar_t) (Min-SNR, Hang et
al. 2023): the nearly clean timesteps, whose noise is easy to see and which dominate the
plain objective's gradient, stop crowding out the noisy ones that decide the layout. On the
bundled sample it lowered the kernel distance to the training images at equal steps (README,
"How long the demo takes"). The model still predicts the noise, so sampling and
`per_example_loss` are unchanged; the logged loss stays the unweighted eps-MSE.

Every random choice (which images, flips, timesteps, noise, label dropout) comes from one
CPU `torch.Generator` seeded by `seed`, drawn in a fixed order each step. Its state is part
of each checkpoint, so a run killed after a checkpoint and resumed continues bit for bit as
if it had never stopped (on CPU; CUDA kernels are not bitwise deterministic).

Training by budget (`minutes > 0`) trades that exactness for bounded time: the number of
steps is whatever fits. The loop measures its own step rate and plans the run from it,
again every `REPLAN_EVERY` steps (a shared machine speeds up and slows down): planned
steps = done + remaining budget x rate; warm-up is `WARMUP_SHARE` of the plan (at most
`warmup_steps`), the learning rate then follows a cosine to `LR_FLOOR` x lr at the planned
end, and a checkpoint is written every tenth of the plan. Time spent is recorded in each
checkpoint and, every few seconds, in `budget.json`, so a run killed with `kill -9` and
resumed continues within the same budget instead of starting it over: at most a few seconds
of the work lost to the kill are not counted.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from audit.diffusion.checkpoint import (
    CONFIG,
    WEIGHTS,
    latest_checkpoint,
    read_json,
    restore_checkpoint,
    save_checkpoint,
    write_atomic,
    write_json,
)
from audit.diffusion.model import ModelConfig, UNet
from audit.diffusion.sample import from_uint8, resolve_device, sample
from audit.diffusion.schedule import Schedule, ScheduleConfig
from audit.errors import AuditError

LOG = "train_log.csv"
LOG_EVERY = 50  # steps between rewrites of train_log.csv (to watch a long run)
BUDGET = "budget.json"  # time spent so far by a run with a budget (the kill -9 record)
BUDGET_EVERY_S = 2.0  # seconds between rewrites of budget.json
REPLAN_EVERY = 20  # steps between re-plans of a budgeted run from the measured rate
WARMUP_SHARE = 0.05
LR_FLOOR = 0.1
CHECKPOINTS_PER_RUN = 10


@dataclass
class StepInfo:
    """What a progress display needs after each step (passed to `train(on_step=...)`)."""

    step: int
    total: int  # steps planned (a budgeted run re-plans as it measures its rate)
    loss: float
    lr: float
    seconds: float  # training time spent, including earlier sessions of a resumed run
    steps_per_s: float | None  # measured in this session
    budget_seconds: float | None  # None: trained by steps


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (plus where/how often to write)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"
    flip: bool = True  # horizontal flip augmentation
    # "bf16": forward pass under bfloat16 autocast (weights, optimiser and loss stay float32);
    # about 1.7x the steps per second on CPUs with native bf16 (AVX512-BF16/AMX), slower on
    # others. "auto" picks bf16 only where the CPU has it, so the choice is recorded resolved.
    precision: str = "fp32"
    cfg_dropout: float = 0.1  # how often a class label is replaced by "no class"
    # > 0: Min-SNR loss weighting min(SNR, gamma) / SNR (module docstring); 0: plain eps-MSE.
    min_snr_gamma: float = 0.0
    # > 0: train for this wall-clock budget instead of `steps` (see the module docstring);
    # `steps`, `warmup_steps` and `checkpoint_every` are then planned from the measured rate.
    minutes: float = 0.0
    checkpoint_every: int = 500
    sample_grid: int = 64  # images in samples.png at the end (0 = none)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    classes: list[str] = field(default_factory=list)  # names of class ids 0..K-1
    data: dict[str, Any] = field(
        default_factory=dict
    )  # provenance from the caller (rows, workspace)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"], d["schedule"] = self.model.to_dict(), self.schedule.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d.get("model", {}))
        d["schedule"] = ScheduleConfig(**d.get("schedule", {}))
        return cls(**d)


# Training settings that may change between a run and its resumption without changing the
# result up to the old step: more steps, or checkpoints at another interval.
# A budgeted run plans its own steps, warm-up and checkpoints, recorded under "budget".
_MAY_CHANGE_ON_RESUME = ("steps", "checkpoint_every", "sample_grid", "budget")
_PLANNED = ("steps", "warmup_steps", "checkpoint_every")


def _validate(images: np.ndarray, labels: np.ndarray | None, cfg: TrainConfig) -> None:
    r = cfg.model.resolution
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (r, r, 3):
        raise AuditError(
            f"images must be uint8 (N, {r}, {r}, 3) for resolution {r}; got {images.dtype} {images.shape}."
        )
    if len(images) == 0:
        raise AuditError("no images to train on.")
    k = cfg.model.num_classes
    if k and labels is None:
        raise AuditError(f"the model is class-conditioned ({k} classes) but no labels were given.")
    if labels is not None:
        if not k:
            raise AuditError(
                "labels were given but model.num_classes is 0; set it to the number of classes."
            )
        if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= k:
            raise AuditError(f"labels must be (N,) ints in 0..{k - 1}; got shape {labels.shape}.")
    if cfg.classes and len(cfg.classes) != k:
        raise AuditError(f"{len(cfg.classes)} class names for {k} classes.")
    if (cfg.steps < 1 and not cfg.minutes > 0) or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise AuditError("steps (or minutes), batch_size and checkpoint_every must be positive.")
    if cfg.minutes < 0:
        raise AuditError(f"minutes must be positive (or 0 to train by steps), got {cfg.minutes}.")


def data_fingerprint(images: np.ndarray, labels: np.ndarray | None) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def train(
    images_uint8: np.ndarray,
    labels: np.ndarray | None,
    config: TrainConfig | dict[str, Any],
    out_dir: str | Path,
    on_step: Callable[[StepInfo], None] | None = None,
    on_sample: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume training) a DDPM on `images_uint8` (N, R, R, 3); write the model folder.

    Resumes from the newest checkpoint in `out_dir` if its configuration and data match.
    `on_step(StepInfo)` is called after every step (e.g. to draw a progress bar), and
    `on_sample(done, total)` after each denoising step of the final sample grid.

    >>> train(images, None, TrainConfig(steps=100), "models/tiny")  # doctest: +SKIP
    {'steps': 100, 'final_loss': ..., 'resumed_from': 0, ...}
    >>> train(images, None, TrainConfig(minutes=10), "models/tiny")  # doctest: +SKIP
    {'steps': 731, 'budget_seconds': 600.0, ...}
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    images = np.asarray(images_uint8)
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    _validate(images, labels, cfg)
    out = Path(out_dir)
    full = cfg.to_dict()
    full["data"] = {
        **cfg.data,
        "images": len(images),
        "images_sha256": data_fingerprint(images, labels),
    }
    device = resolve_device(cfg.device)
    bf16 = _use_bf16(cfg.precision, device)
    full["precision"] = "bf16" if bf16 else "fp32"  # resolved: a resume must match it
    budget_s = cfg.minutes * 60 if cfg.minutes > 0 else None

    torch.manual_seed(cfg.seed)  # weight init
    model = UNet(cfg.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    schedule = Schedule(cfg.schedule)

    step = 0
    log: list[dict[str, Any]] = []
    ckpt = latest_checkpoint(out)
    spent0 = 0.0  # training seconds spent by earlier sessions of this run
    if ckpt is not None:
        old = read_json(ckpt / CONFIG)
        _check_resumable(old, full, ckpt)
        step = restore_checkpoint(ckpt, ema, model, opt, gen)
        log = [row for row in _read_log(out / LOG) if int(row["step"]) <= step]
        spent0 = float((old.get("budget") or {}).get("spent_seconds", 0.0))
        spent0 = max(spent0, float(log[-1]["seconds"]) if log else 0.0)
    if budget_s is not None:
        spent0 = max(spent0, _spent_before(out / BUDGET, full))
    resumed_from = step
    rate = None  # steps per second, measured in this session (a resume starts from the last)
    if ckpt is not None:
        rate = (old.get("budget") or {}).get("steps_per_s")
    prior_rate = rate
    plan = (
        _Plan(cfg.steps, cfg.warmup_steps, cfg.checkpoint_every)
        if budget_s is None
        else _Plan.fit(step, spent0, budget_s, rate, cfg.warmup_steps)
    )

    data = from_uint8(images).to(device)
    y_all = torch.from_numpy(labels).to(device) if labels is not None else None
    n, b, k = len(images), cfg.batch_size, cfg.model.num_classes
    model.train()
    t0 = time.perf_counter()
    t_first, last_budget_write, saved_at = 0.0, 0.0, resumed_from
    last_lr = float(log[-1]["lr"]) if log else None
    while step < plan.steps:
        now = time.perf_counter() - t0
        if budget_s is not None and (step > 0 or ckpt is not None):
            # Stop when the next step would not fit (the first step always runs, so a
            # killed run always has a checkpoint to finish from).
            if spent0 + now + (1 / rate if rate else 0.0) > budget_s:
                break
        # The draw order below is part of the resume contract: do not reorder.
        idx = torch.randint(0, n, (b,), generator=gen)
        flip = torch.rand(b, generator=gen) < 0.5
        t = torch.randint(0, schedule.T, (b,), generator=gen)
        noise = torch.randn((b, *data.shape[1:]), generator=gen)
        drop = torch.rand(b, generator=gen) < cfg.cfg_dropout
        x0 = data[idx.to(device)]
        if cfg.flip:
            x0 = torch.where(flip.to(device)[:, None, None, None], x0.flip(3), x0)
        y = None
        if y_all is not None:
            y = torch.where(
                drop.to(device), torch.full_like(y_all[idx.to(device)], k), y_all[idx.to(device)]
            )
        t, noise = t.to(device), noise.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            predicted = model(schedule.q_sample(x0, t, noise), t, y)
        loss = F.mse_loss(predicted.float(), noise)
        objective = loss
        if cfg.min_snr_gamma > 0:
            per_image = (predicted.float() - noise).pow(2).mean(dim=(1, 2, 3))
            objective = (per_image * _min_snr_weights(schedule, t, cfg.min_snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = plan.lr(cfg.lr, step, decay=budget_s is not None)
        if budget_s is not None and step >= plan.warmup_steps and last_lr is not None:
            lr = min(lr, last_lr)  # a re-plan that adds steps slows the decay, never undoes it
        last_lr = lr
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        now = time.perf_counter() - t0
        done = step - resumed_from
        if done == 1:
            t_first, rate = now, 1 / max(now, 1e-6)
        else:  # the first step of a session pays for allocations: measure from its end
            rate = (done - 1) / max(now - t_first, 1e-6)
        if budget_s is not None and (
            done == 5 or step % REPLAN_EVERY == 0 or step >= plan.steps
        ):  # a budgeted run ends when its time is up, not at a plan made from one step
            # The first steps of a session are slow (allocations): plan from 5 steps, or
            # until then from the rate the run measured before it was stopped.
            measured = rate if done >= 5 else prior_rate
            plan = (
                _Plan.fit(step, spent0 + now, budget_s, measured, cfg.warmup_steps)
                if measured
                else _Plan(step + 1, plan.warmup_steps, plan.checkpoint_every)
            )
        log.append(
            {
                "step": step,
                "loss": f"{loss.item():.6f}",
                "lr": f"{lr:.3g}",
                "seconds": f"{spent0 + now:.2f}",
            }
        )
        if step % plan.checkpoint_every == 0 or step == plan.steps:
            c = full
            if budget_s is not None:
                c = _budgeted(full, plan, budget_s, spent0 + now, rate, plan.steps)
            save_checkpoint(out, c, step, ema, model, opt, gen)
            saved_at = step
        if step % LOG_EVERY == 0 or step % plan.checkpoint_every == 0 or step == plan.steps:
            _write_log(out / LOG, log)  # rows past the last checkpoint are dropped on resume
        if budget_s is not None and now - last_budget_write >= BUDGET_EVERY_S:
            _write_spent(out / BUDGET, full, step, spent0 + now)
            last_budget_write = now
        info = StepInfo(step, plan.steps, loss.item(), lr, spent0 + now, rate, budget_s)
        if on_step is not None:
            on_step(info)

    seconds = time.perf_counter() - t0
    if on_step is not None and step > resumed_from and info.total != step:
        on_step(dataclasses.replace(info, total=step))  # the budget ended it: show it done
    if budget_s is not None:  # record the steps done; the last checkpoint is the final state
        full = _budgeted(full, plan, budget_s, spent0 + seconds, rate, step)
        if saved_at != step or latest_checkpoint(out) is None:
            save_checkpoint(out, full, step, ema, model, opt, gen)
        _write_spent(out / BUDGET, full, step, spent0 + seconds)
    final = latest_checkpoint(out)
    assert final is not None
    shutil.copyfile(final / WEIGHTS, out / f".tmp-{WEIGHTS}")
    (out / f".tmp-{WEIGHTS}").replace(out / WEIGHTS)
    write_json(out / CONFIG, {**full, "step": step})
    _write_log(out / LOG, log)
    losses = np.array([float(r["loss"]) for r in log])
    _plot_loss(losses, out / "loss.png")
    if cfg.sample_grid > 0:
        ema.eval()
        class_labels = [i % k for i in range(cfg.sample_grid)] if k else None
        grid = sample(
            ema,
            schedule,
            cfg.sample_grid,
            seed=cfg.seed,
            class_labels=class_labels,
            on_step=on_sample,
        )
        write_atomic(out / "samples.png", grid_png(grid))
        # The same number of training images at the same size, to judge the samples against.
        pick = np.random.default_rng(cfg.seed).permutation(n)[: cfg.sample_grid]
        write_atomic(out / "training_images.png", grid_png(images[np.sort(pick)]))
    done = step - resumed_from
    return {
        "steps": step,
        "resumed_from": resumed_from,
        "images": n,
        "final_loss": float(losses[-100:].mean()) if len(losses) else None,
        "seconds": round(seconds, 1),
        "steps_per_s": round(done / seconds, 3) if done and seconds > 0 else None,
        "budget_seconds": budget_s,
        "spent_seconds": round(spent0 + seconds, 1),
        "device": str(device),
        "precision": full["precision"],
        "out": str(out),
    }


@dataclass
class _Plan:
    """Steps, warm-up and checkpoint interval of a run (fixed, or fitted to a budget)."""

    steps: int
    warmup_steps: int
    checkpoint_every: int

    @classmethod
    def fit(
        cls, step: int, spent: float, budget_s: float, rate: float | None, max_warmup: int
    ) -> _Plan:
        if rate is None:  # nothing measured yet: plan one step, re-planned right after it
            return cls(step + 1, max(1, max_warmup), 1)
        total = max(step + 1, step + int(max(0.0, budget_s - spent) * rate))
        warmup = max(1, min(max_warmup, round(WARMUP_SHARE * total)))
        return cls(total, warmup, max(1, total // CHECKPOINTS_PER_RUN))

    def lr(self, base: float, step: int, decay: bool) -> float:
        """Linear warm-up; with `decay` (budgeted runs) then a cosine to LR_FLOOR x base."""
        lr = base * min(1.0, (step + 1) / max(1, self.warmup_steps))
        if decay and step >= self.warmup_steps:
            p = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
            lr = base * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))
        return lr


def _budgeted(
    full: dict[str, Any],
    plan: _Plan,
    budget_s: float,
    spent: float,
    rate: float | None,
    steps: int,
) -> dict[str, Any]:
    """The config of a budgeted run: `steps` (planned, or done at the end) and its plan."""
    budget = {
        "minutes": budget_s / 60,
        "spent_seconds": round(spent, 2),
        "planned_steps": plan.steps,
        "warmup_steps": plan.warmup_steps,
        "checkpoint_every": plan.checkpoint_every,
        "steps_per_s": round(rate, 3) if rate else None,
        "lr_schedule": f"linear warm-up, then cosine to {LR_FLOOR} x lr at planned_steps",
    }
    return {**full, "steps": steps, "budget": budget}


def _write_spent(path: Path, full: dict[str, Any], step: int, spent: float) -> None:
    record = {
        "minutes": full["minutes"],
        "images_sha256": full["data"]["images_sha256"],
        "step": step,
        "spent_seconds": round(spent, 2),
    }
    write_json(path, record)


def _spent_before(path: Path, full: dict[str, Any]) -> float:
    """Seconds an earlier session of this run spent (0 when budget.json is another run's)."""
    if not path.exists():
        return 0.0
    record = read_json(path)
    same = record.get("minutes") == full["minutes"] and (
        record.get("images_sha256") == full["data"]["images_sha256"]
    )
    return float(record.get("spent_seconds", 0.0)) if same else 0.0


def _min_snr_weights(schedule: Schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR_t, gamma) / SNR_t per image: 1 at the noisy timesteps, gamma/SNR at the clean."""
    abar = schedule.alphas_cumprod.to(t.device)[t]
    snr = abar / (1 - abar)
    return torch.where(snr > gamma, gamma / snr, torch.ones_like(snr)).float()  # no 0/0 at SNR 0


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


def _use_bf16(precision: str, device: torch.device) -> bool:
    if precision not in ("fp32", "bf16", "auto"):
        raise AuditError(f"precision must be fp32, bf16 or auto (got {precision!r}).")
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return precision == "bf16"


def _check_resumable(old: dict[str, Any], new: dict[str, Any], ckpt: Path) -> None:
    def fixed(c: dict[str, Any]) -> dict[str, Any]:
        c = json.loads(json.dumps(c))  # compare as stored: tuples become lists
        # A setting added after a folder was trained is missing from its config; its default
        # is what that run did (Min-SNR off, steps rather than minutes), so it compares equal.
        defaults = json.loads(json.dumps(TrainConfig().to_dict()))
        for key in ("model", "schedule"):
            if isinstance(c.get(key), dict):
                c[key] = {**defaults[key], **c[key]}
        c = {**defaults, **c}
        return {k: v for k, v in c.items() if k not in ("step", *_MAY_CHANGE_ON_RESUME)}

    a, b = fixed(old), fixed(new)
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise AuditError(
            f"{ckpt} belongs to a different training run (differs in: {', '.join(diff)}). "
            "Pass a new --out folder, or delete the old one to start over."
        )
    if not new.get("minutes") and int(old.get("step", 0)) > new["steps"]:
        raise AuditError(
            f"{ckpt} is already at step {old['step']}, beyond steps={new['steps']}. "
            "Pass more --steps or a new --out."
        )


def _read_log(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "loss", "lr", "seconds"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue().encode())


def _plot_loss(losses: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="per step")
    w = max(1, min(100, len(losses) // 10))
    if len(losses) >= w:
        ax.plot(
            steps[w - 1 :],
            np.convolve(losses, np.ones(w) / w, mode="valid"),
            lw=1.5,
            label=f"mean of {w}",
        )
    ax.set(xlabel="step", ylabel="eps-MSE", yscale="log", title="training loss")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def grid_png(images: np.ndarray, ncol: int = 8, scale: int | None = None) -> bytes:
    """A grid of uint8 (N, H, W, 3) images as PNG bytes, nearest-neighbour upscaled by `scale`
    (default: to about 64 pixels a cell, so a 16x16 model's grid is as big as a 32x32 one's)."""
    from PIL import Image

    n, h, w, _ = images.shape
    scale = scale or max(2, 64 // max(h, 1))
    ncol = min(ncol, max(n, 1))
    nrow = -(-n // ncol)
    canvas = np.full((nrow * (h + 2) + 2, ncol * (w + 2) + 2, 3), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        canvas[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = img
    pil = Image.fromarray(canvas)
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
