"""Stage `hash`: four 64-bit perceptual hashes per image, row-aligned with the metadata parts.

Writes `hashes/part-NNNNN.parquet` (row_id, phash, dhash, whash, ahash as uint64; null when
the image could not be used) and `errors/hash-NNNNN.parquet`. A code is the hash's bits in
`imagehash` order, first bit most significant, so `format(code, "016x") == str(imagehash.phash(img))`.

Two decoding modes:

* exact (`fast_decode=False`): the image is decoded at full size exactly as `audit.images.decode`
  does (transparent pixels composited onto white), converted to grayscale once, resized once per
  hash with imagehash's Lanczos resize, and imagehash's arithmetic (scipy DCT, median, pywt
  Haar) runs on a whole batch of small arrays at once. Bit-identical to
  `imagehash.phash/dhash/whash/average_hash` on the decoded RGB image (tests; 0 mismatches on
  600 sample and openclipart images).
* fast (default): only what a 32x32 hash needs is decoded. JPEGs decode at 1/2..1/8 scale
  (DCT scaling, `Image.draft`), every image is box-reduced (`Image.reduce`) to a short side of
  `FAST_SIDE` pixels before the final Lanczos resize, and wHash uses an image scale of at most
  `FAST_WHASH_SCALE`. Measured against exact mode (`audit.bench.descriptors.agreement`, run by
  `python -m audit.bench descriptors`), mean Hamming difference in bits of 64 is in
  `FAST_MODE_AGREEMENT`. wHash agrees worst: imagehash's wHash compares 8x8 block sums to
  their median after a wavelet round trip, so on clip art, where many blocks are equally
  white, floating-point noise decides ties and no other resampling reproduces it.

Decoding is the cost, so rows are hashed in chunks by a process pool (`workers`).
Resumable per part: a finished part is kept when the stage is re-run with the same parameters.

Example:
    >>> from audit import hashes
    >>> hashes.compute("indexes/sample", workers=2)        # doctest: +SKIP
    {'rows': 300, 'hashed': 300, 'errors': 0, ...}
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from audit.images import DEFAULT_MAX_PIXELS, ImageProblem, open_image, read_bytes
from audit.progress import track
from audit.schema import error_table
from audit.workspace import Output, Workspace, atomic_write_parquet

HASHES = ("phash", "dhash", "whash", "ahash")
STAGE = "hash"
HASH_SIZE = 8
FAST_SIDE = 128  # short side of the reduced image fast mode hashes from
FAST_WHASH_SCALE = 64  # wHash image scale cap in fast mode (its ties make more pixels pointless)
CHUNK_ROWS = 128  # rows per task sent to a worker
# Mean Hamming difference (bits of 64) fast vs exact, measured as described in the docstring.
FAST_MODE_AGREEMENT = {
    # 1,000 random full-size openclipart PNGs (seed 1), and the same flattened and saved as JPEG q90
    "openclipart_png": {"phash": 0.52, "dhash": 0.37, "whash": 2.96, "ahash": 0.14},
    "openclipart_jpeg_q90": {"phash": 0.67, "dhash": 0.40, "whash": 2.84, "ahash": 0.15},
    # the 300 bundled sample images (<= 256 px, so little is reduced)
    "sample": {"phash": 0.11, "dhash": 0.15, "whash": 2.20, "ahash": 0.08},
}  # 95th percentiles: 2 bits for phash and dhash, 1 for ahash, ~20 for whash


def _natural_scale(size: tuple[int, int]) -> int:
    """wHash's default image scale: the largest power of two <= the short side (>= hash size)."""
    return max(2 ** int(np.log2(min(size))), HASH_SIZE)


def _small(gray: Any, whash_scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four working-size grayscale arrays of one image (imagehash's resizes, one each)."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    return (
        np.asarray(gray.resize((HASH_SIZE * 4, HASH_SIZE * 4), lanczos)),
        np.asarray(gray.resize((HASH_SIZE + 1, HASH_SIZE), lanczos)),
        np.asarray(gray.resize((whash_scale, whash_scale), lanczos)),
        np.asarray(gray.resize((HASH_SIZE, HASH_SIZE), lanczos)),
    )


def _bits_to_codes(bits: np.ndarray) -> np.ndarray:
    """(N, 8, 8) booleans -> (N,) uint64, first element most significant (imagehash's hex order)."""
    packed = np.packbits(bits.reshape(len(bits), -1), axis=1)
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def _codes(smalls: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """(N, 4) codes from `_small` arrays, all images of a batch at once.

    The arithmetic is imagehash's, step for step (scipy DCT per axis, numpy median and mean,
    pywt Haar round trip), applied along a leading batch axis, which leaves every image's
    numbers unchanged: tests compare with imagehash bit for bit, flat images included.
    """
    import pywt
    import scipy.fftpack

    n = len(smalls)
    out = np.zeros((n, len(HASHES)), np.uint64)
    if not n:
        return out
    p = np.stack([s[0] for s in smalls])
    dct = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=1), axis=2)[:, :HASH_SIZE, :HASH_SIZE]
    med = np.median(dct.reshape(n, -1), axis=1)
    out[:, 0] = _bits_to_codes(dct > med[:, None, None])
    d = np.stack([s[1] for s in smalls])
    out[:, 1] = _bits_to_codes(d[:, :, 1:] > d[:, :, :-1])
    a = np.stack([s[3] for s in smalls])
    out[:, 3] = _bits_to_codes(a > a.reshape(n, -1).mean(axis=1)[:, None, None])
    scales = np.array([s[2].shape[0] for s in smalls])
    for scale in np.unique(scales):  # wHash: one batch per image scale
        idx = np.flatnonzero(scales == scale)
        pixels = np.stack([smalls[i][2] for i in idx]) / 255.0
        top = int(np.log2(scale))
        coeffs = list(pywt.wavedec2(pixels, "haar", level=top, axes=(1, 2)))
        coeffs[0] = coeffs[0] * 0  # remove the lowest (mean) frequency, as imagehash does
        pixels = pywt.waverec2(coeffs, "haar", axes=(1, 2))
        low = pywt.wavedec2(pixels, "haar", level=top - int(np.log2(HASH_SIZE)), axes=(1, 2))[0]
        med = np.median(low.reshape(len(idx), -1), axis=1)
        out[idx, 2] = _bits_to_codes(low > med[:, None, None])
    return out


def hash_images(images: list[Any]) -> np.ndarray:
    """(N, 4) uint64 codes in `HASHES` order, bit-identical to `imagehash` on each PIL image.

    >>> import imagehash; from PIL import Image
    >>> img = Image.linear_gradient("L").resize((100, 80))
    >>> codes = hash_images([img])
    >>> format(int(codes[0, 0]), "016x") == str(imagehash.phash(img))
    True
    """
    return _codes([_small(img.convert("L"), _natural_scale(img.size)) for img in images])


def _fast_gray(data: bytes, max_pixels: int) -> tuple[Any, tuple[int, int]]:
    """A grayscale image with short side about `FAST_SIDE` (never smaller unless the image is).

    Returns it with the original size. Transparent images are reduced premultiplied and then
    composited onto white, matching `audit.images.decode` up to rounding at edges.
    """
    from PIL import Image

    img = open_image(data, max_pixels)
    size = img.size
    try:
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            img.draft("L", (FAST_SIDE, FAST_SIDE))  # DCT-domain downscale: the big saving
        img.load()
        transparent = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
        if transparent:
            img = img.convert("RGBA").convert("RGBa")
        elif img.mode != "L":
            img = img.convert("L")
        factor = min(img.size) // FAST_SIDE
        if factor > 1:
            img = img.reduce(factor)
        if transparent:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba).convert("RGB").convert("L")
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data raises OSError, SyntaxError, ...
        raise ImageProblem("image_undecodable", f"{type(e).__name__}: {e}") from e
    return img, size


def _small_from_bytes(data: bytes, max_pixels: int, fast_decode: bool) -> tuple[np.ndarray, ...]:
    from audit.images import decode

    if not fast_decode:
        img = decode(data, max_pixels, mode="RGB")
        return _small(img.convert("L"), _natural_scale(img.size))
    gray, size = _fast_gray(data, max_pixels)
    return _small(gray, min(_natural_scale(size), _natural_scale(gray.size), FAST_WHASH_SCALE))


def _hash_bytes(data: bytes, max_pixels: int, fast_decode: bool) -> tuple[int, int, int, int]:
    """The four codes of one encoded image (for measurements; stages hash in batches)."""
    return tuple(int(c) for c in _codes([_small_from_bytes(data, max_pixels, fast_decode)])[0])  # type: ignore[return-value]


def _hash_chunk(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: hash the rows of one chunk. Returns codes, an ok mask and error rows."""
    n = len(task["row_id"])
    codes = np.zeros((n, len(HASHES)), dtype=np.uint64)
    ok = np.zeros(n, dtype=bool)
    errors, smalls = [], []
    for i in range(n):
        row_id, path, status = task["row_id"][i], task["image_path"][i], task["image_status"][i]
        try:
            if status != "ok" or path is None:
                raise ImageProblem("image_missing", f"row {row_id} has no usable image ({status})")
            data = read_bytes(path, task["image_offset"][i], task["image_size"][i])
            smalls.append(_small_from_bytes(data, task["max_pixels"], task["fast_decode"]))
            ok[i] = True
        except ImageProblem as p:
            errors.append(
                {
                    "row_id": row_id,
                    "reason": p.reason,
                    "detail": p.detail,
                    "source_file": task["source_file"][i],
                    "source_row": task["source_row"][i],
                }
            )
        except Exception as e:  # noqa: BLE001 - a bad image must become an error row, never a crash
            errors.append(
                {
                    "row_id": row_id,
                    "reason": "hash_failed",
                    "detail": f"{type(e).__name__}: {e}",
                    "source_file": task["source_file"][i],
                    "source_row": task["source_row"][i],
                }
            )
    codes[ok] = _codes(smalls)
    return {
        "part": task["part"],
        "start": task["start"],
        "codes": codes,
        "ok": ok,
        "errors": errors,
    }


def _tasks(ws: Workspace, part: Any, max_pixels: int, fast_decode: bool) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    cols = [
        "row_id",
        "image_path",
        "image_offset",
        "image_size",
        "image_status",
        "source_file",
        "source_row",
    ]
    table = pq.read_table(ws.path(part.path), columns=cols).to_pydict()
    tasks = []
    for start in range(0, part.rows, CHUNK_ROWS):
        task = {c: v[start : start + CHUNK_ROWS] for c, v in table.items()}
        task.update(part=part.number, start=start, max_pixels=max_pixels, fast_decode=fast_decode)
        tasks.append(task)
    return tasks


def _write_part(ws: Workspace, part: Any, chunks: list[dict[str, Any]]) -> tuple[list[Output], int]:
    import pyarrow as pa

    chunks.sort(key=lambda c: c["start"])
    codes = np.concatenate([c["codes"] for c in chunks]) if chunks else np.zeros((0, 4), np.uint64)
    ok = np.concatenate([c["ok"] for c in chunks]) if chunks else np.zeros(0, bool)
    errors = [dict(e, stage=STAGE) for c in chunks for e in c["errors"]]
    columns = {
        "row_id": pa.array(np.arange(part.row_offset, part.row_offset + part.rows, dtype=np.int64))
    }
    for j, name in enumerate(HASHES):
        columns[name] = pa.array(codes[:, j], type=pa.uint64(), mask=~ok)
    rel, err_rel = f"hashes/part-{part.stem}.parquet", f"errors/{STAGE}-{part.stem}.parquet"
    atomic_write_parquet(ws.path(rel), pa.table(columns))
    atomic_write_parquet(ws.path(err_rel), error_table(errors))
    return [Output(rel, part.rows, part.row_offset), Output(err_rel, len(errors))], len(errors)


def compute(
    ws_root: str | os.PathLike[str],
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fast_decode: bool = True,
) -> dict[str, Any]:
    """Hash every image of the workspace (stage `hash`); returns the summary.

    `workers` processes decode in parallel (1 = in this process). `fast_decode=False` gives
    codes bit-identical to `imagehash`; the default decodes at reduced size (see module doc).

    >>> compute("indexes/sample", workers=2, fast_decode=False)   # doctest: +SKIP
    """
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    if workers < 1:
        from audit.errors import AuditError

        raise AuditError(f"workers must be >= 1 (got {workers}); use 1 to hash in this process.")
    run = ws.start_stage(
        STAGE,
        {
            "fast_decode": fast_decode,
            "max_pixels": max_pixels,
            "hash_size": HASH_SIZE,
            "fast_side": FAST_SIDE,
        },
        depends_on=["ingest"],
    )
    todo = [p for p in parts if not run.is_done(p.number)]
    tasks = [t for p in todo for t in _tasks(ws, p, max_pixels, fast_decode)]
    by_part = {p.number: p for p in todo}
    need = {p.number: math.ceil(p.rows / CHUNK_ROWS) for p in todo}
    got: dict[int, list[dict[str, Any]]] = {p.number: [] for p in todo}
    t0 = time.perf_counter()
    for p in todo:  # a part with no rows has no tasks
        if need[p.number] == 0:
            outputs, _ = _write_part(ws, p, [])
            run.record_part(p.number, outputs, errors=0)
    for result in track(_run_tasks(tasks, workers), total=len(tasks), description="hashing"):
        number = result["part"]
        got[number].append(result)
        if len(got[number]) == need[number]:
            outputs, n_err = _write_part(ws, by_part[number], got.pop(number))
            run.record_part(number, outputs, errors=n_err)
    seconds = time.perf_counter() - t0
    rows = sum(p.rows for p in parts)
    n_errors = sum(int(run.part_info(p.number).get("errors", 0)) for p in parts)
    summary = {
        "rows": rows,
        "hashed": rows - n_errors,
        "errors": n_errors,
        "parts": len(parts),
        "resumed_parts": len(parts) - len(todo),
        "fast_decode": fast_decode,
        "seconds": round(seconds, 3),
        "rows_per_second": round(sum(p.rows for p in todo) / seconds, 1)
        if seconds > 0 and todo
        else None,
    }
    run.finish(summary)
    return summary


def _run_tasks(tasks: list[dict[str, Any]], workers: int):  # type: ignore[no-untyped-def]
    """Results of `_hash_chunk` over `tasks`, in order; a process pool when workers > 1."""
    if workers == 1 or len(tasks) <= 1:
        yield from map(_hash_chunk, tasks)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # fork: workers start instantly and inherit the imports; they run no torch code.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        yield from pool.map(_hash_chunk, tasks, chunksize=1)
