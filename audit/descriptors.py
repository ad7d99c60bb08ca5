"""Learned copy descriptors from a local file: SSCD, or any TorchScript or ONNX image model.

Somepalli et al. (2023, "Diffusion Art or Digital Forgery?") detect replication with SSCD
(Pizzi et al. 2022, a copy-detection network trained to see through crops, flips and
edits) and count a copy at cosine similarity >= 0.5 between a generated image and its
nearest training image. `audit match --descriptor sscd_disc_mixup.torchscript.pt` loads
that file (from https://github.com/facebookresearch/sscd-copy-detection; this project
downloads no weights) and its vote reproduces their protocol; any other TorchScript or
ONNX model mapping a (N, 3, S, S) float batch to (N, D) vectors works the same way, at a
threshold you measure with `audit calibrate --descriptor PATH`.

As with the CLIP model, nothing falls back silently: a missing file, a file that is not a
model, an ONNX file without onnxruntime installed, or a model whose output is not (N, D)
stops with a message that says what to pass.

Preprocessing (SSCD's): RGB, resized to `size` x `size` (default 288), scaled to [0, 1] and
normalised with the ImageNet mean and standard deviation; outputs are L2-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import AuditError

SSCD_THRESHOLD = 0.5  # Somepalli et al.'s copy threshold for SSCD similarity
SIZE = 288  # SSCD's evaluation resolution
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HINT = (
    "pass a TorchScript (.pt) or ONNX (.onnx) image descriptor, e.g. "
    "sscd_disc_mixup.torchscript.pt from github.com/facebookresearch/sscd-copy-detection"
)


@dataclass
class Descriptor:
    """A loaded descriptor: `embed(images) -> (N, dim)` unit vectors; copy at `threshold`."""

    path: str
    kind: str  # "torchscript" or "onnx"
    dim: int
    size: int
    threshold: float
    run: Any = field(repr=False)  # (N, 3, S, S) float32 array -> (N, D) array
    batch: int = 16

    @property
    def info(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": Path(self.path).name,
            "kind": self.kind,
            "dim": self.dim,
            "size": self.size,
            "threshold": self.threshold,
        }

    def embed(self, images: list[Any]) -> Any:
        """L2-normalised (N, dim) float32 vectors of PIL images."""
        out = [self._forward(images[i : i + self.batch]) for i in range(0, len(images), self.batch)]
        v = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def _forward(self, images: list[Any]) -> Any:
        x = np.stack([preprocess(im, self.size) for im in images])
        y = np.asarray(self.run(x), np.float32)
        if y.ndim != 2 or y.shape[0] != len(images):
            raise AuditError(
                f"{self.path} returned an array of shape {y.shape} for {len(images)} images; "
                f"a copy descriptor must return (N, D) vectors: {HINT}"
            )
        return y


def preprocess(img: Any, size: int = SIZE) -> Any:
    """A PIL image as a (3, size, size) float32 array, ImageNet-normalised."""
    from PIL import Image

    a = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32)
    normalised = (a / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), np.float32)


def load(path: str | Path, threshold: float = SSCD_THRESHOLD, size: int = SIZE) -> Descriptor:
    """Load a TorchScript or ONNX descriptor and check it on one blank image.

    >>> d = load("sscd_disc_mixup.torchscript.pt")  # doctest: +SKIP
    >>> d.embed([img]).shape                        # doctest: +SKIP
    (1, 512)
    """
    p = Path(path)
    if not p.is_file():
        raise AuditError(f"descriptor file {p} does not exist: {HINT}")
    if size < 16:
        raise AuditError(f"descriptor size must be at least 16 pixels, got {size}")
    if p.suffix.lower() == ".onnx":
        kind, run = "onnx", _onnx(p)
    else:
        kind, run = "torchscript", _torchscript(p)
    probe = Descriptor(str(p), kind, 0, size, float(threshold), run)
    from PIL import Image

    try:
        dim = int(probe._forward([Image.new("RGB", (size, size), (128, 128, 128))]).shape[1])
    except AuditError:
        raise
    except Exception as e:  # noqa: BLE001 - any model error is reported with the file's name
        raise AuditError(
            f"{p} failed on a (1, 3, {size}, {size}) image batch ({type(e).__name__}: {e}); "
            f"{HINT}, or set its input size with --descriptor-size"
        ) from e
    return Descriptor(str(p), kind, dim, size, float(threshold), run)


def _torchscript(p: Path) -> Any:
    import torch

    try:
        model = torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, ValueError, ...
        raise AuditError(f"{p} is not a TorchScript model ({type(e).__name__}: {e}); {HINT}") from e

    def run(x: Any) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return run


def _onnx(p: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise AuditError(
            f"{p} is an ONNX model but onnxruntime is not installed: "
            "pip install onnxruntime, or export the model to TorchScript"
        ) from e
    try:
        session = onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise AuditError(
            f"{p} is not a readable ONNX model ({type(e).__name__}: {e}); {HINT}"
        ) from e
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]
