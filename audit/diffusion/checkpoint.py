"""Model folders and checkpoints: safetensors for tensors, json for everything else, no pickles.

A model folder (`models/NAME/`, or one of its checkpoints) holds:

    config.json                  model, schedule and training hyperparameters, data fingerprint, step
    model.safetensors            the weights used for sampling (the EMA of the trained weights)

A checkpoint (`models/NAME/checkpoints/step-NNNNNNN/`) adds what resuming needs:

    training_state.safetensors   raw (non-EMA) weights `model.*`, AdamW moments `optim.<i>.<name>`,
                                 the data-order generator state `rng.generator` and the global
                                 torch RNG state `rng.torch` (uint8 tensors)
    state.json                   step and the optimizer's param_groups (lr, betas, ...)

A checkpoint is written into `step-NNNNNNN.tmp/` and renamed into place in one step, so a
killed run leaves either a whole checkpoint or none; the newest whole one is resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from audit.errors import AuditError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAINING_STATE = "training_state.safetensors"
STATE = "state.json"
CHECKPOINTS = "checkpoints"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise AuditError(
            f"{path} is missing or unreadable ({e}). Is this a model folder from `audit train`?"
        ) from e


def save_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    write_atomic(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise AuditError(f"{path} does not exist. Is this a model folder from `audit train`?")
    return load_file(str(path))


def save_checkpoint(
    out_dir: Path,
    config: dict[str, Any],
    step: int,
    ema: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    keep: int = 1,
) -> Path:
    """Write `checkpoints/step-NNNNNNN/` whole or not at all; keep the newest `keep` ones."""
    root = Path(out_dir) / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(tmp / WEIGHTS, ema.state_dict())
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    save_weights(tmp / TRAINING_STATE, tensors)
    write_json(tmp / STATE, {"step": step, "param_groups": opt["param_groups"]})
    write_json(tmp / CONFIG, {**config, "step": step})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    root = Path(out_dir) / CHECKPOINTS
    done = sorted(
        p for p in root.glob("step-*") if not p.name.endswith(".tmp") and (p / STATE).exists()
    )
    return done[-1] if done else None


def restore_checkpoint(
    ckpt: Path,
    ema: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Load everything `save_checkpoint` wrote back into live objects; returns the step."""
    state = read_json(ckpt / STATE)
    ema.load_state_dict(load_weights(ckpt / WEIGHTS))
    tensors = load_weights(ckpt / TRAINING_STATE)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            slots.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(state["step"])
