"""Reading image bytes from where ingest found them, and decoding them safely.

Every stage that looks at pixels goes through `read_bytes` and `decode`, so the pixel limit
(decompression bombs), the error reasons and the colour handling are the same everywhere.
A failure is an `ImageProblem` carrying a short machine-readable `reason`; stages turn it
into an error row, never a crash.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# 89.5 Mpx is Pillow's own warning threshold; LAION images are far smaller. Anything larger
# is refused before its pixels are decoded.
DEFAULT_MAX_PIXELS = 89_478_485
# Bytes of one image file or tar member that are read into memory at most. Training images
# are a few MB; a 2 GB tar member must not cost 2 GB of RAM in every stage that reads it.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
# Pixels `decode` produces at most (after JPEG's reduced-size decoding). Decoding, alpha
# compositing and converting an 81-megapixel PNG took 2.5 GB and 88 s in `hash`; past this a
# full decode is refused as `image_too_large` (an error row), so memory stays near 0.5 GB.
MAX_DECODE_PIXELS = 32_000_000


class ImageProblem(ValueError):
    """An image that cannot be used. `reason` is one of the documented error reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def check_size(size: int, where: str) -> None:
    """Raise `image_too_large` for an image of more than `MAX_IMAGE_BYTES`, before reading it."""
    if size > MAX_IMAGE_BYTES:
        raise ImageProblem(
            "image_too_large", f"{where}: {size:,} bytes exceeds the {MAX_IMAGE_BYTES:,}-byte limit"
        )


def read_bytes(path: str, offset: int | None = 0, size: int | None = None) -> bytes:
    """The bytes of one image: `size` bytes at `offset` of `path` (a tar shard or a file)."""
    try:
        with open(path, "rb") as f:
            if offset:
                f.seek(offset)
            check_size(
                size if size is not None and size >= 0 else os.fstat(f.fileno()).st_size, path
            )
            data = f.read(size if size is not None and size >= 0 else -1)
    except OSError as e:
        raise ImageProblem("image_unreadable", f"{path}: {e.strerror or e}") from e
    if size is not None and len(data) != size:
        raise ImageProblem(
            "image_truncated", f"{path}: expected {size} bytes at {offset}, got {len(data)}"
        )
    return data


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """Open (header only) and check the pixel count; returns a lazy PIL image."""
    from PIL import Image, UnidentifiedImageError

    # Our own limit (checked below, before any pixel is decoded) replaces Pillow's fixed one,
    # so `max_pixels` can be raised or lowered per run.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageProblem("image_undecodable", "not a recognised image format") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad headers
        raise ImageProblem("image_undecodable", f"{type(e).__name__}: {e}") from e
    w, h = img.size
    if w * h > max_pixels:
        raise ImageProblem(
            "decompression_bomb", f"{w}x{h} = {w * h} pixels exceeds the limit {max_pixels}"
        )
    if w <= 0 or h <= 0:
        raise ImageProblem("image_undecodable", f"invalid size {w}x{h}")
    return img


def check_decode_size(img: Any) -> None:
    """Raise `image_too_large` if decoding `img` (after any `draft`) exceeds MAX_DECODE_PIXELS."""
    w, h = img.size
    if w * h > MAX_DECODE_PIXELS:
        raise ImageProblem(
            "image_too_large",
            f"{w}x{h} = {w * h:,} pixels to decode exceeds {MAX_DECODE_PIXELS:,} "
            "(only JPEG decodes at reduced size, and only in fast mode)",
        )


def decode(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mode: str = "RGB",
    draft_size: tuple[int, int] | None = None,
) -> Any:
    """Decode to a PIL image in `mode`.

    `draft_size` lets JPEG decode at a reduced scale (DCT scaling, >= the requested size),
    which is much cheaper when only a small image is needed. Transparent images are
    composited onto white, so clip art on a transparent background looks as it does on a page.
    """
    from PIL import Image

    img = open_image(data, max_pixels)
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB" if mode in ("RGB", "L") else mode, draft_size)
        check_decode_size(img)
        img.load()
        if mode == "RGB" and (img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba).convert("RGB")
        elif img.mode != mode:
            img = img.convert(mode)
    except ImageProblem:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data raises OSError, SyntaxError, ...
        raise ImageProblem("image_undecodable", f"{type(e).__name__}: {e}") from e
    return img


def iter_rows_images(rows: Any) -> Iterator[tuple[int, bytes | None, ImageProblem | None]]:
    """For an Arrow table/batch of metadata rows: (row_id, bytes or None, problem or None)."""
    cols = rows.to_pydict() if hasattr(rows, "to_pydict") else rows
    for row_id, path, offset, size, status in zip(
        cols["row_id"],
        cols["image_path"],
        cols["image_offset"],
        cols["image_size"],
        cols["image_status"],
        strict=True,
    ):
        if status != "ok" or path is None:
            yield (
                row_id,
                None,
                ImageProblem("image_missing", f"row {row_id} has no usable image ({status})"),
            )
            continue
        try:
            yield row_id, read_bytes(path, offset, size), None
        except ImageProblem as p:
            yield row_id, None, p


def image_columns(part_path: Path) -> Any:
    """The columns of a metadata part that locate its images (a pyarrow Table)."""
    import pyarrow.parquet as pq

    from audit.schema import IMAGE_LOCATION

    return pq.read_table(part_path, columns=["row_id", *IMAGE_LOCATION])
