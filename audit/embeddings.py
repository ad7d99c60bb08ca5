"""Stage `embed`: open_clip image and caption embeddings, row-aligned with the metadata parts.

Writes, per metadata part NNNNN:
  `embeddings/img-NNNNN.npy`, `embeddings/txt-NNNNN.npy`  float16 (rows, D), L2-normalised,
      zero rows where the image (or caption) could not be used;
  `embeddings/scores-NNNNN.parquet`  row_id, clip_similarity (image-caption cosine, float32,
      null when either side is missing), LAION's `similarity` column recomputed;
  `errors/embed-NNNNN.parquet`;
and `embeddings/model.json` (model, pretrained tag or file + sha256, trained, dim, image_size).

Models: any open_clip architecture with a pretrained tag (`ViT-B-32` / `laion2b_s34b_b79k`) or
a local checkpoint (`--pretrained path.bin|.safetensors`), or `tiny`, a small CLIP built in code
(ViT 64 px, width 64, 2 layers; text width 64, 2 layers; embed_dim 64) with seeded random
weights. Random weights are only ever used when asked for with `pretrained="none"`, and every
artefact then says `trained: false`.

Decoding and preprocessing run in DataLoader worker processes while the model runs, so the
stage costs about one forward pass. Resumable per part: batches never cross a part, so a
resumed run computes exactly the batches an uninterrupted run would.

Example:
    >>> from audit import embeddings
    >>> embeddings.compute("indexes/sample", model="tiny", pretrained="none")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from audit import engines, threads
from audit.engines.local import PartResult
from audit.errors import AuditError, MissingWeightsError
from audit.images import ImageProblem, decode, read_bytes
from audit.progress import track
from audit.schema import IMAGE_LOCATION, PROVENANCE, error_table
from audit.workspace import (
    Output,
    Part,
    Workspace,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_parquet,
    sha256_file,
)

STAGE = "embed"
TINY = "tiny"
TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_SEED = 0
CHARS_PER_TOKEN = 32  # captions are cut to this many characters per context token


class ClipModel:
    """An open_clip model ready for inference, with what produced it in `.info`."""

    def __init__(
        self, model: Any, preprocess: Any, tokenizer: Any, info: dict[str, Any], device: str
    ):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.info, self.device = info, device

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    def prepare(self, img: Any) -> Any:
        """PIL image -> model input tensor. Box-reduces big images first (cheap) so the
        preprocess resize works on at most ~4x the model's input size."""
        factor = min(img.size) // (4 * self.image_size)
        if factor > 1:
            img = img.reduce(factor)
        return self.preprocess(img)

    def embed_images(self, images: list[Any]) -> np.ndarray:
        """float32 (N, D), L2-normalised."""
        import torch

        if not images:
            return np.zeros((0, self.info["dim"]), np.float32)
        batch = torch.stack([self.prepare(im.convert("RGB")) for im in images])
        return self.encode_image_tensor(batch)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """float32 (N, D), L2-normalised."""
        if not texts:
            return np.zeros((0, self.info["dim"]), np.float32)
        return self.encode_text_tokens(self.tokenize(list(texts)))

    def tokenize(self, texts: list[str]) -> Any:
        """Token ids, from captions cut to `CHARS_PER_TOKEN` characters per context token first.

        The tokenizer keeps only its first `context_length` tokens but cleans and splits the
        whole text before cutting, so a 10 MB caption costs seconds for nothing. Every token
        covers at least one character, so the cut changes nothing unless whitespace or HTML
        entities fill more than 31 of every 32 characters.
        """
        limit = CHARS_PER_TOKEN * int(getattr(self.tokenizer, "context_length", 77) or 77)
        return self.tokenizer([t[:limit] for t in texts])

    def encode_image_tensor(self, batch: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self.model.encode_image(batch.to(self.device))
            return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()

    def encode_text_tokens(self, tokens: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self.model.encode_text(tokens.to(self.device))
            return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()


def _register_tiny() -> None:
    from open_clip import factory

    # open_clip keeps its architecture registry in this dict; registering here lets `tiny` go
    # through the same create/checkpoint/tokenizer code as the real models.
    factory._MODEL_CONFIGS.setdefault(TINY, TINY_CONFIG)


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _unreachable(hub: str, url: str, timeout: float = 3.0) -> str | None:
    """The download host if a TCP connection to it fails within `timeout` seconds, else None."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub else url
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return host
    return None


def _resolve_weights(model: str, tag: str, cache_dir: str | None) -> str:
    """A local file for an open_clip pretrained tag: from the cache, else downloaded.

    Looks in the caches first and does not try the network when HF_HUB_OFFLINE is set, so a
    machine without weights fails in a second, not after minutes of retries.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise AuditError(
            f"'{tag}' is not an open_clip pretrained tag of {model} (known: {', '.join(tags) or 'none'}). "
            "Pass a tag, a checkpoint path, or --pretrained none."
        )
    if cfg.get("file"):
        return str(cfg["file"])
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = (
            os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        )
        names = (
            [filename]
            if filename
            else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        )
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(hit, str):
                return hit
        wanted = f"{repo}/{names[-1]} (Hugging Face hub)"
    else:
        url = cfg.get("url", "")
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return str(local)
        wanted = url
    fix = (
        f"Download it on a connected machine and pass --pretrained /path/to/open_clip_pytorch_model.bin, "
        f"or use --model {TINY} --pretrained none for an untrained demo model."
    )
    if _offline():
        raise MissingWeightsError(
            f"weights for {model} / {tag} are not cached here ({wanted}) and HF_HUB_OFFLINE is set. {fix}"
        )
    host = _unreachable(hub, cfg.get("url", ""))
    if host:  # the hub client would retry for about a minute before giving up
        raise MissingWeightsError(
            f"weights for {model} / {tag} are not cached here ({wanted}) and {host} "
            f"cannot be reached. {fix}"
        )
    try:
        return str(open_clip.download_pretrained(cfg, cache_dir=cache_dir))
    except Exception as e:  # noqa: BLE001 - network, HTTP and hub errors all mean "not here"
        raise MissingWeightsError(
            f"weights for {model} / {tag} could not be downloaded ({wanted}: "
            f"{type(e).__name__}). {fix}"
        ) from e


def load_model(
    model: str = TINY, pretrained: str = "none", device: str = "cpu", cache_dir: str | None = None
) -> ClipModel:
    """Build an open_clip model with explicit weights.

    `pretrained` is an open_clip tag, a checkpoint file, or "none" (seeded random weights;
    `.info["trained"]` is then False).

    >>> m = load_model("tiny", "none")
    >>> m.embed_texts(["a cat"]).shape, m.info["trained"]
    ((1, 64), False)
    """
    import open_clip
    import torch

    _register_tiny()
    if model not in open_clip.list_models():
        raise AuditError(
            f"unknown model '{model}'. Use '{TINY}' or an open_clip architecture "
            "such as ViT-B-32 (see open_clip.list_models())."
        )
    info: dict[str, Any] = {
        "model": model,
        "pretrained": pretrained,
        "trained": pretrained != "none",
    }
    checkpoint = None
    if pretrained != "none":
        looks_like_path = os.sep in pretrained or pretrained.endswith(
            (".bin", ".pt", ".pth", ".safetensors")
        )
        if looks_like_path:
            if not Path(pretrained).is_file():
                raise MissingWeightsError(
                    f"checkpoint file {pretrained} does not exist. Pass an existing "
                    f".bin/.safetensors file or --pretrained none."
                )
            checkpoint = str(pretrained)
            info["checkpoint_sha256"] = sha256_file(checkpoint)
        else:
            checkpoint = _resolve_weights(model, pretrained, cache_dir)
        info["checkpoint"] = checkpoint
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(
            TINY_SEED
        )  # random weights are reproducible, and the global RNG untouched
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=checkpoint, device=device, pretrained_text=False
            )
        except RuntimeError as e:
            if checkpoint:
                raise AuditError(f"could not load {checkpoint} into {model}: {e}") from e
            raise
    net.eval()
    info["dim"] = int(net.text_projection.shape[1]) if hasattr(net, "text_projection") else None
    if info["dim"] is None:
        with torch.inference_mode():
            info["dim"] = int(net.encode_text(open_clip.get_tokenizer(model)(["x"])).shape[-1])
    image_size = net.visual.image_size
    info["image_size"] = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    return ClipModel(net, preprocess, open_clip.get_tokenizer(model), info, device)


class _Rows:
    """torch Dataset over pending rows: decode + preprocess an image, tokenize its caption."""

    def __init__(self, columns: dict[str, list[Any]], clip: ClipModel):
        self.c, self.clip = columns, clip
        self.blank = None

    def __len__(self) -> int:
        return len(self.c["row_id"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        size = self.clip.image_size
        item = {"i": i, "ok": False, "reason": "", "detail": ""}
        try:
            if self.c["image_status"][i] != "ok" or self.c["image_path"][i] is None:
                raise ImageProblem(
                    "image_missing",
                    f"row {self.c['row_id'][i]} has no usable image ({self.c['image_status'][i]})",
                )
            data = read_bytes(
                self.c["image_path"][i], self.c["image_offset"][i], self.c["image_size"][i]
            )
            item["image"] = self.clip.prepare(decode(data, draft_size=(size, size)))
            item["ok"] = True
        except ImageProblem as p:
            item["reason"], item["detail"] = p.reason, p.detail
        except Exception as e:  # noqa: BLE001 - a bad image becomes an error row, never a crash
            item["reason"], item["detail"] = "image_undecodable", f"{type(e).__name__}: {e}"
        if not item["ok"]:
            item["image"] = torch.zeros(3, size, size)
        caption = self.c["caption"][i]
        item["tokens"] = self.clip.tokenize([caption if isinstance(caption, str) else ""])[0]
        return item


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "i": [it["i"] for it in items],
        "ok": [it["ok"] for it in items],
        "reason": [it["reason"] for it in items],
        "detail": [it["detail"] for it in items],
        "image": torch.stack([it["image"] for it in items]),
        "tokens": torch.stack([it["tokens"] for it in items]),
    }


def compute(
    ws_root: str | os.PathLike[str],
    model: str = TINY,
    pretrained: str = "none",
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "cpu",
    engine: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Embed every image and caption of the workspace (stage `embed`); returns the summary.

    `engine` runs the parts here ("local") or as Ray tasks ("ray", see `audit.engines`), each
    loading the model once per worker; on the same device the vectors are the same.

    >>> compute("indexes/sample", model="ViT-B-32", pretrained="laion2b_s34b_b79k")  # doctest: +SKIP
    """
    if workers is None:  # the process's thread budget (audit.threads)
        workers = threads.budget()
    if batch_size < 1 or workers < 0:
        raise AuditError(f"batch_size must be >= 1 and workers >= 0 (got {batch_size}, {workers}).")
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    clip = _model(model, pretrained, device)
    info = dict(clip.info)
    params = {
        k: info.get(k) for k in ("model", "pretrained", "checkpoint_sha256", "trained", "dim")
    }
    params.update(batch_size=batch_size, device=device)
    run = ws.start_stage(STAGE, params, depends_on=["ingest"])
    atomic_write_json(ws.path("embeddings/model.json"), info)
    todo = [p for p in parts if not run.is_done(p.number)]
    runner = engines.get(engine, ray_address)
    settings = {
        "model": model,
        "pretrained": pretrained,
        "batch_size": batch_size,
        # on Ray each task has one core: decode in the task's own process, one torch thread
        "workers": workers if runner.in_process else 0,
        "device": device,
        # Decoding workers and the forward pass share the cores; torch threads beyond the
        # cores left over spin against the workers (and other jobs) and run many times slower.
        "torch_threads": max(1, threads.budget() - max(1, workers)) if runner.in_process else 1,
    }
    t0 = time.perf_counter()
    for part, result in engines.progress(
        runner, runner.map_parts("audit.embeddings:embed_part", ws.root, todo, settings), todo
    ):
        run.record_part(part.number, result.outputs, **result.info)
    seconds = time.perf_counter() - t0
    n_errors = sum(int((run.part_info(p.number) or {}).get("image_errors", 0)) for p in parts)
    rows = sum(p.rows for p in parts)
    summary = {
        "rows": rows,
        "embedded": rows - n_errors,
        "errors": n_errors,
        "dim": clip.info["dim"],
        "parts": len(parts),
        "resumed_parts": len(parts) - len(todo),
        "seconds": round(seconds, 3),
        "rows_per_second": round(sum(p.rows for p in todo) / seconds, 1)
        if todo and seconds > 0
        else None,
    }
    summary.update(model=model, pretrained=pretrained, trained=info["trained"])
    run.finish(summary, [Output("embeddings/model.json")])
    return summary


# One model per process and (model, weights, device): an engine's worker embeds many parts.
_MODELS: dict[tuple[str, str, str], ClipModel] = {}


def _model(model: str, pretrained: str, device: str) -> ClipModel:
    key = (model, pretrained, device)
    if key not in _MODELS:
        _MODELS.clear()  # keep at most one model in memory
        _MODELS[key] = load_model(model, pretrained, device)
    return _MODELS[key]


def embed_part(
    ws_root: str,
    part: Part,
    model: str,
    pretrained: str,
    batch_size: int,
    workers: int,
    device: str,
    torch_threads: int = 1,
) -> PartResult:
    """Embed one metadata part and write its files (the per-part function engines run)."""
    import torch

    ws = Workspace.open(ws_root)
    clip = _model(model, pretrained, device)
    cols = [*PROVENANCE, "caption", *IMAGE_LOCATION]
    columns = ws.read_part(part, columns=cols).to_pydict()
    batches = [
        list(range(s, min(part.rows, s + batch_size))) for s in range(0, part.rows, batch_size)
    ]
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        img, txt, errors = _embed(clip, columns, batches, workers)
    finally:
        torch.set_num_threads(before)
    return _write_part(ws, part, img, txt, errors)


def _embed(
    clip: ClipModel, columns: dict[str, list[Any]], batches: list[list[int]], workers: int
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Image and text vectors of one part's rows (float32), and its error rows."""
    import torch

    loader: Any = torch.utils.data.DataLoader(
        _Rows(columns, clip),  # type: ignore[arg-type]  # a map-style dataset: __getitem__ and __len__
        batch_sampler=batches,
        num_workers=workers if batches else 0,
        collate_fn=_collate,
        prefetch_factor=4 if workers and batches else None,
    )
    dim = clip.info["dim"]
    imgs, txts, errors = [np.zeros((0, dim), np.float32)], [np.zeros((0, dim), np.float32)], []
    for batch in track(
        loader,
        total=sum(len(b) for b in batches),
        description="embedding",
        unit="images",
        weight=lambda batch: len(batch["i"]),
    ):
        ok = np.array(batch["ok"])
        img = np.zeros((len(ok), dim), np.float32)
        if ok.any():
            img[ok] = clip.encode_image_tensor(batch["image"][torch.from_numpy(ok)])
        txt = clip.encode_text_tokens(batch["tokens"])
        for j, i in enumerate(batch["i"]):
            if not ok[j]:
                errors.append(
                    {
                        "stage": STAGE,
                        "row_id": columns["row_id"][i],
                        "reason": batch["reason"][j],
                        "detail": batch["detail"][j],
                        "source_file": columns["source_file"][i],
                        "source_row": columns["source_row"][i],
                    }
                )
            if columns["caption"][i] is None:
                txt[j] = 0.0
                errors.append(
                    {
                        "stage": STAGE,
                        "row_id": columns["row_id"][i],
                        "reason": "caption_missing",
                        "detail": "no caption to embed",
                        "source_file": columns["source_file"][i],
                        "source_row": columns["source_row"][i],
                    }
                )
        imgs.append(img)
        txts.append(txt)
    return np.concatenate(imgs), np.concatenate(txts), errors


def _write_part(
    ws: Workspace,
    part: Part,
    img: np.ndarray,
    txt: np.ndarray,
    errors: list[dict[str, Any]],
) -> PartResult:
    import pyarrow as pa

    # float16 halves the disk and memory; cosines move by < 1e-3.
    img16, txt16 = img.astype(np.float16), txt.astype(np.float16)
    has = (np.abs(img16).sum(1) > 0) & (np.abs(txt16).sum(1) > 0)
    sim = (img16.astype(np.float32) * txt16.astype(np.float32)).sum(1)
    row_ids = np.arange(part.row_offset, part.row_offset + part.rows, dtype=np.int64)
    scores = pa.table(
        {"row_id": row_ids, "clip_similarity": pa.array(sim, pa.float32(), mask=~has)}
    )
    rels = [
        f"embeddings/img-{part.stem}.npy",
        f"embeddings/txt-{part.stem}.npy",
        f"embeddings/scores-{part.stem}.parquet",
        f"errors/{STAGE}-{part.stem}.parquet",
    ]
    atomic_write_npy(ws.path(rels[0]), img16)
    atomic_write_npy(ws.path(rels[1]), txt16)
    atomic_write_parquet(ws.path(rels[2]), scores)
    atomic_write_parquet(ws.path(rels[3]), error_table(errors))
    image_errors = sum(1 for e in errors if e["reason"] != "caption_missing")
    return PartResult(
        [
            Output(rels[0], part.rows, part.row_offset),
            Output(rels[1], part.rows, part.row_offset),
            Output(rels[2], part.rows, part.row_offset),
            Output(rels[3], len(errors)),
        ],
        {"image_errors": image_errors},
    )
