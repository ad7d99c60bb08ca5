"""Loading a trained model, drawing images from it, and scoring images under it.

`per_example_loss` is the quantity loss-based membership inference uses: training images
tend to have lower denoising error than unseen images of the same kind (Carlini et al.
2023, "Extracting Training Data from Diffusion Models", sec. 6). It is averaged over a fixed
set of timesteps with fixed noise (the same for every image, drawn from `seed`), so two
images are compared under identical corruption and the score is reproducible.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.diffusion.checkpoint import CONFIG, WEIGHTS, load_weights, read_json
from audit.diffusion.model import ModelConfig, UNet
from audit.diffusion.schedule import EpsFn, Schedule, ScheduleConfig, run_sampler
from audit.errors import AuditError

DEFAULT_LOSS_TIMESTEPS = (25, 50, 100, 200, 300, 400, 500, 700)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AuditError(
            f"device '{device}' asked for, but CUDA is not available here. Use --device cpu."
        )
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise AuditError(
            f"device '{device}' is not a torch device ({e}). Use auto, cpu or cuda."
        ) from e


def load(model_dir: str | Path, device: str = "cpu") -> tuple[UNet, Schedule, dict[str, Any]]:
    """The sampling model (EMA weights, eval mode), its noise schedule and its config.json.

    >>> model, schedule, config = load("models/sample")  # doctest: +SKIP
    """
    model_dir = Path(model_dir)
    config = read_json(model_dir / CONFIG)
    model = UNet(ModelConfig.from_dict(config["model"]))
    model.load_state_dict(load_weights(model_dir / WEIGHTS))
    model.to(resolve_device(device)).eval()
    return model, Schedule(ScheduleConfig(**config["schedule"])), config


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise AuditError(
            f"images must be a uint8 array (N, H, W, 3), got {images.dtype} {images.shape}."
        )
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _labels(model: UNet, class_labels: Sequence[int] | None, n: int) -> torch.Tensor | None:
    if class_labels is None:
        return None
    k = model.config.num_classes
    if k == 0:
        raise AuditError(
            "class labels were given, but this model was trained unconditionally (num_classes=0)."
        )
    labels = torch.as_tensor(list(class_labels), dtype=torch.long)
    if labels.shape != (n,):
        raise AuditError(f"need one class label per image ({n}), got {tuple(labels.shape)}.")
    if labels.numel() and (labels.min() < 0 or labels.max() > k):
        raise AuditError(
            f"class labels must be in 0..{k - 1} (or {k} = no class), got {labels.tolist()}."
        )
    return labels


@torch.no_grad()
def sample(
    model: UNet,
    schedule: Schedule,
    n: int,
    seed: int = 0,
    sampler: str = "ddpm",
    steps: int = 50,
    eta: float = 0.0,
    class_labels: Sequence[int] | None = None,
    guidance_scale: float = 2.0,
    batch_size: int = 64,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """`n` images as uint8 (N, H, W, 3). Image i comes from its own generator seeded
    `seed + i`, so it does not depend on `n` or `batch_size`.

    With `class_labels` (one per image) and a class-conditioned model, classifier-free
    guidance mixes the predictions: eps = eps_none + guidance_scale * (eps_class - eps_none)
    (1.0 = plain conditional sampling). `on_step(done, total)` is called after each
    denoising step of each batch (for a progress bar).

    The default is ancestral DDPM sampling: on the bundled sample after 2,000 steps, DDIM
    with eta=0 gave noisy, over-saturated pictures where DDPM's fresh noise at each step
    corrected the young model's errors and gave clean shapes on white (same 50 steps).

    >>> model, schedule, _ = load("models/sample")  # doctest: +SKIP
    >>> sample(model, schedule, 4, seed=0).shape  # doctest: +SKIP
    (4, 32, 32, 3)
    """
    labels = _labels(model, class_labels, n)
    device = next(model.parameters()).device
    c, r = model.config.channels, model.config.resolution
    out = []
    total = -(-n // batch_size) * len(schedule.timestep_sequence(steps))
    count = itertools.count(1)  # denoising steps done, over all batches
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        gens = [torch.Generator().manual_seed(seed + i) for i in idx]
        x = torch.stack([torch.randn(c, r, r, generator=g) for g in gens]).to(device)
        y = labels[start : start + len(idx)].to(device) if labels is not None else None
        eps_fn = _eps_fn(model, y, guidance_scale)
        if on_step is not None:
            eps_fn = _counted(eps_fn, lambda: on_step(next(count), total))
        out.append(to_uint8(run_sampler(eps_fn, schedule, x, gens, sampler, steps, eta)))
    if not out:
        return np.zeros((0, r, r, c), dtype=np.uint8)
    return np.concatenate(out)


def _counted(eps_fn: EpsFn, after: Callable[[], None]) -> EpsFn:
    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, t)
        after()
        return eps

    return counted


def _eps_fn(model: UNet, y: torch.Tensor | None, scale: float):  # type: ignore[no-untyped-def]
    if y is None or scale == 1.0:
        return lambda x, t: model(x, t, y)
    none = torch.full_like(y, model.config.num_classes)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, none]))
        cond, uncond = eps.chunk(2)
        return uncond + scale * (cond - uncond)

    return guided


@torch.no_grad()
def per_example_loss(
    model: UNet,
    schedule: Schedule,
    images_uint8: np.ndarray,
    timesteps: Sequence[int] = DEFAULT_LOSS_TIMESTEPS,
    seed: int = 0,
    labels: Sequence[int] | None = None,
    batch_size: int = 64,
    reduce: str = "mean",
) -> np.ndarray:
    """Mean epsilon-MSE of each image over fixed `timesteps` and fixed noises.

    Returns (N,) float64 with `reduce="mean"`, or (N, len(timesteps)) with `reduce="none"`.
    Images must be at the model's resolution. `labels` (class ids) for a conditioned model;
    None scores every image with the "no class" token.

    >>> per_example_loss(model, schedule, images, seed=0).shape  # doctest: +SKIP
    (100,)
    """
    x_all = from_uint8(images_uint8)
    r = model.config.resolution
    if x_all.shape[2:] != (r, r):
        raise AuditError(
            f"images are {tuple(x_all.shape[2:])}, the model needs {r}x{r}; resize them first."
        )
    if reduce not in ("mean", "none"):
        raise AuditError(f"reduce must be 'mean' or 'none', got '{reduce}'.")
    ts = [int(t) for t in timesteps]
    if not ts or min(ts) < 0 or max(ts) >= schedule.T:
        raise AuditError(f"timesteps must be in 0..{schedule.T - 1}, got {ts}.")
    n = x_all.shape[0]
    y_all = _labels(model, labels, n) if labels is not None else None
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    noises = torch.randn((len(ts), *x_all.shape[1:]), generator=gen)
    losses = np.zeros((n, len(ts)), dtype=np.float64)
    for start in range(0, n, batch_size):
        x0 = x_all[start : start + batch_size].to(device)
        y = y_all[start : start + batch_size].to(device) if y_all is not None else None
        for j, t in enumerate(ts):
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=device)
            noise = noises[j].to(device).expand_as(x0)
            eps = model(schedule.q_sample(x0, tt, noise), tt, y)
            losses[start : start + x0.shape[0], j] = (
                (eps - noise).pow(2).mean(dim=(1, 2, 3)).double().cpu().numpy()
            )
    return losses.mean(axis=1) if reduce == "mean" else losses
