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
  `FAST_SIDE` pixels before the final Lanczos resize (transparent images as premultiplied
  gray+alpha, composited onto white after the reduction), and wHash uses an image scale of at most
  `FAST_WHASH_SCALE`. Measured against exact mode (`audit.bench.descriptors.agreement`, run by
  `python -m audit.bench descriptors`), mean Hamming difference in bits of 64 is in
  `FAST_MODE_AGREEMENT`. wHash agrees worst: imagehash's wHash compares 8x8 block sums to
  their median after a wavelet round trip, so on clip art, where many blocks are equally
  white, floating-point noise decides ties and no other resampling reproduces it.

Speed (`python -m audit.bench descriptors`, against a plain `imagehash.phash(Image.open(p))`
loop on 2 cores): the win is in JPEG, the format img2dataset stores downloads in, where DCT
scaling skips most of the decode; `which=("phash",)` is the like-for-like comparison. PNG
cannot be decoded at reduced size and its full decode is half or more of the baseline's time
per image, so on PNG clip art two workers cannot reach 5x (Amdahl), whatever the hashing
costs. A Lanczos resize costs about six multiply-adds per input pixel whatever the output
size, so each extra hash costs nearly as much as the first; cheaper shortcuts (box-reducing
further, or deriving the 8x8 hashes from the 32x32 image) were measured and doubled the
dHash/aHash drift, so they are not used.

Decoding is the cost, so rows are hashed in chunks by a process pool (`workers`). Only the
hashes in `which` are computed; the others are stored as null and the stages that need them
refuse to run (`Workspace.require_hashes`) instead of silently skipping rows.
Resumable per part: a finished part is kept when the stage is re-run with the same parameters.

Example:
    >>> from audit import hashes
    >>> hashes.compute("indexes/sample", workers=2)        # doctest: +SKIP
    {'rows': 300, 'hashed': 300, 'errors': 0, ...}
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from audit import engines, threads
from audit.engines.local import PartResult
from audit.errors import AuditError
from audit.images import (
    DEFAULT_MAX_PIXELS,
    ImageProblem,
    check_decode_size,
    open_image,
    read_bytes,
)
from audit.progress import track
from audit.schema import HASHES, IMAGE_LOCATION, PROVENANCE, error_table
from audit.workspace import Output, Part, Workspace, atomic_write_parquet

STAGE = "hash"
HASH_SIZE = 8
FAST_SIDE = 96  # short side of the reduced image fast mode hashes from
FAST_WHASH_SCALE = 64  # wHash image scale cap in fast mode (its ties make more pixels pointless)
CHUNK_ROWS = 128  # rows per task sent to a worker
# Mean Hamming difference (bits of 64) fast vs exact, measured as described in the docstring.
FAST_MODE_AGREEMENT = {
    # 1,000 random openclipart PNGs (seed 1, median short side 208 px), and the same as
    # img2dataset stores them (RGB on white, JPEG q95)
    "openclipart_png": {"phash": 0.75, "dhash": 0.49, "whash": 2.81, "ahash": 0.21},
    "openclipart_jpeg_q95": {"phash": 0.83, "dhash": 0.48, "whash": 2.89, "ahash": 0.23},
    # the 300 bundled sample images (<= 256 px, so little is reduced)
    "sample": {"phash": 0.34, "dhash": 0.21, "whash": 3.99, "ahash": 0.12},
}  # 95th percentiles: 4 bits for phash, 3 for dhash, 1 for ahash, ~20 for whash


def _natural_scale(size: tuple[int, int]) -> int:
    """wHash's default image scale: the largest power of two <= the short side (>= hash size)."""
    return max(2 ** int(np.log2(min(size))), HASH_SIZE)


def _small(
    gray: Any, whash_scale: int, which: tuple[str, ...] = HASHES
) -> tuple[np.ndarray | None, ...]:
    """The working-size grayscale arrays of one image in `HASHES` order (imagehash's resizes,
    one per hash); None for a hash not in `which`."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    sizes = {
        "phash": (HASH_SIZE * 4, HASH_SIZE * 4),
        "dhash": (HASH_SIZE + 1, HASH_SIZE),
        "whash": (whash_scale, whash_scale),
        "ahash": (HASH_SIZE, HASH_SIZE),
    }
    return tuple(np.asarray(gray.resize(sizes[h], lanczos)) if h in which else None for h in HASHES)


def _bits_to_codes(bits: np.ndarray) -> np.ndarray:
    """(N, 8, 8) booleans -> (N,) uint64, first element most significant (imagehash's hex order)."""
    packed = np.packbits(bits.reshape(len(bits), -1), axis=1)
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def _codes(smalls: list[tuple[Any, ...]]) -> np.ndarray:
    """(N, 4) codes from `_small` arrays, all images of a batch at once (0 where not computed).

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
    have = [smalls[0][k] is not None for k in range(len(HASHES))]
    if have[0]:
        p = np.stack([s[0] for s in smalls])
        dct = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=1), axis=2)[:, :HASH_SIZE, :HASH_SIZE]
        med = np.median(dct.reshape(n, -1), axis=1)
        out[:, 0] = _bits_to_codes(dct > med[:, None, None])
    if have[1]:
        d = np.stack([s[1] for s in smalls])
        out[:, 1] = _bits_to_codes(d[:, :, 1:] > d[:, :, :-1])
    if have[3]:
        a = np.stack([s[3] for s in smalls])
        out[:, 3] = _bits_to_codes(a > a.reshape(n, -1).mean(axis=1)[:, None, None])
    if not have[2]:
        return out
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

    Returns it with the original size. A transparent image becomes premultiplied gray+alpha
    ("La") at full size, one cheap pass, is box-reduced, and only then composited onto white:
    gray is linear in the colour channels, so this equals `audit.images.decode`'s white
    background followed by grayscale, up to rounding.
    """
    from PIL import Image

    img = open_image(data, max_pixels)
    size = img.size
    try:
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            img.draft("L", (FAST_SIDE, FAST_SIDE))  # DCT-domain downscale: the big saving
        check_decode_size(img)
        img.load()
        transparent = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
        if transparent:
            if img.mode not in ("RGBA", "LA"):
                img = img.convert("RGBA")  # palette/RGB/L with a transparency key
            img = img.convert("LA").convert("La")
        elif img.mode != "L":
            img = img.convert("L")
        factor = min(img.size) // FAST_SIDE
        if factor > 1:
            img = img.reduce(factor)
        if transparent:
            la = np.asarray(img).astype(np.int16)
            gray = np.clip(la[:, :, 0] + (255 - la[:, :, 1]), 0, 255).astype(np.uint8)
            img = Image.fromarray(gray, "L")
    except ImageProblem:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data raises OSError, SyntaxError, ...
        raise ImageProblem("image_undecodable", f"{type(e).__name__}: {e}") from e
    return img, size


def _small_from_bytes(
    data: bytes, max_pixels: int, fast_decode: bool, which: tuple[str, ...] = HASHES
) -> tuple[np.ndarray | None, ...]:
    from audit.images import decode

    if not fast_decode:
        img = decode(data, max_pixels, mode="RGB")
        return _small(img.convert("L"), _natural_scale(img.size), which)
    gray, size = _fast_gray(data, max_pixels)
    scale = min(_natural_scale(size), _natural_scale(gray.size), FAST_WHASH_SCALE)
    return _small(gray, scale, which)


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
            smalls.append(
                _small_from_bytes(data, task["max_pixels"], task["fast_decode"], task["which"])
            )
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


def _tasks(ws: Workspace, part: Any, **settings: Any) -> list[dict[str, Any]]:
    cols = [*PROVENANCE, *IMAGE_LOCATION]
    table = ws.read_part(part, columns=cols).to_pydict()
    tasks = []
    for start in range(0, part.rows, CHUNK_ROWS):
        task = {c: v[start : start + CHUNK_ROWS] for c, v in table.items()}
        task.update(part=part.number, start=start, **settings)
        tasks.append(task)
    return tasks


def _write_part(
    ws: Workspace, part: Any, chunks: list[dict[str, Any]], which: tuple[str, ...]
) -> tuple[list[Output], int]:
    import pyarrow as pa

    chunks.sort(key=lambda c: c["start"])
    codes = np.concatenate([c["codes"] for c in chunks]) if chunks else np.zeros((0, 4), np.uint64)
    ok = np.concatenate([c["ok"] for c in chunks]) if chunks else np.zeros(0, bool)
    errors = [dict(e, stage=STAGE) for c in chunks for e in c["errors"]]
    columns = {
        "row_id": pa.array(np.arange(part.row_offset, part.row_offset + part.rows, dtype=np.int64))
    }
    for j, name in enumerate(HASHES):
        computed = ok if name in which else np.zeros_like(ok)  # a hash not asked for is null
        columns[name] = pa.array(codes[:, j], type=pa.uint64(), mask=~computed)
    rel, err_rel = f"hashes/part-{part.stem}.parquet", f"errors/{STAGE}-{part.stem}.parquet"
    atomic_write_parquet(ws.path(rel), pa.table(columns))
    atomic_write_parquet(ws.path(err_rel), error_table(errors))
    return [Output(rel, part.rows, part.row_offset), Output(err_rel, len(errors))], len(errors)


def compute(
    ws_root: str | os.PathLike[str],
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fast_decode: bool = True,
    which: tuple[str, ...] | list[str] = HASHES,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Hash every image of the workspace (stage `hash`); returns the summary.

    `workers` processes decode in parallel (1 = in this process; None = the process's thread
    budget, `audit.threads.budget()`). `fast_decode=False` gives
    codes bit-identical to `imagehash`; the default decodes at reduced size (see module doc).
    `which` limits the work to some of `HASHES` (the others are stored as null, and stages
    that need them say so: `Workspace.require_hashes`); dedup needs phash and dhash, match all four.
    `engine` runs the parts here ("local") or as Ray tasks ("ray", see `audit.engines`); the
    files are the same either way.

    >>> compute("indexes/sample", workers=2, fast_decode=False)   # doctest: +SKIP
    """
    if workers is None:
        workers = threads.budget()
    ws = Workspace.open(ws_root)
    parts = ws.require_parts()
    if workers < 1:
        raise AuditError(f"workers must be >= 1 (got {workers}); use 1 to hash in this process.")
    unknown = sorted(set(which) - set(HASHES))
    if unknown or not which:
        raise AuditError(
            f"unknown hash {', '.join(unknown) or '(none given)'}; choose from {', '.join(HASHES)}."
        )
    which = tuple(h for h in HASHES if h in which)
    run = ws.start_stage(
        STAGE,
        {
            "fast_decode": fast_decode,
            "max_pixels": max_pixels,
            "hash_size": HASH_SIZE,
            "fast_side": FAST_SIDE,
            **({} if which == HASHES else {"hashes": list(which)}),  # old manifests stay current
        },
        depends_on=["ingest"],
    )
    todo = [p for p in parts if not run.is_done(p.number)]
    runner = engines.get(engine, ray_address)
    # in this process a pool hashes each part's chunks; on Ray, parts run side by side instead
    settings = {
        "max_pixels": max_pixels,
        "fast_decode": fast_decode,
        "which": which,
        "workers": workers if runner.in_process else 1,
    }
    t0 = time.perf_counter()
    for part, result in engines.progress(
        runner, runner.map_parts("audit.hashes:hash_part", ws.root, todo, settings), todo
    ):
        run.record_part(part.number, result.outputs, **result.info)
    seconds = time.perf_counter() - t0
    rows = sum(p.rows for p in parts)
    n_errors = sum(int((run.part_info(p.number) or {}).get("errors", 0)) for p in parts)
    summary = {
        "rows": rows,
        "hashed": rows - n_errors,
        "errors": n_errors,
        "parts": len(parts),
        "resumed_parts": len(parts) - len(todo),
        "fast_decode": fast_decode,
        "hashes": list(which),
        "seconds": round(seconds, 3),
        "rows_per_second": round(sum(p.rows for p in todo) / seconds, 1)
        if seconds > 0 and todo
        else None,
    }
    run.finish(summary)
    return summary


def hash_part(
    ws_root: str,
    part: Part,
    max_pixels: int,
    fast_decode: bool,
    which: tuple[str, ...],
    workers: int = 1,
) -> PartResult:
    """Hash one metadata part and write its files (the per-part function engines run)."""
    ws = Workspace.open(ws_root)
    settings = {"max_pixels": max_pixels, "fast_decode": fast_decode, "which": which}
    tasks = _tasks(ws, part, **settings)
    chunks = list(
        track(
            _run_tasks(tasks, workers),
            total=part.rows,
            description="hashing",
            unit="images",
            weight=lambda r: len(r["ok"]),
        )
    )
    outputs, n_err = _write_part(ws, part, chunks, which)
    return PartResult(outputs, {"errors": n_err})


def _run_tasks(tasks: list[dict[str, Any]], workers: int):  # type: ignore[no-untyped-def]
    """Results of `_hash_chunk` over `tasks`, in order; a process pool when workers > 1."""
    if workers == 1 or len(tasks) <= 1:
        yield from map(_hash_chunk, tasks)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # fork: workers start instantly and inherit the imports; they run no torch code.
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("fork"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        yield from pool.map(_hash_chunk, tasks, chunksize=1)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: the worker ends when the process that started it does, even after a
    `kill -9` (which runs no cleanup); a forked worker also holds the workspace lock's
    descriptor, so an orphan would keep the workspace locked."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
