"""Shared fixtures: small real-looking workspaces built straight through the base layer.

`make_workspace` writes images as files and one metadata part per `rows_per_part` records,
exactly as `audit ingest` would record them, so stage tests do not depend on ingest.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from audit.schema import METADATA
from audit.workspace import Output, Workspace, atomic_write_parquet, part_name

os.environ.setdefault("AUDIT_NO_PROGRESS", "1")
DATA = Path(__file__).parent / "data"


def synthetic_image(seed: int, size: int = 64) -> Any:
    """A deterministic picture with structure (shapes on a gradient), different per seed."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float32)
    arr = np.stack(
        [np.add.outer(base * rng.random(), base * rng.random()) % 256 for _ in range(3)], -1
    )
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 8, 2)
        x1, y1 = x0 + rng.integers(6, size // 2), y0 + rng.integers(6, size // 2)
        draw.ellipse(
            [int(x0), int(y0), int(x1), int(y1)],
            fill=tuple(int(c) for c in rng.integers(0, 255, 3)),
        )
    return img


def encode(img: Any, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def build_workspace(
    root: Path,
    images: list[bytes | None],
    captions: list[str] | None = None,
    urls: list[str] | None = None,
    rows_per_part: int = 1000,
    extra: dict[str, list[Any]] | None = None,
) -> Workspace:
    """A workspace whose ingest stage is done, with `images[i]` as row i (None = missing)."""
    root = Path(root)
    ws = Workspace.create(root)
    files = root.parent / f"{root.name}-files"
    files.mkdir(parents=True, exist_ok=True)
    n = len(images)
    captions = captions or [f"picture number {i}" for i in range(n)]
    urls = urls or [f"https://img{i % 7}.example.com/a/{i}.png" for i in range(n)]
    run = ws.start_stage("ingest", {"sources": ["test fixture"]})
    for p, start in enumerate(range(0, n, rows_per_part)):
        rows = []
        for i in range(start, min(n, start + rows_per_part)):
            data = images[i]
            rec = {name: None for name in METADATA.names}
            rec.update(
                row_id=i,
                key=f"{i:09d}",
                url=urls[i],
                caption=captions[i],
                source_file="fixture",
                source_row=i,
            )
            if data is None:
                rec["image_status"] = "missing"
            else:
                path = files / f"{i:09d}.img"
                path.write_bytes(data)
                rec.update(
                    image_path=str(path),
                    image_offset=0,
                    image_size=len(data),
                    image_sha256=hashlib.sha256(data).hexdigest(),
                    image_status="ok",
                )
            for col, values in (extra or {}).items():
                rec[col] = values[i]
            rows.append(rec)
        schema = METADATA
        for col in extra or {}:
            if col not in METADATA.names:
                schema = schema.append(pa.field(col, pa.array([r[col] for r in rows]).type))
        table = pa.Table.from_pylist(rows, schema=schema)
        rel = f"metadata/part-{part_name(p)}.parquet"
        atomic_write_parquet(root / rel, table)
        run.record_part(p, [Output(rel, rows=len(rows), row_offset=start)])
    run.finish({"rows": n})
    return ws


@pytest.fixture
def make_workspace(tmp_path: Path):
    """`make_workspace(images, captions=None, urls=None, rows_per_part=1000)` -> Workspace."""

    def make(images: list[bytes | None], **kw: Any) -> Workspace:
        return build_workspace(tmp_path / "ws", images, **kw)

    return make


@pytest.fixture(scope="session")
def audited_sample(tmp_path_factory) -> Path:
    """The bundled sample audited end to end, as a user's project folder (fast: about a minute).

    `<project>/indexes/sample` is the workspace and `<project>/reports/sample` its reports:
    `audit run` on the sample without training (so no model folder), a calibration page on 20
    images, and a memorisation check of planted "generated" images (4 training images copied,
    one colour-shifted, 4 synthetic pictures) so the memorisation page and the card's
    `model-index` have results, and the same 9 images as a prompt grid for the generated-image
    bias page. Returns the project folder; tests must not modify it.
    """
    from PIL import ImageOps

    from audit import cards, experiments, pipeline
    from audit.images import decode, read_bytes

    project = tmp_path_factory.mktemp("project")
    ws_root = project / "indexes" / "sample"
    reports = project / "reports" / "sample"
    options = pipeline.RunOptions.demo()
    options.train_steps, options.calibrate = 0, 20
    pipeline.run(ws_root, options, echo=lambda _: None)
    generated = project / "generated"
    generated.mkdir()
    con = Workspace.open(ws_root).connect()
    rows = con.execute(
        "SELECT row_id, image_path, image_offset, image_size FROM metadata "
        "WHERE row_id IN (3, 40, 77, 150) ORDER BY row_id"
    ).fetchall()
    for row_id, path, offset, size in rows:
        img = decode(read_bytes(path, offset, size), mode="RGB")
        img.save(generated / f"copy-{row_id}.png")
    ImageOps.autocontrast(img).save(generated / "shifted-150.png")
    for i in range(4):
        synthetic_image(100 + i, 64).save(generated / f"novel-{i}.png")
    experiments.match(generated, against=ws_root, name="planted", report_dir=reports, workers=1)
    # the generated-image bias page: the same images as a tiny prompt grid
    from audit.checks.bias import generated as bias_generated

    grid = project / "grid.csv"
    files = sorted(p.name for p in generated.glob("*.png"))
    plan = [("doctor", ""), ("doctor", "female"), ("nurse", "")]
    grid.write_text(
        "file,prompt,profession,descriptor,seed\n"
        + "".join(
            f"{f},a photo of a {plan[i % 3][1]} {plan[i % 3][0]},{plan[i % 3][0]},{plan[i % 3][1]},{i}\n"
            for i, f in enumerate(files)
        )
    )
    bias_generated.compute(
        ws_root / "memorisation" / "planted" / "generated",
        grid,
        generated_dir=generated,
        report_dir=reports / "bias",
        bootstrap=50,
    )
    cards.build_model_card(ws_root, out=reports / "MODEL_CARD.md")
    from audit.reports import overview

    overview.write(ws_root, reports)
    return project
