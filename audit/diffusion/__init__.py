"""A minimal DDPM in plain torch: the model whose memorisation the audit measures.

An island: imports nothing from `audit` but `audit.errors`; it sees uint8 image arrays and
integer labels, never a workspace. `audit.training` feeds it a workspace's consented rows.
Importing this package imports torch, so the CLI imports it inside commands only.

    model.py       UNet (residual blocks, GroupNorm, sinusoidal time embedding, attention, classes)
    schedule.py    linear / cosine betas, alphas_cumprod, posterior, DDPM and DDIM sampling
    train.py       epsilon-prediction loss, AdamW + EMA, checkpoints, exact resume
    sample.py      load, sample, per_example_loss (for loss-based membership inference)
    checkpoint.py  safetensors + json model folders, atomic checkpoints

>>> import numpy as np
>>> from audit import diffusion
>>> imgs = np.full((8, 32, 32, 3), 255, np.uint8)
>>> cfg = diffusion.TrainConfig(steps=2, batch_size=4, sample_grid=0,
...                             model=diffusion.ModelConfig(base_channels=16))
>>> diffusion.train(imgs, None, cfg, "/tmp/doctest-ddpm")["steps"]  # doctest: +SKIP
2
>>> model, schedule, config = diffusion.load("/tmp/doctest-ddpm")  # doctest: +SKIP
>>> diffusion.sample(model, schedule, 2, seed=0).shape  # doctest: +SKIP
(2, 32, 32, 3)
"""

from audit.diffusion.model import ModelConfig, UNet
from audit.diffusion.sample import DEFAULT_LOSS_TIMESTEPS, load, per_example_loss, sample
from audit.diffusion.schedule import Schedule, ScheduleConfig
from audit.diffusion.train import StepInfo, TrainConfig, grid_png, train

__all__ = [
    "DEFAULT_LOSS_TIMESTEPS",
    "ModelConfig",
    "Schedule",
    "ScheduleConfig",
    "StepInfo",
    "TrainConfig",
    "UNet",
    "grid_png",
    "load",
    "per_example_loss",
    "sample",
    "train",
]
