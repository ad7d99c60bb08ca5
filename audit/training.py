"""Composer behind `audit train` and `audit generate`: workspace rows in, model and images out.

`train` reads the consented rows of a workspace (`optout/kept.parquet`, written by
`audit filter`), decodes their images, makes them square by padding on white (clip art sits
on white, so padding adds nothing new, whereas a centre crop would cut pictures off), shrinks
them to the training resolution and hands the array to the `audit.diffusion` island. The
model folder records which rows it was trained on (`training_rows.parquet`), so the
memorisation check knows the members.

`generate` samples a trained model and writes the images as `DIR/generated/<key>.png` plus a
LAION-shaped `DIR/generated.parquet` (key, url = file://..., caption = the prompt, width,
height, seed, ...): img2dataset's "files" layout, so `audit ingest WS DIR` reads images and
metadata together.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audit import progress
from audit.errors import AuditError
from audit.images import DEFAULT_MAX_PIXELS, ImageProblem, decode, read_bytes
from audit.progress import track
from audit.schema import error_table
from audit.workspace import Workspace, atomic_write_bytes, atomic_write_parquet, sha256_file

CONDITIONINGS = ("none", "category")
KEPT = "optout/kept.parquet"
NO_CATEGORY = "(none)"
# generate's layout is img2dataset's "files" output: `generated.parquet` + `generated/<key>.png`,
# which `audit ingest DIR` (and so `audit match DIR`) reads with every column of the parquet.
IMAGES = "generated"


def square_on_white(img: Any, size: int) -> Any:
    """Pad a PIL RGB image to a square on white, then resize it to `size` x `size` (Lanczos)."""
    from PIL import Image

    side = max(img.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def _selected_rows(ws: Workspace, all_rows: bool) -> tuple[set[int] | None, str]:
    if all_rows:
        return None, "all rows (--all-rows: opt-outs ignored)"
    kept = ws.path(KEPT)
    if not kept.exists():
        raise AuditError(
            f"{kept} does not exist, so the consented rows are unknown. Run `audit optout {ws.root}` "
            f"and `audit filter {ws.root}` first, or pass --all-rows to train on every row on purpose."
        )
    import pyarrow.parquet as pq

    return set(
        pq.read_table(kept, columns=["row_id"]).column("row_id").to_pylist()
    ), f"{KEPT} sha256 {sha256_file(kept)}"


def load_rows(
    ws_root: str | Path, resolution: int = 32, conditioning: str = "none", all_rows: bool = False
) -> tuple[Any, Any, Any, list[dict[str, Any]], dict[str, Any]]:
    """(images uint8 (N,R,R,3), labels or None, rows table, error rows, data provenance)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if conditioning not in CONDITIONINGS:
        raise AuditError(f"conditioning '{conditioning}' is unknown; use one of {CONDITIONINGS}.")
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    keep, selection = _selected_rows(ws, all_rows)
    columns = [
        "row_id",
        "key",
        "caption",
        "source_file",
        "source_row",
        "image_path",
        "image_offset",
        "image_size",
        "image_status",
        "image_sha256",
    ]
    images, rows, errors = [], [], []
    for part in parts:
        names = pq.read_schema(ws.path(part.path)).names
        if conditioning == "category" and "category" not in names:
            raise AuditError(
                f"{ws.path(part.path)} has no `category` column; use --conditioning none."
            )
        cols = columns + (["category"] if conditioning == "category" else [])
        table = ws.read_part(part, columns=cols)
        if keep is not None:
            table = table.filter(pa.array([r in keep for r in table.column("row_id").to_pylist()]))
        for rec in track(table.to_pylist(), table.num_rows, f"decoding part {part.stem}"):
            try:
                if rec["image_status"] != "ok" or rec["image_path"] is None:
                    raise ImageProblem(
                        "image_missing",
                        f"row {rec['row_id']} has no usable image ({rec['image_status']})",
                    )
                data = read_bytes(rec["image_path"], rec["image_offset"], rec["image_size"])
                img = decode(data, DEFAULT_MAX_PIXELS, draft_size=(4 * resolution, 4 * resolution))
            except ImageProblem as p:
                errors.append(
                    {
                        "stage": "train",
                        "row_id": rec["row_id"],
                        "source_file": rec["source_file"],
                        "source_row": rec["source_row"],
                        "reason": p.reason,
                        "detail": p.detail,
                    }
                )
                continue
            images.append(np.asarray(square_on_white(img, resolution), dtype=np.uint8))
            rows.append(rec)
    if not images:
        raise AuditError(
            f"no usable images among the selected rows of {ws.root} ({selection}, {len(errors)} failed)."
        )
    labels, classes = None, []
    if conditioning == "category":
        # The top level of the category path ("people / bodypart" -> "people"): enough rows per class.
        tops = [(r.get("category") or NO_CATEGORY).split(" / ")[0].strip() for r in rows]
        classes = sorted(set(tops))
        labels = np.array([classes.index(c) for c in tops], dtype=np.int64)
        for r, c in zip(rows, tops, strict=True):
            r["class_label"] = c
    row_ids = np.array([r["row_id"] for r in rows], dtype=np.int64)
    provenance = {
        "workspace": str(ws.root.resolve()),
        "dataset": ws.dataset,
        "selection": selection,
        "rows": len(rows),
        "row_ids_sha256": hashlib.sha256(row_ids.tobytes()).hexdigest(),
        "skipped": len(errors),
        "conditioning": conditioning,
        "classes": classes,
    }
    keep_cols = ["row_id", "key", "caption", "image_sha256"] + (
        ["category", "class_label"] if labels is not None else []
    )
    table = pa.Table.from_pylist([{c: r[c] for c in keep_cols} for r in rows])
    if labels is not None:
        table = table.append_column("label", pa.array(labels, pa.int64()))
    return np.stack(images), labels, table, errors, provenance


# 16 is the demo's where there is no native bf16: ~1.9x the steps of 32 in the same time, and
# a far easier picture to learn in minutes (README, "How long the demo takes").
RESOLUTIONS = (16, 32, 64)


def train_on_workspace(
    ws_root: str | Path,
    out: str | Path,
    resolution: int = 32,
    steps: int = 2000,
    minutes: float = 0.0,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    conditioning: str = "none",
    all_rows: bool = False,
    checkpoint_every: int = 500,
    sample_grid: int = 64,
    base_channels: int = 32,
    min_snr_gamma: float = 0.0,
) -> dict[str, Any]:
    """Train the small DDPM on a workspace's consented rows; resume if `out` holds a checkpoint.

    `minutes > 0` trains for that wall-clock budget instead of `steps` (the steps that fit
    are planned from the measured rate and recorded in `config.json`). `min_snr_gamma > 0`
    weights the loss by min(SNR, gamma) / SNR (`audit.diffusion.train`; the demo uses 5).

    >>> train_on_workspace("indexes/sample", "models/sample", steps=3000)  # doctest: +SKIP
    >>> train_on_workspace("indexes/sample", "models/sample", minutes=10)  # doctest: +SKIP
    """
    from audit import diffusion

    if resolution not in RESOLUTIONS:
        raise AuditError(f"resolution must be one of {RESOLUTIONS}, got {resolution}.")
    images, labels, rows, errors, provenance = load_rows(
        ws_root, resolution, conditioning, all_rows
    )
    out = Path(out)
    atomic_write_parquet(out / "training_rows.parquet", rows)
    if errors:
        atomic_write_parquet(out / "errors.parquet", error_table(errors))
    classes = provenance.pop("classes")
    # One level per doubling past 16x16, so attention always runs at 8x8.
    mults = {16: (1, 2), 32: (1, 2, 2), 64: (1, 2, 2, 2)}[resolution]
    model = diffusion.ModelConfig(
        resolution=resolution,
        base_channels=base_channels,
        channel_mults=mults,
        attention_resolution=8,
        num_classes=len(classes),
    )
    config = diffusion.TrainConfig(
        steps=steps,
        minutes=minutes,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        precision=precision,
        checkpoint_every=checkpoint_every,
        sample_grid=sample_grid,
        min_snr_gamma=min_snr_gamma,
        model=model,
        classes=classes,
        data=provenance,
    )
    with _bars() as bar:
        summary = diffusion.train(
            images,
            labels,
            config,
            out,
            on_step=bar and (lambda i: bar("training", i.step, i.total, _train_fields(i))),
            on_sample=bar and (lambda done, total: bar("sampling the grid", done, total, {})),
        )
    summary.update(rows=provenance["rows"], skipped=len(errors), classes=len(classes))
    return summary


@contextmanager
def _bars() -> Iterator[Callable[[str, int, int, dict[str, str]], None] | None]:
    """Progress bars in steps with steps/s, loss, elapsed and ETA; None when bars are off.

    `update(description, done, total, fields)` draws the bar of that description, which
    appears at its first update (so sampling's bar shows up once training is done).
    """
    if not progress.enabled():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        console=Console(stderr=True),
    )
    tasks: dict[str, Any] = {}
    bar.start()

    def update(description: str, done: int, total: int, fields: dict[str, str]) -> None:
        if description not in tasks:
            tasks[description] = bar.add_task(description, total=total, rate="", loss="", eta="")
        task = tasks[description]
        if not fields:  # plain steps: the rate rich measures
            speed = bar.tasks[list(tasks).index(description)].speed
            fields = {"rate": f"{speed:.2f} steps/s" if speed else ""}
            fields["eta"] = _clock((total - done) / speed) if speed else ""
        bar.update(task, completed=done, total=total, **fields)  # type: ignore[arg-type]  # task fields

    try:
        yield update
    finally:
        bar.stop()


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _train_fields(info: Any) -> dict[str, str]:
    """steps/s, loss and ETA of a training step: a budgeted run ends at the earlier of its
    planned steps and its budget."""
    rate = info.steps_per_s
    left = (info.total - info.step) / rate if rate else None
    if info.budget_seconds:
        budget_left = max(0.0, info.budget_seconds - info.seconds)
        left = budget_left if left is None else min(left, budget_left)
    return {
        "rate": f"{rate:.2f} steps/s" if rate else "",
        "loss": f"loss {info.loss:.4f}",
        "eta": _clock(left) if left is not None else "",
    }


def _jobs(
    config: dict[str, Any], class_label: list[str] | None, prompts: str | Path | None
) -> list[dict[str, Any]]:
    """One entry per group of images: caption, prompt, class name and class id (None = no class)."""
    classes = list(config.get("classes") or [])

    def class_id(value: str) -> int:
        if not classes:
            raise AuditError(
                "this model was trained without classes (--conditioning none); drop --class-label."
            )
        if value in classes:
            return classes.index(value)
        if value.isdigit() and int(value) < len(classes):
            return int(value)
        raise AuditError(
            f"class label '{value}' is not one of the model's classes: {', '.join(classes)}."
        )

    if prompts is not None:
        import pandas as pd

        try:
            table = pd.read_csv(prompts, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as e:
            raise AuditError(f"cannot read prompts table {prompts}: {e}") from e
        if "prompt" not in table.columns:
            raise AuditError(
                f"{prompts} needs a `prompt` column (optional: `class_label`); found {list(table.columns)}."
            )
        jobs = []
        for rec in table.to_dict("records"):
            label = rec.get("class_label") or None
            cid = class_id(label) if label else None
            jobs.append(
                {
                    "caption": rec["prompt"],
                    "prompt": rec["prompt"],
                    "class_label": classes[cid] if cid is not None else None,
                    "class_id": cid,
                }
            )
        return jobs
    if class_label:
        return [
            {"caption": classes[c], "prompt": None, "class_label": classes[c], "class_id": c}
            for c in map(class_id, class_label)
        ]
    return [{"caption": "", "prompt": None, "class_label": None, "class_id": None}]


def generate(
    model: str | Path,
    out: str | Path,
    n: int = 16,
    sampler: str = "ddpm",
    steps: int = 50,
    seed: int = 0,
    class_label: list[str] | None = None,
    prompts: str | Path | None = None,
    eta: float = 0.0,
    guidance_scale: float = 2.0,
    device: str = "auto",
    sign_cert: str | Path | None = None,
    sign_key: str | Path | None = None,
    training_mining: str = "notAllowed",
) -> dict[str, Any]:
    """Write `n` images per prompt / class label (or `n` unconditional ones) to `out`.

    Image i (counting across all groups) uses seed `seed + i`, recorded per row. Every image is
    marked as generated (`audit.provenance.marking`): IPTC digital source type in XMP and a C2PA
    manifest signed with `sign_cert` / `sign_key` (PEM), or without them with a local, untrusted
    certificate made in the model folder; `training_mining` (notAllowed, allowed, constrained)
    is the CAWG training-and-data-mining choice embedded for the output.

    >>> generate("models/sample", "generated/sample", n=64)  # doctest: +SKIP
    """
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from audit import diffusion

    if n < 1:
        raise AuditError(f"--n must be at least 1, got {n}.")
    model_dir, out = Path(model), Path(out)
    weights = model_dir / "model.safetensors"
    if not weights.exists():
        raise AuditError(
            f"{weights} does not exist. Train a model first: audit train WS --out {model_dir}"
        )
    from audit.provenance import marking

    # Before anything is sampled or removed, so a bad certificate costs nothing.
    marker = marking.Marker(marking.signing(model_dir, sign_cert, sign_key), training_mining)
    _clear_previous(out)
    net, schedule, config = diffusion.load(model_dir, device=device)
    jobs = _jobs(config, class_label, prompts)
    per_image = [job for job in jobs for _ in range(n)]
    k = net.config.num_classes
    labels = [k if j["class_id"] is None else j["class_id"] for j in per_image] if k else None
    with _bars() as bar:
        images = diffusion.sample(
            net,
            schedule,
            len(per_image),
            seed=seed,
            sampler=sampler,
            steps=steps,
            eta=eta,
            class_labels=labels,
            guidance_scale=guidance_scale,
            on_step=bar
            and (lambda done, total: bar(f"sampling {len(per_image)} images", done, total, {})),
        )
    model_sha = sha256_file(weights)
    agent = {
        "name": f"audit DDPM {model_dir.name}",
        "version": f"step {int(config.get('step', 0))}",
        "sha256": model_sha,
    }
    rows = []
    for i, (img, job) in enumerate(
        zip(track(images, len(images), "writing images"), per_image, strict=True)
    ):
        name = f"{IMAGES}/{i:06d}.png"
        buf = io.BytesIO()
        Image.fromarray(np.asarray(img)).save(buf, format="PNG")
        data, embedded = marker.mark(buf.getvalue(), Path(name).name, agent)
        atomic_write_bytes(out / name, data)
        rows.append(
            {
                "key": f"{i:06d}",
                "url": (out / name).resolve().as_uri(),
                "caption": job["caption"],
                "width": int(img.shape[1]),
                "height": int(img.shape[0]),
                "file": name,
                "seed": seed + i,
                "sampler": sampler,
                "steps": steps,
                "eta": eta,
                "guidance_scale": guidance_scale,
                "class_label": job["class_label"],
                "prompt": job["prompt"],
                "model_path": str(model_dir.resolve()),
                "model_sha256": model_sha,
                "model_step": int(config.get("step", 0)),
                **embedded,
            }
        )
    marker.close()
    schema = pa.schema(
        [
            ("key", pa.string()),
            ("url", pa.string()),
            ("caption", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("file", pa.string()),
            ("seed", pa.int64()),
            ("sampler", pa.string()),
            ("steps", pa.int32()),
            ("eta", pa.float32()),
            ("guidance_scale", pa.float32()),
            ("class_label", pa.string()),
            ("prompt", pa.string()),
            ("model_path", pa.string()),
            ("model_sha256", pa.string()),
            ("model_step", pa.int64()),
            *marking.RECORD_SCHEMA,
        ]
    )
    atomic_write_parquet(out / "generated.parquet", pa.Table.from_pylist(rows, schema=schema))
    return {
        "images": len(rows),
        "out": str(out),
        "sampler": sampler,
        "steps": steps,
        "model_step": int(config.get("step", 0)),
        "signer": marker.sign.subject,
        "local_certificate": marker.sign.local,
        "training_mining": training_mining,
    }


def _clear_previous(out: Path) -> None:
    """Refuse a folder that holds other things; remove the images of an earlier `generate`.

    `generated.parquet` is only a claim: a name that is not one this command writes
    (`generated/NNNNNN.png`), or that leads out of `out/generated/` (absolute, `..`, a
    symlink), stops the command before anything is deleted.
    """
    import re

    import pyarrow.parquet as pq

    if not out.exists() or not any(out.iterdir()):
        return
    previous = out / "generated.parquet"
    if not previous.exists():
        raise AuditError(
            f"{out} is not empty and holds no generated.parquet; pass a new or empty --out folder."
        )
    folder = (out / IMAGES).resolve()
    victims = []
    for name in pq.read_table(previous, columns=["file"]).column("file").to_pylist():
        path = out / str(name)
        if (
            not isinstance(name, str)
            or not re.fullmatch(rf"{re.escape(IMAGES)}/\d{{6}}\.png", name)
            or path.is_symlink()
            or (out / IMAGES).is_symlink()
            or path.resolve().parent != folder
        ):
            raise AuditError(
                f"{previous} lists {name!r}, which is not an image `audit generate` writes "
                f"({IMAGES}/NNNNNN.png inside {out}); nothing was deleted. Pass a new --out folder."
            )
        victims.append(path)
    for path in victims:
        path.unlink(missing_ok=True)
    previous.unlink()
    if (out / IMAGES).is_dir() and not any((out / IMAGES).iterdir()):
        (out / IMAGES).rmdir()
