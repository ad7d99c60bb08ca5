"""The ingest stage: LAION-style metadata and images -> `metadata/part-NNNNN.parquet`.

    >>> from audit import metadata
    >>> summary = metadata.ingest("indexes/mydata", ["laion_part0.parquet", "shards/"])  # doctest: +SKIP
    >>> summary["rows"], summary["images"]["ok"], summary["errors"]                     # doctest: +SKIP

Inputs (rules by name only, see `sources.detect`): metadata parquet files in the LAION-400M,
laion2B / LAION-5B and img2dataset column variants (mapped by `schema.SOURCE_COLUMNS`),
img2dataset webdataset shards (`00000.parquet` + `00000.tar`), img2dataset "files" output
(`00000.parquet` + `00000/`), img2dataset parquet output (image bytes in a `jpg`/`png`/`webp`
column, copied to `images/part-NNNNN.bin`), tar shards without a parquet, plain image folders
with optional `<stem>.txt` captions and `<stem>.json` metadata, and metadata tables as
img2dataset reads them (`metadata.tables`: URL lists, CSV, TSV, JSON lines, compressed too).
Anything `scheme://` goes through fsspec: metadata files are streamed in place, a remote tar
is streamed once into `images/remote-<id>.bin`. `url_col` / `caption_col` name columns that
the accepted names (`schema.SOURCE_COLUMNS`) do not cover.

Every record becomes one row with a dense `row_id` (from 0, in input order), its
`source_file` and `source_row`, its canonical columns (cast to `schema.METADATA`; a value
that does not fit becomes null plus a `bad_value` error row), then the input's unknown
columns under their own names (sidecar inputs: unknown JSON keys in `extra_json`). Parts
hold at most `rows_per_part` rows and never mix inputs, so a part's schema is uniform.
Images are located, hashed (sha256) and checked; local bytes stay where they are.

Decisions on bad input:
- An input that cannot be used at all (missing path, not parquet, unreadable footer,
  missing url/caption column, compressed tar) raises `AuditError` before anything is written.
- A parquet file is read row group by row group: a damaged group loses only its unread rows
  and gets one `parquet_corrupt` error row (row_id null, `source_row` = first unread row),
  then reading goes on with the next group. A tar that breaks part-way keeps its members so
  far and gets `tar_corrupt`. The run goes on with the next input.
- `duplicate_key`: every record is ingested, so row counts match the inputs; later records
  whose key was seen before get an error row naming the first row_id. `key` is therefore not
  unique; `row_id` is.
- A record of a metadata-only parquet, or an img2dataset row whose `status` is not
  `success`, has image_status `missing` without an error row; a record whose image should be
  in its shard or folder but is not gets `image_missing`.
- `sha256_mismatch` leaves image_status `ok`: the bytes are what a model would train on.
- Tars: one record per sample (members sharing a key), its first image by `scan.IMAGE_EXTS`;
  folders: one record per image file. Samples without an image are skipped and counted.
Per-row reasons: bad_value, caption_not_utf8, duplicate_key, image_missing, image_unreadable,
image_undecodable, image_truncated, decompression_bomb, sha256_mismatch. Input-level reasons
(`errors/ingest-inputs.parquet`, row_id null): parquet_corrupt, tar_corrupt, unsafe_tar_member.

Resuming: the stage records each part in the manifest as it lands. A rerun with the same
sources (same sha256s) and parameters reads the inputs again but skips the image work and the
writing for finished parts, so a killed run continues after its last recorded part.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.images import DEFAULT_MAX_PIXELS
from audit.metadata.records import Piece, Reader, build
from audit.metadata.scan import IMAGE_EXTS, RawBatch
from audit.metadata.sources import KINDS, Input, detect
from audit.metadata.tables import is_remote
from audit.progress import track
from audit.schema import ERRORS, error_table
from audit.workspace import Output, StageRun, Workspace, atomic_write_parquet, part_name

__all__ = ["ingest", "detect", "IMAGE_EXTS", "KINDS"]

KEYS_ERRORS = "errors/ingest-keys.parquet"
# Image bytes that arrive inside a parquet input (img2dataset `--output_format parquet`) are
# copied here, one file per metadata part, so every stage reads them by path, offset and size
# like bytes in a tar shard.
EMBEDDED_DIR = "images"
# parts written at once, in background threads (see _PartWriter)
WRITERS = 2
INPUT_ERRORS = "errors/ingest-inputs.parquet"


def ingest(
    ws_root: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
    dataset: str | None = None,
    rows_per_part: int = 100_000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    verify_images: bool = True,
    url_col: str | None = None,
    caption_col: str | None = None,
) -> dict[str, Any]:
    """Ingest `sources` into the workspace at `ws_root` (created if needed); returns the summary.

    `url_col` / `caption_col` name the source columns holding the URL and the caption when
    they are not among the accepted names (img2dataset's `--url_col` / `--caption_col`).

    Example: `ingest("indexes/demo", ["audit/data/sample/"])` then `audit status indexes/demo`.
    """
    start = time.perf_counter()
    if rows_per_part < 1:
        raise AuditError(f"rows_per_part must be at least 1 (got {rows_per_part}).")
    if max_pixels < 1:
        raise AuditError(f"max_pixels must be at least 1 (got {max_pixels}).")
    inputs, skipped = detect(list(sources))
    overrides = {k: v for k, v in (("url", url_col), ("caption", caption_col)) if v}
    for inp in inputs:
        inp.overrides = overrides
        inp.check()
    ws = Workspace.create(ws_root, dataset)
    if dataset is not None and ws.dataset != dataset:
        raise AuditError(
            f"{ws.root} holds dataset '{ws.dataset}', not '{dataset}'. "
            "Drop --dataset or use a new workspace folder."
        )
    copied = [inp.location for inp in inputs if inp.embedded or _remote_tar(inp)]
    if ws.remote and copied:
        raise AuditError(
            f"{copied[0]} has image bytes that ingest copies into the workspace (a remote tar, "
            f"or images inside parquet), which a URL workspace ({ws.root}) cannot take yet. "
            "Ingest into a local folder, or pass metadata parquet, local shards or folders."
        )
    # every local source is under an input root; parts and the manifest name files relative
    # to it, so the parameters (the resume key) stay the same after the inputs move
    ws.set_roots(_roots(sources))
    records = [_stored(ws, inp.fingerprint()) for inp in inputs]
    params = {
        "sources": [str(s) if is_remote(s) else ws.store(Path(s).resolve()) for s in sources],
        "columns": overrides,
        "rows_per_part": rows_per_part,
        "max_pixels": max_pixels,
        "verify_images": verify_images,
        "inputs": [{k: r.get(k) for k in ("path", "sha256", "images_sha256")} for r in records],
    }
    run = ws.start_stage("ingest", params)
    # a killed run leaves temporary files; a fresh start also drops an earlier ingest's parts
    _remove_ingest_files(
        ws, ("metadata/.tmp-part-*", "errors/.tmp-ingest-*", f"{EMBEDDED_DIR}/.tmp-*")
    )
    if not run.record["parts"]:
        _remove_ingest_files(
            ws,
            (
                "metadata/part-*.parquet",
                "errors/ingest-*.parquet",
                f"{EMBEDDED_DIR}/part-*.bin",
                f"{EMBEDDED_DIR}/remote-*.bin",
            ),
        )
    ws.manifest["inputs"] = records
    ws.save()
    for inp in inputs:
        inp.staging = ws.path(EMBEDDED_DIR)

    writer = _PartWriter(run, len(inputs), max_pixels, verify_images)
    try:
        for idx, inp, unit, raw in track(
            _batches(inputs, rows_per_part),
            _estimate(inputs),
            "ingest",
            unit="rows",
            weight=lambda item: item[3].n,
        ):
            writer.add(idx, inp, unit, raw, rows_per_part)
        writer.flush()
        writer.wait()
    finally:
        writer.reader.close()
        writer.pool.shutdown(wait=True)
    for number in [k for k in run.record["parts"] if int(k) >= writer.next_part]:
        del run.record["parts"][number]  # only if the inputs shrank under a resumed run
    for rec, rows in zip(records, writer.rows_per_input, strict=True):
        rec["rows"] = rows

    keys = _duplicate_keys(ws) if writer.keyed else error_table([])
    atomic_write_parquet(ws.path(KEYS_ERRORS), keys)
    problems = error_table(
        [{**p, "source_file": ws.store(p["source_file"])} for inp in inputs for p in inp.problems]
    )
    atomic_write_parquet(ws.path(INPUT_ERRORS), problems)
    errors = (
        writer.errors
        + Counter(keys.column("reason").to_pylist())
        + Counter(problems.column("reason").to_pylist())
    )
    summary = {
        "rows": writer.next_row,
        "images": {s: writer.images.get(s, 0) for s in ("ok", "missing", "error")},
        "errors": dict(sorted(errors.items())),
        "parts": writer.next_part,
        "inputs": len(inputs),
        "resumed_parts": writer.resumed,
        "skipped": len(skipped) + sum(inp.skipped for inp in inputs),
        "seconds": round(time.perf_counter() - start, 2),
    }
    staged = [Output(str(inp.staged.relative_to(ws.root))) for inp in inputs if inp.staged]
    run.finish(
        summary,
        [Output(KEYS_ERRORS, keys.num_rows), Output(INPUT_ERRORS, problems.num_rows), *staged],
    )
    return summary


class _PartWriter:
    """Collects batches into parts (one unit each) and writes or skips each finished part."""

    def __init__(self, run: StageRun, num_inputs: int, max_pixels: int, verify_images: bool):
        self.run, self.max_pixels, self.verify_images = run, max_pixels, verify_images
        self.reader = Reader()
        # image paths repeat (one tar per part): their stored form is worked out once each
        self.store = functools.lru_cache(maxsize=1 << 16)(run.ws.store)
        self.next_part = self.next_row = self.resumed = 0
        self.images: Counter = Counter()
        self.errors: Counter = Counter()
        self.rows_per_input = [0] * num_inputs
        self._key: tuple[int, str, int] | None = None
        self._pieces: list[Piece] = []
        self._rows = 0
        self._done = False
        self._source = ""
        self._blob: Any = None  # open temporary image file of the current part, if any
        # Writing a part (encoding, compressing, hashing it for the manifest) runs in
        # background threads while the next part is read and cast: pyarrow releases the GIL.
        # Writing a part costs about 1.5x reading and casting it, so with one writer the
        # writer alone set the pace; two let consecutive parts' writes overlap, and ingest
        # costs about (read + write) / cores. At most WRITERS parts are in flight (memory
        # stays a few parts, whatever the input size), and a part is recorded only after its
        # files are in place; parts may be recorded out of order, and a resumed run checks
        # each part on its own.
        self.pool = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="ingest-write")
        self._pending: deque[Future] = deque()
        self._record_lock = threading.Lock()  # one manifest update at a time
        self.keyed = False  # some record has a key: the duplicate-key check has work to do

    def add(self, idx: int, inp: Input, unit: str, raw: RawBatch, rows_per_part: int) -> None:
        key = (idx, unit, raw.pos // rows_per_part)
        if key != self._key:
            self.flush()
            # orphan images have no parquet row: their record comes from the tar or folder
            where = inp.images if unit == "orphans" else inp.path
            self._key, self._source = key, self.store(str(where)) or ""
            info = self.run.part_info(self.next_part)
            self._done = (
                info is not None
                and info.get("unit") == list(key)
                and self.run.is_done(self.next_part)
            )
        if not self._done or not self.keyed:
            key_col = raw.columns.get("key")
            self.keyed = self.keyed or (key_col is not None and _any_value(key_col))
        if not self._done:
            if raw.inline is not None:
                raw.images = self._embed(raw)
            self._pieces.append(
                build(
                    raw,
                    self.next_row + self._rows,
                    self._source,
                    self.reader,
                    self.max_pixels,
                    self.verify_images,
                    self.store,
                )
            )
        self._rows += raw.n
        self.rows_per_input[idx] += raw.n

    def _embed(self, raw: RawBatch) -> list[Any]:
        """Append the batch's inline image bytes to this part's image file; their locations."""
        from audit.metadata.scan import Loc

        name = part_name(self.next_part)
        final = self.run.ws.path(f"{EMBEDDED_DIR}/part-{name}.bin")
        if self._blob is None:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._blob = open(final.with_name(f".tmp-part-{name}.bin"), "wb")  # noqa: SIM115
        keys = raw.columns.get("key")
        keys = keys.to_pylist() if keys is not None else [None] * raw.n
        locs: list[Any] = []
        for i, data in enumerate(raw.inline or []):
            if data is None:
                locs.append(None)
                continue
            offset = self._blob.tell()
            self._blob.write(data)
            member = f"{keys[i] if keys[i] is not None else raw.source_rows[i]}.img"
            locs.append(Loc(str(final), member, offset, len(data)))
        return locs

    def flush(self) -> None:
        if self._key is None:
            return
        number, name = self.next_part, part_name(self.next_part)
        if self._done:
            info = self.run.part_info(number) or {}
            if info["outputs"][0]["rows"] != self._rows:
                raise AuditError(
                    f"part {name} of {self.run.ws.root} holds {info['outputs'][0]['rows']} rows "
                    f"but its input now gives {self._rows}. Re-ingest into a new workspace."
                )
            self.resumed += 1
        else:
            info = self._write(number, name)
        self.images.update(info["images"])
        self.errors.update(info["errors"])
        self.next_part += 1
        self.next_row += self._rows
        self._key, self._pieces, self._rows = None, [], 0

    def _write(self, number: int, name: str) -> dict[str, Any]:
        import pyarrow as pa

        ws = self.run.ws
        table = pa.concat_tables([p.table for p in self._pieces])
        rows = [e for p in self._pieces for e in p.errors]
        meta_rel, err_rel = f"metadata/part-{name}.parquet", f"errors/ingest-{name}.parquet"
        outputs = [Output(meta_rel, table.num_rows, self.next_row)]
        if self._blob is not None:
            blob_rel = f"{EMBEDDED_DIR}/part-{name}.bin"
            self._blob.flush()
            os.fsync(self._blob.fileno())
            self._blob.close()
            os.replace(self._blob.name, ws.path(blob_rel))
            self._blob = None
            outputs.append(Output(blob_rel, table.num_rows, self.next_row))
        if rows:
            outputs.append(Output(err_rel, len(rows)))
        images = sum((p.images for p in self._pieces), Counter())
        info = {
            "unit": list(self._key or ()),
            "source": self._source,
            "images": dict(images),
            "errors": dict(Counter(e["reason"] for e in rows)),
        }

        def job() -> None:
            sha = {}
            if rows:
                sha[err_rel] = atomic_write_parquet(ws.path(err_rel), error_table(rows))
            elif ws.path(err_rel).exists():
                ws.path(err_rel).unlink()
            sha[meta_rel] = atomic_write_parquet(ws.path(meta_rel), table, **_part_options(table))
            # hashed while written: the manifest records them without reading the files back
            done = [replace(o, sha256=sha.get(o.path)) for o in outputs]
            with self._record_lock:
                self.run.record_part(number, done, **info)

        while len(self._pending) >= WRITERS:
            self._pending.popleft().result()
        self._pending.append(self.pool.submit(job))
        return info

    def wait(self) -> None:
        """Until every part being written is in place and recorded (re-raises an error)."""
        while self._pending:
            self._pending.popleft().result()


# Columns with few distinct values, worth parquet's dictionary encoding. For URLs, captions
# and keys (nearly all distinct) the writer would build a dictionary only to throw it away:
# that attempt was half the cost of writing a part.
_DICTIONARY = (
    "license",
    "nsfw",
    "language",
    "download_status",
    "download_error",
    "source_file",
    "image_path",
    "image_format",
    "image_status",
)


# Parts use parquet's default codec, as a plain pyarrow copy does: zstd (level 1) would make
# them ~40% smaller for ~30% more CPU per part (measured on laion2B-like parts, 100k rows),
# and ingest is meant to cost no more than copying the metadata (audit.bench.ingest).
PART_COMPRESSION = "snappy"


def _part_options(table: Any) -> dict[str, Any]:
    """write_table options for a metadata part: the default codec, dictionaries where they pay."""
    names = set(table.column_names)
    return {
        "compression": PART_COMPRESSION,
        "use_dictionary": [c for c in _DICTIONARY if c in names],
    }


def _any_value(values: Any) -> bool:
    if isinstance(values, list):
        return any(v is not None for v in values)
    return values.null_count < len(values)


def _batches(inputs: list[Input], rows_per_part: int) -> Any:
    for idx, inp in enumerate(inputs):
        for unit, raw in inp.read(rows_per_part):
            yield idx, inp, unit, raw


def _estimate(inputs: list[Input]) -> int | None:
    """Rows to expect, when every input's row count is known in advance (parquet footers).

    Orphan images of a webdataset shard (no parquet row) are extra rows, so the count can
    end above the total; tar and folder inputs are only counted as they are read.
    """
    if any(inp.num_rows is None for inp in inputs):
        return None
    return sum(inp.num_rows or 0 for inp in inputs)


def _remote_tar(inp: Input) -> bool:
    tar = inp.path if inp.kind == "tar" else inp.images
    return isinstance(tar, str)


def _roots(sources: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """The input roots of local `sources`: each folder source, the folder of each file
    source; named after the folder (`-2`, `-3` when names repeat)."""
    from audit.workspace import root_name

    roots: dict[str, Path] = {}
    for s in sources:
        if is_remote(s):
            continue
        p = Path(s).resolve()
        folder = p if p.is_dir() else p.parent
        if folder in roots.values():
            continue
        name, n = root_name(folder), 1
        while name in roots:
            n += 1
            name = f"{root_name(folder)}-{n}"
        roots[name] = folder
    return roots


def _stored(ws: Workspace, record: dict[str, Any]) -> dict[str, Any]:
    """An input's manifest record with its local paths in stored form (`Workspace.store`)."""
    for key in ("path", "images"):
        if key in record:
            record[key] = ws.store(record[key])
    return record


def _remove_ingest_files(ws: Workspace, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for p in ws.root.glob(pattern):
            p.unlink()


def _duplicate_keys(ws: Workspace) -> Any:
    """Error rows for records whose key an earlier record already has (duckdb: bounded memory)."""
    files = [str(ws.path(p.path)) for p in ws.metadata_parts()]
    if not files:
        return error_table([])
    con = ws.duckdb()
    con.execute("SET memory_limit='512MB'")
    table = con.sql(
        """
        SELECT 'ingest' AS stage, row_id, source_file, source_row, 'duplicate_key' AS reason,
               'key ' || left(key, 80) || ' first seen at row_id ' || first_row AS detail
        FROM (SELECT row_id, source_file, source_row, key,
                     min(row_id) OVER (PARTITION BY key) AS first_row
              FROM read_parquet(?) WHERE key IS NOT NULL)
        WHERE row_id <> first_row ORDER BY row_id
        """,
        params=[files],
    ).to_arrow_table()
    return table.cast(ERRORS)
