"""A `RawBatch` -> rows of the canonical schema plus their error rows.

Casting goes through `columns.convert`; every image is read once (one seek + read), hashed
(sha256 of the bytes) and opened header-only through `audit.images.open_image` for its
format, size and the pixel limit. With `verify_images` the whole image is also checked:
PNG through `Image.verify()` (CRCs and the complete zlib stream), JPEG by decoding at 1/8
scale (cheap, but the decoder still walks every entropy-coded byte, so a cut-off file is
caught), anything else by a full decode.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from audit.images import ImageProblem, check_size, open_image, read_bytes
from audit.metadata.columns import FROM_SOURCE, check, convert
from audit.metadata.scan import Loc, RawBatch
from audit.schema import IMAGE_COLUMNS, METADATA


@dataclass
class Piece:
    """Canonical rows of one batch, their error rows and counts."""

    table: pa.Table
    errors: list[dict[str, Any]]
    images: Counter = field(default_factory=Counter)  # image_status -> rows


class Reader:
    """Reads image bytes, keeping one open handle per tar shard."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}

    def read(self, loc: Loc) -> bytes:
        if loc.member is None:
            return read_bytes(loc.path, 0, None)
        check_size(loc.size, f"{loc.member} in {loc.path}")  # never read a huge member whole
        f = self._files.get(loc.path)
        if f is None:
            self.close()  # inputs are read one after another; one shard open at a time
            f = self._files[loc.path] = open(loc.path, "rb")  # noqa: SIM115 - closed in close()
        f.seek(loc.offset)
        data = f.read(loc.size)
        if len(data) != loc.size:
            raise ImageProblem(
                "image_truncated",
                f"{loc.member} in {loc.path}: {loc.size} bytes declared, {len(data)} present",
            )
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def build(
    raw: RawBatch,
    row_offset: int,
    source_file: str,
    reader: Reader,
    max_pixels: int,
    verify_images: bool,
    store: Callable[[str], str | None] = str,
) -> Piece:
    """Canonical rows `row_offset ..` for `raw`, with extras after the canonical columns.

    `store` turns an image's local path into the form the part keeps (`Workspace.store`:
    relative to its input root or the workspace), so the workspace and its inputs can move.
    """
    n = raw.n
    errors: list[dict[str, Any]] = []

    def error(i: int, reason: str, detail: str) -> None:
        errors.append(
            {
                "stage": "ingest",
                "row_id": row_offset + i,
                "source_file": source_file,
                "source_row": raw.source_rows[i],
                "reason": reason,
                "detail": detail,
            }
        )

    cols: dict[str, Any] = {}
    for name in FROM_SOURCE:
        target = METADATA.field(name).type
        if name not in raw.columns:
            cols[name] = pa.nulls(n, target)
            continue
        cols[name], problems = convert(raw.columns[name], target)
        cols[name], invalid = check(name, raw.columns[name], cols[name])
        cast_failed = {i for i, kind, _ in problems if kind == "bad_value"}
        for i, detail in invalid:
            if i not in cast_failed:
                error(i, "bad_value", detail)
        for i, kind, value in problems:
            if kind == "not_utf8":
                error(
                    i,
                    "caption_not_utf8" if name == "caption" else "bad_value",
                    f"{name} is not UTF-8; kept with replacement characters",
                )
            else:
                error(
                    i,
                    "bad_value",
                    f"{name}: {_short(value)} is not a valid {target}; stored as null",
                )
    for i, reason, detail in raw.problems:
        error(i, reason, detail)

    img: dict[str, list[Any]] = {k: [None] * n for k in IMAGE_COLUMNS}
    if not any(raw.images) and not any(raw.expect_image):
        # metadata only (the common case for LAION parquet): no per-row work at all
        cols.update({k: pa.nulls(n, METADATA.field(k).type) for k in img if k != "image_status"})
        cols["image_status"] = _repeated("missing", n)
        return _piece(raw, cols, row_offset, source_file, errors, Counter({"missing": n}))
    declared = cols["sha256"].to_pylist()
    # img2dataset's `sha256` (with `--compute_hash sha256`) hashes the raw download, before its
    # resizer re-encodes the image (it always does, unless `--skip_reencode`), so it is the
    # declared *source* hash: it never matches the stored bytes and that says nothing. It stays
    # in `sha256`; the stored bytes' own hash is `image_sha256`. Rows carrying img2dataset's
    # `status` are its output; only other declared hashes are compared.
    downloaded = cols["download_status"].to_pylist()
    for i, loc in enumerate(raw.images):
        if loc is None:
            img["image_status"][i] = "missing"
            if raw.expect_image[i]:
                error(i, "image_missing", "no image with this record's key in its shard or folder")
            continue
        img["image_path"][i], img["image_member"][i] = store(loc.path), loc.member
        img["image_offset"][i], img["image_size"][i] = loc.offset, loc.size
        try:
            data = raw.inline[i] if raw.inline is not None else reader.read(loc)
            if data is None:
                raise ImageProblem("image_missing", "no image bytes in the parquet row")
            img["image_sha256"][i] = digest = hashlib.sha256(data).hexdigest()
            fmt, w, h = inspect(data, max_pixels, verify_images)
        except ImageProblem as p:
            img["image_status"][i] = "error"
            error(i, p.reason, p.detail)
            continue
        img["image_format"][i], img["image_width"][i], img["image_height"][i] = fmt, w, h
        img["image_status"][i] = "ok"
        # A mismatch is provenance news, not an unusable image: the bytes in the shard are
        # what a model would train on, so the row stays `ok`.
        if declared[i] and downloaded[i] is None and declared[i].strip().lower() != digest:
            error(i, "sha256_mismatch", f"declared {declared[i]}, bytes hash to {digest}")

    cols.update({k: pa.array(v, type=METADATA.field(k).type) for k, v in img.items()})
    return _piece(raw, cols, row_offset, source_file, errors, Counter(img["image_status"]))


def _piece(
    raw: RawBatch,
    cols: dict[str, Any],
    row_offset: int,
    source_file: str,
    errors: list[dict[str, Any]],
    images: Counter,
) -> Piece:
    import numpy as np

    n = raw.n
    rows = raw.source_rows
    cols["row_id"] = _int64(np.arange(row_offset, row_offset + n, dtype=np.int64))
    cols["source_file"] = _repeated(source_file, n)
    cols["source_row"] = _int64(
        np.arange(rows.start, rows.stop, dtype=np.int64)
        if isinstance(rows, range)
        else np.asarray(rows, dtype=np.int64)
    )
    fields, arrays = list(METADATA), [cols[name] for name in METADATA.names]
    for name, values in raw.extras.items():
        arr = (
            values
            if isinstance(values, (pa.Array, pa.ChunkedArray))
            else pa.array(values, type=pa.string())
        )
        fields.append(pa.field(name, arr.type))
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    return Piece(table, errors, images)


# Arrays built from buffers, not through `pa.array`: on a metadata-only input these are the
# only arrays ingest makes itself, and `pa.array` imports pandas on first use (a second or
# more of a short run, measured in audit.bench.ingest).
def _int64(values: Any) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _repeated(value: str, n: int) -> pa.Array:
    import numpy as np

    data = value.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(data)
    if offsets[-1] < 2**31:  # string's offsets are int32
        return pa.Array.from_buffers(
            pa.string(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data * n)]
        )
    return pa.Array.from_buffers(
        pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data * n)]
    ).cast(pa.string())


def inspect(data: bytes, max_pixels: int, verify: bool) -> tuple[str, int, int]:
    """(format, width, height) from the header; with `verify`, the whole image is checked."""
    im = open_image(data, max_pixels)
    fmt, (w, h) = im.format or "unknown", im.size
    if verify:
        try:
            if fmt == "PNG":
                im.verify()
            else:
                if fmt == "JPEG":
                    im.draft(
                        im.mode if im.mode in ("RGB", "L") else "RGB",
                        (max(1, w // 8), max(1, h // 8)),
                    )
                im.load()
        except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...
            reason = "image_truncated" if "truncat" in str(e).lower() else "image_undecodable"
            raise ImageProblem(reason, f"{type(e).__name__}: {e}") from e
    return fmt, w, h


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
