"""Writing chosen workspace rows as training shards: webdataset tars or img2dataset parquet.

Users train from the layouts img2dataset writes, so `audit filter --format` writes the kept
rows in them, resharded to `samples_per_shard` rows per shard, in row order:

- `webdataset`: `<out>/NNNNN.tar` with, per sample, `<key>.<ext>` (the stored image bytes,
  unchanged), `<key>.txt` and `<key>.json` (the sample's own sidecars, copied byte for byte
  when its input had them, else made from the row: caption / the row's metadata), plus
  `<out>/NNNNN.parquet` with the samples' metadata (img2dataset writes both).
- `img2dataset-parquet`: `<out>/NNNNN.parquet` with img2dataset's columns in its order
  (`caption`, `url`, `key`, `status`, `error_message`, `width`, `height`, `original_width`,
  `original_height`, `exif`, `sha256`) and the image bytes in a column named by format (`jpg`,
  `png`, `webp`; img2dataset's `--output_format parquet`).

Rows without a usable image (image_status not `ok`) cannot be training samples and are not
written; their number is in the summary. Each shard is written to a temporary name and moved
into place, so a killed run leaves whole shards only.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.images import ImageProblem, read_bytes
from audit.workspace import Workspace, atomic_path, atomic_write_parquet

FORMATS = ("webdataset", "img2dataset-parquet")
# img2dataset's per-sample metadata columns, in its order
I2D_COLUMNS = (
    "caption",
    "url",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
)
_FROM = {"status": "download_status", "error_message": "download_error"}
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def write(
    ws: Workspace, row_ids: Any, out: str | os.PathLike[str], fmt: str, samples_per_shard: int
) -> dict[str, Any]:
    """Write rows `row_ids` (sorted) of `ws` to folder `out` in `fmt`; returns counts."""
    if fmt not in FORMATS:
        raise AuditError(f"--format {fmt!r}: choose parquet or one of {', '.join(FORMATS)}.")
    if samples_per_shard < 1:
        raise AuditError(f"--samples-per-shard must be at least 1 (got {samples_per_shard}).")
    dest = Path(out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AuditError(f"{dest} exists and is not an empty folder. Pick a new --out folder.")
    dest.mkdir(parents=True, exist_ok=True)
    shards = written = 0
    skipped = 0
    sidecars = _Sidecars()
    for batch, no_image in _batches(ws, row_ids, samples_per_shard):
        skipped += no_image
        if not batch:
            continue
        name = f"{shards:05d}"
        if fmt == "webdataset":
            _write_tar(dest / f"{name}.tar", batch, sidecars)
            atomic_write_parquet(dest / f"{name}.parquet", _i2d_table(batch, with_images=False))
        else:
            atomic_write_parquet(dest / f"{name}.parquet", _i2d_table(batch, with_images=True))
        shards += 1
        written += len(batch)
    return {"format": fmt, "shards": shards, "samples": written, "no_image": skipped}


def _batches(ws: Workspace, row_ids: Any, size: int) -> Iterator[tuple[list[dict], int]]:
    """Lists of up to `size` kept rows with their image bytes, and rows dropped for no image."""
    import numpy as np
    import pyarrow as pa

    row_ids = np.asarray(row_ids, dtype=np.int64)
    batch: list[dict[str, Any]] = []
    seen: set[str] = set()
    dropped = 0
    for part in ws.require_parts():
        local = row_ids[(row_ids >= part.row_offset) & (row_ids < part.row_offset + part.rows)]
        if not len(local):
            continue
        t = ws.read_part(part).take(pa.array(local - part.row_offset))
        for row in t.to_pylist():
            if row["image_status"] != "ok":
                dropped += 1
                continue
            try:
                row["_bytes"] = read_bytes(
                    row["image_path"], row["image_offset"], row["image_size"]
                )
            except ImageProblem:
                dropped += 1  # moved or changed since ingest: not a sample we can vouch for
                continue
            key = row["key"] if row["key"] is not None else f"{row['row_id']:09d}"
            if key in seen or "." in key:  # webdataset splits on the first dot; keys must be unique
                key = f"{key.replace('.', '_')}_{row['row_id']}"
            seen.add(key)
            row["_key"] = key
            batch.append(row)
            if len(batch) == size:
                yield batch, dropped
                batch, dropped = [], 0
    yield batch, dropped


def _ext(row: dict[str, Any]) -> str:
    member = row["image_member"] or row["image_path"] or ""
    _, dot, ext = member.rpartition(".")
    if dot and ext.lower() in ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"):
        return ext.lower()
    return _EXT.get(row["image_format"] or "", "img")


class _Sidecars:
    """The `.txt` / `.json` sidecars of an image where its input had them (tar or folder)."""

    def __init__(self) -> None:
        self._tars: dict[str, dict[str, tuple[int, int]]] = {}

    def get(self, row: dict[str, Any], ext: str) -> bytes | None:
        path, member = row["image_path"], row["image_member"]
        if member is None or not path.endswith(".tar"):
            side = Path(path).with_suffix(f".{ext}")
            return side.read_bytes() if member is None and side.is_file() else None
        index = self._tars.get(path)
        if index is None:
            index = self._tars[path] = _tar_index(path)
        stem = member.rsplit("/", 1)
        head = f"{stem[0]}/" if len(stem) == 2 else ""
        loc = index.get(f"{head}{stem[-1].split('.', 1)[0]}.{ext}")
        return read_bytes(path, loc[0], loc[1]) if loc else None


def _tar_index(path: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    with tarfile.open(path, mode="r:") as tf:
        for m in tf:
            if m.isfile() and m.name.rsplit(".", 1)[-1] in ("txt", "json"):
                out[m.name] = (m.offset_data, m.size)
            tf.members.clear()  # type: ignore[attr-defined]  # keep memory per member
    return out


def _write_tar(path: Path, batch: list[dict[str, Any]], sidecars: _Sidecars) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for row in batch:
            key = row["_key"]
            txt = sidecars.get(row, "txt")
            if txt is None and row["caption"] is not None:
                txt = row["caption"].encode()
            meta = sidecars.get(row, "json") or json.dumps(_i2d_record(row), default=str).encode()
            members = [(f"{key}.{_ext(row)}", row["_bytes"]), (f"{key}.json", meta)]
            if txt is not None:
                members.insert(1, (f"{key}.txt", txt))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tf.addfile(info, io.BytesIO(data))


def _i2d_record(row: dict[str, Any]) -> dict[str, Any]:
    rec = {c: row.get(_FROM.get(c, c)) for c in I2D_COLUMNS}
    rec["key"] = row["_key"]
    if rec["status"] is None:
        rec["status"] = "success"
    return rec


def _i2d_table(batch: list[dict[str, Any]], with_images: bool) -> Any:
    import pyarrow as pa

    table = pa.Table.from_pylist([_i2d_record(r) for r in batch])
    if with_images:
        # one column per stored format (img2dataset names it by --encode_format)
        for ext in sorted({_EXT.get(r["image_format"], "jpg") for r in batch}):
            data = [
                r["_bytes"] if _EXT.get(r["image_format"], "jpg") == ext else None for r in batch
            ]
            table = table.append_column(ext, pa.array(data, pa.binary()))
    return table
