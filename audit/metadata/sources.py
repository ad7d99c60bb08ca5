"""Finding the inputs behind the SOURCE arguments and reading them as batches of records.

Detection is by name only, never by content (the rules are in `detect`'s docstring and the
package docstring). Each `Input` yields `RawBatch`es: source values per canonical column,
the location of each record's image, and problems found while reading. An input yields
one or two *units* ("rows" of its parquet, then "orphans": images in its tar or folder
that no parquet row names); a metadata part never mixes units, so its schema is uniform.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.metadata.columns import convert, resolve
from audit.metadata.scan import (
    IMAGE_EXTS,
    Loc,
    RawBatch,
    digest,
    pick_image,
    problem,
    scan_folder,
    scan_tar,
    sidecar_batch,
    stage_remote_tar,
)
from audit.metadata.tables import (
    TextTable,
    is_remote,
    open_binary,
    remote_fingerprint,
    split_name,
    text_format,
)

KINDS = ("parquet", "webdataset", "files", "tar", "folder", "table")
# Records per batch read from a parquet input: large enough that the per-batch work (casts,
# building the part's columns) is amortised, small enough to stay a few MB.
BATCH_ROWS = 32768
# img2dataset `--output_format parquet` keeps each image's bytes in a binary column named by
# its encode format.
EMBEDDED_IMAGE_COLUMNS = ("jpg", "png", "webp")


@dataclass
class Input:
    """One detected input: a parquet or text table with or without its images, a tar, a folder.

    `path` is a local `Path`, or the URL string of a remote metadata file (`location` is
    either, as text).
    """

    kind: str
    path: Any  # parquet file, text table, tar or folder (or its URL): the `source_file`
    images: Path | str | None = None  # the tar shard (or its URL) or folder holding the images
    mapping: dict[str, str] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)
    num_rows: int | None = None  # parquet rows, from the footer
    problems: list[dict[str, Any]] = field(default_factory=list)  # input-level error rows
    skipped: int = 0  # sidecar-only samples and non-image files that became no row
    overrides: dict[str, str] = field(default_factory=dict)  # canonical -> source (--url-col)
    # parquet columns holding image bytes (img2dataset parquet: one per encode format)
    embedded: tuple[str, ...] = ()
    # where a remote tar's members are copied as it streams (set by ingest: the workspace)
    staging: Path | None = None
    staged: Path | None = None  # the local copy of a remote tar, once read

    @property
    def location(self) -> str:
        return str(self.path)

    def check(self) -> None:
        """Open the file(s) far enough to fail early: parquet footer and columns, tar header."""
        if self.kind == "table":
            fmt = text_format(self.location) or "csv"
            names = TextTable(self.location, fmt).names()
            self.mapping, self.extras = resolve(
                names, self.location, overrides=self.overrides, caption_optional=fmt == "txt"
            )
        if self.kind in ("parquet", "webdataset", "files"):
            pf = _parquet_file(self.location)
            self.num_rows = pf.metadata.num_rows
            names = pf.schema_arrow.names
            if self.kind == "parquet":
                self.embedded = _embedded_columns(pf.schema_arrow)
            self.mapping, self.extras = resolve(
                [n for n in names if n not in self.embedded],
                self.location,
                overrides=self.overrides,
                # img2dataset run on a URL list writes no caption column
                caption_optional="status" in names and "key" in names,
            )
        tar = (
            self.path if self.kind == "tar" else self.images if self.kind == "webdataset" else None
        )
        if tar is not None and not isinstance(tar, str):  # a remote tar is checked as it streams
            try:
                with tarfile.open(tar, mode="r:"):
                    pass
            except (tarfile.TarError, OSError) as e:
                raise AuditError(
                    f"{tar} is not an uncompressed tar ({e}). img2dataset writes plain .tar shards; "
                    "decompress it first or remove it from the sources."
                ) from e

    def fingerprint(self) -> dict[str, Any]:
        """What the manifest records about this input; also the resume key."""
        rec: dict[str, Any] = {
            "path": self.location,
            "kind": self.kind,
            "sha256": remote_fingerprint(self.path)
            if isinstance(self.path, str)
            else digest(self.path),
        }
        if self.embedded:
            rec["embedded_images"] = list(self.embedded)
        if self.images is not None:
            rec["images"] = str(self.images)
            rec["images_sha256"] = (
                remote_fingerprint(self.images)
                if isinstance(self.images, str)
                else digest(self.images)
            )
        if self.mapping or self.extras:
            rec["columns"] = self.mapping
            rec["extra_columns"] = self.extras
        return rec

    def read(
        self, rows_per_part: int, batch_size: int = BATCH_ROWS
    ) -> Iterator[tuple[str, RawBatch]]:
        """(unit, batch) pairs; no batch crosses a multiple of `rows_per_part` within its unit."""
        self.problems, self.skipped = [], 0
        if self.kind in ("tar", "folder"):
            own = self._scan(self.path)
            yield from (("rows", b) for b in self._sidecar_rows(own, None, rows_per_part))
            return
        if self.kind == "table":
            yield from (("rows", b) for b in self._table_rows(rows_per_part))
            return
        samples = self._scan(self.images) if self.images is not None else None
        matched: set[str] = set()
        yield from (
            ("rows", b) for b in self._parquet_rows(samples, matched, rows_per_part, batch_size)
        )
        if samples:
            yield from (("orphans", b) for b in self._sidecar_rows(samples, matched, rows_per_part))

    # -- parquet rows ------------------------------------------------------------------------
    def _parquet_rows(
        self,
        samples: dict[str, dict[str, Loc]] | None,
        matched: set[str],
        rows_per_part: int,
        batch_size: int,
    ) -> Iterator[RawBatch]:
        import pyarrow as pa

        pf = _parquet_file(self.location)
        pos = first = 0  # records yielded so far; parquet row of the current row group's start
        # Row group by row group, so a damaged group costs only its own rows.
        for group in range(pf.metadata.num_row_groups):
            row = first
            try:
                for rb in pf.iter_batches(
                    batch_size=min(batch_size, rows_per_part), row_groups=[group]
                ):
                    start = 0
                    while start < rb.num_rows:
                        piece = rb.slice(start, rows_per_part - pos % rows_per_part)
                        yield self._parquet_batch(piece, pos, row, samples, matched)
                        pos, row, start = (
                            pos + piece.num_rows,
                            row + piece.num_rows,
                            start + piece.num_rows,
                        )
            except (OSError, pa.ArrowException) as e:
                end = first + pf.metadata.row_group(group).num_rows
                self.problems.append(
                    problem(
                        self.location,
                        row,
                        "parquet_corrupt",
                        f"rows {row}..{end - 1} (row group {group}) unreadable: {e}",
                    )
                )
            first += pf.metadata.row_group(group).num_rows

    def _parquet_batch(
        self,
        rb: Any,
        pos: int,
        row: int,
        samples: dict[str, dict[str, Loc]] | None,
        matched: set[str],
    ) -> RawBatch:
        n = rb.num_rows
        columns = {c: rb.column(src) for c, src in self.mapping.items()}
        extras = {out: rb.column(src) for out, src in self.extras.items()}
        images: list[Loc | None] = [None] * n
        expect = [False] * n
        inline = None
        if self.embedded:
            cols = [rb.column(c).to_pylist() for c in self.embedded]
            inline = [
                next((v for v in vals if v is not None), None) for vals in zip(*cols, strict=True)
            ]
            statuses = _strings(columns.get("download_status"), n)
            expect = [st in (None, "success") for st in statuses]
        if samples is not None:
            keys = _strings(columns.get("key"), n)
            statuses = _strings(columns.get("download_status"), n)
            for i, key in enumerate(keys):
                sample = samples.get(key) if key is not None else None
                images[i] = pick_image(sample)
                if key is not None and images[i] is not None:
                    matched.add(key)
                # img2dataset marks failed downloads; those rows are expected to have no image
                expect[i] = statuses[i] in (None, "success")
        return RawBatch(pos, range(row, row + n), columns, extras, images, expect, inline=inline)

    # -- text tables ---------------------------------------------------------------------------
    def _table_rows(self, rows_per_part: int) -> Iterator[RawBatch]:
        table = TextTable(self.location, text_format(self.location) or "csv")
        pos = 0
        for rb in table.batches():
            start = 0
            while start < rb.num_rows:
                piece = rb.slice(start, rows_per_part - pos % rows_per_part)
                n = piece.num_rows
                columns = {c: piece.column(src) for c, src in self.mapping.items()}
                extras = {out: piece.column(src) for out, src in self.extras.items()}
                yield RawBatch(pos, range(pos, pos + n), columns, extras, [None] * n, [False] * n)
                pos, start = pos + n, start + n

    # -- tar / folder samples --------------------------------------------------------------------
    def _scan(self, where: Any) -> dict[str, dict[str, Loc]]:
        if isinstance(where, str):  # a remote tar: streamed once into the workspace
            if self.staging is None:
                raise AuditError(f"{where}: a remote tar needs a workspace to be copied into.")
            name = hashlib.sha256(where.encode()).hexdigest()[:16]
            self.staged = self.staging / f"remote-{name}.bin"
            return stage_remote_tar(where, self.staged, self.problems)
        return (
            scan_tar(where, self.problems) if where.suffix.lower() == ".tar" else scan_folder(where)
        )

    def _sidecar_rows(
        self, samples: dict[str, dict[str, Loc]], matched: set[str] | None, rows_per_part: int
    ) -> Iterator[RawBatch]:
        """One record per image of `samples` not in `matched`, metadata from `.txt` / `.json`."""
        source = self.images if self.images is not None else self.path
        is_tar = str(source).lower().endswith(".tar")
        if self.staged is not None:
            source = self.staged  # sidecars of a remote tar are read from its local copy
        rows: list[tuple[int, str, dict[str, Loc], Loc]] = []
        ordinal = 0
        for key, sample in samples.items():
            imgs = [sample[e] for e in IMAGE_EXTS if e in sample]
            # A folder keeps every image of a stem (a.jpg and a.png are two pictures);
            # a tar sample is one record (webdataset).
            if is_tar:
                imgs = imgs[:1]
            if not imgs:
                self.skipped += 1
            for loc in imgs:
                if matched is None or key not in matched:
                    rows.append((ordinal, key, sample, loc))
                ordinal += 1
        local = isinstance(source, Path) and source.is_file()
        with open(source, "rb") if local else contextlib.nullcontext() as f:
            for start in range(0, len(rows), rows_per_part):
                chunk = rows[start : start + rows_per_part]
                yield sidecar_batch(start, chunk, f)


def detect(sources: Sequence[str | os.PathLike[str]]) -> tuple[list[Input], list[str]]:
    """The inputs behind SOURCE arguments, and the paths skipped inside shard folders.

    Rules, by name only:
    - `X.parquet` with `X.tar` beside it: a webdataset shard (kind `webdataset`), images in the tar.
    - `X.parquet` with folder `X/` beside it (and no `X.tar`): img2dataset "files" output (`files`).
    - any other `X.parquet`: metadata only (`parquet`), every image `missing`.
    - `X.tar`: with `X.parquet` beside it, the same as passing the parquet; otherwise a tar-only
      shard (`tar`): one record per sample (members sharing a key), metadata from `.txt`/`.json`.
    - a folder holding `.parquet` or `.tar` files at its top level: each of them as above, in
      name order; everything else in it (stats files, unpaired folders) is skipped and counted.
    - any other folder: a plain image folder (`folder`), walked recursively in name order; one
      record per image file, caption from `<stem>.txt`, metadata from `<stem>.json`.
    Hidden files (starting with ".") are ignored everywhere.
    """
    if not sources:
        raise AuditError(
            "no sources given. Pass parquet files, tar shards or folders, e.g. "
            "audit ingest indexes/mydata laion.parquet shards/"
        )
    inputs: list[Input] = []
    skipped: list[str] = []
    for s in sources:
        if is_remote(s):
            inputs.append(_detect_remote(str(s)))
            continue
        p = Path(s).absolute()
        if not p.exists():
            raise AuditError(
                f"source {s} does not exist. Check the path (relative paths are from {os.getcwd()})."
            )
        if p.is_dir():
            found, skip = _detect_dir(p)
            inputs += found
            skipped += skip
        elif p.suffix.lower() in (".parquet", ".tar"):
            inputs.append(_detect_file(p))
        elif text_format(p.name):
            inputs.append(Input("table", p))
        else:
            raise AuditError(
                f"source {s} is not a .parquet file, a metadata table (.txt URL list, .csv, "
                ".tsv, .jsonl, optionally .gz/.bz2/.zst), a .tar shard or a folder. "
                "To ingest single images, pass the folder that holds them."
            )
    owner: dict[Path, Path] = {}
    for inp in inputs:
        for p in [x for x in (inp.path, inp.images) if isinstance(x, Path)]:
            real = p.resolve()
            if real in owner:
                raise AuditError(
                    f"{p} is read twice (through {owner[real]} and {inp.path}). "
                    "Pass each shard or folder once."
                )
            owner[real] = inp.path
    return inputs, skipped


def _detect_remote(url: str) -> Input:
    """A remote metadata file (fsspec URL): parquet or a text table, streamed, not copied; or
    a remote `.tar` shard, streamed once into the workspace (with its `.parquet` twin when
    the store has one: a webdataset shard)."""
    _, suffix, compression = split_name(url)
    if suffix == ".parquet" and compression is None:
        return Input("parquet", url)
    if suffix == ".tar" and compression is None:
        twin = url[: -len(".tar")] + ".parquet"
        return Input("webdataset", twin, images=url) if _remote_exists(twin) else Input("tar", url)
    if text_format(url):
        return Input("table", url)
    raise AuditError(
        f"source {url} is a remote {suffix or 'file'}{' (compressed)' if compression else ''}; "
        "remote sources can be metadata files "
        "(.parquet, .txt URL list, .csv, .tsv, .jsonl, optionally .gz/.bz2/.zst) or .tar "
        "shards, one URL each. For remote image folders or compressed tars, mount the bucket "
        "(e.g. s3fs, gcsfuse) or copy them, then pass the local path."
    )


def _remote_exists(url: str) -> bool:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        return bool(fs.exists(path))
    except (OSError, ValueError, ImportError):
        return False


def _detect_file(p: Path) -> Input:
    if p.suffix.lower() == ".tar":
        twin = p.with_suffix(".parquet")
        return Input("webdataset", twin, images=p) if twin.is_file() else Input("tar", p)
    if p.with_suffix(".tar").is_file():
        return Input("webdataset", p, images=p.with_suffix(".tar"))
    if p.with_suffix("").is_dir():
        return Input("files", p, images=p.with_suffix(""))
    return Input("parquet", p)


def _detect_dir(d: Path) -> tuple[list[Input], list[str]]:
    entries = sorted(e for e in d.iterdir() if not e.name.startswith("."))
    shards = [e for e in entries if e.is_file() and e.suffix.lower() in (".parquet", ".tar")]
    if not shards:
        return [Input("folder", d)], []
    inputs: list[Input] = []
    used: set[Path] = set()
    for e in shards:
        if e.suffix.lower() == ".tar" and e.with_suffix(".parquet").is_file():
            continue  # read through its parquet
        inp = _detect_file(e)
        inputs.append(inp)
        used.update(p for p in (inp.path, inp.images) if isinstance(p, Path))
    return inputs, [str(e) for e in entries if e not in used]


def _parquet_file(path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # a remote file is read through fsspec by range requests: footer, then row groups
        return pq.ParquetFile(open_binary(path) if is_remote(path) else path)
    except (OSError, pa.ArrowException) as e:
        raise AuditError(
            f"cannot read {path} as parquet ({e}). The file is truncated or not parquet: "
            "re-download it or remove it from the sources."
        ) from e


def _embedded_columns(schema: Any) -> tuple[str, ...]:
    import pyarrow as pa

    found = []
    for name in EMBEDDED_IMAGE_COLUMNS:
        i = schema.get_field_index(name)
        if i >= 0 and (
            pa.types.is_binary(schema.types[i]) or pa.types.is_large_binary(schema.types[i])
        ):
            found.append(name)
    return tuple(found)


def _strings(values: Any, n: int) -> list[str | None]:
    if values is None:
        return [None] * n
    import pyarrow as pa

    return convert(values, pa.string())[0].to_pylist()
