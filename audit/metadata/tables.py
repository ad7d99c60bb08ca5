"""Opening metadata files where users keep them: local or remote, text or parquet, compressed.

img2dataset and clip-retrieval read their inputs through fsspec, so their users keep URL lists
and metadata on object storage; ingest opens the same addresses the same way: anything with
`scheme://` (`https://`, `s3://`, `gs://`, `hf://`, `file://`, `memory://`) goes through
`fsspec.open` and is streamed, never copied whole. A remote parquet file is read by range
requests, one row group at a time.

Text formats follow img2dataset's `--input_format`: `txt` (one URL a line), `csv`, `tsv`,
`json` lines (`.jsonl`, `.ndjson`, `.json` with one object a line), each optionally `.gz`,
`.bz2` or `.zst` compressed (decompressed by Arrow while streaming). Empty lines are skipped
and not counted in `source_row` (the row number among the file's records, from 0).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

from audit.errors import AuditError

TEXT_FORMATS = {
    ".txt": "txt",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def is_remote(source: str | os.PathLike[str]) -> bool:
    return "://" in str(source)


def split_name(name: str) -> tuple[str, str, str | None]:
    """(stem, suffix, compression) of a file name: `a.csv.gz` -> ('a', '.csv', 'gzip')."""
    base = name.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    compression = COMPRESSIONS.get(f".{ext.lower()}") if dot else None
    if compression:
        base = stem
        stem, dot, ext = base.rpartition(".")
    if not dot:
        return base, "", compression
    return stem, f".{ext.lower()}", compression


def text_format(name: str) -> str | None:
    """img2dataset input format (`txt`, `csv`, `tsv`, `json`) of a file name, or None."""
    return TEXT_FORMATS.get(split_name(name)[1])


def open_binary(source: str) -> Any:
    """A readable binary file object for a local path or an fsspec URL (caller closes it)."""
    if not is_remote(source):
        return open(source, "rb")  # noqa: SIM115 - the caller closes it
    import fsspec

    try:
        return fsspec.open(source, "rb").open()
    except (OSError, ValueError, ImportError) as e:
        raise AuditError(
            f"cannot open {source} ({type(e).__name__}: {e}). Check the address and your "
            "credentials for that store (fsspec reads them the usual way, e.g. AWS_* for s3://); "
            "s3:// needs `pip install s3fs`, gs:// `pip install gcsfs`."
        ) from e


def remote_fingerprint(source: str) -> str:
    """What identifies a remote file's version without reading it: fsspec's info (size, etag...)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(source)
        info = fs.info(path)
    except (OSError, ValueError, ImportError) as e:
        raise AuditError(
            f"source {source} cannot be reached ({type(e).__name__}: {e}). Check the address."
        ) from e
    keep = {k: str(v) for k, v in sorted(info.items()) if k not in ("name", "url")}
    return "info:" + hashlib.sha256(repr(keep).encode()).hexdigest()


class TextTable:
    """A text metadata file read as Arrow record batches, streaming (bounded memory)."""

    def __init__(self, source: str, fmt: str):
        self.source, self.fmt = source, fmt
        self.compression = split_name(source)[2]

    def _stream(self) -> Any:
        import pyarrow as pa

        raw = open_binary(self.source)
        if self.compression is None:
            return raw
        return pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), self.compression)

    def _reader(self, stream: Any, block_size: int = 1 << 22) -> Any:
        import pyarrow as pa
        from pyarrow import csv, json

        try:
            if self.fmt == "json":
                return json.open_json(stream, read_options=json.ReadOptions(block_size=block_size))
            read = csv.ReadOptions(block_size=block_size)
            convert = csv.ConvertOptions(strings_can_be_null=True)
            if self.fmt == "txt":
                # one URL a line, nothing else: no header, no quoting, no delimiter
                read = csv.ReadOptions(block_size=block_size, column_names=["url"])
                parse = csv.ParseOptions(delimiter="\x1f", quote_char=False)
                convert = csv.ConvertOptions(column_types={"url": pa.string()})
            else:
                parse = csv.ParseOptions(delimiter="\t" if self.fmt == "tsv" else ",")
            return csv.open_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert
            )
        except (pa.ArrowException, OSError) as e:
            raise AuditError(
                f"{self.source}: cannot parse {self.fmt} in its first rows ({e}). Fix or remove "
                "the offending line, or name the file by its content (.csv/.tsv/.jsonl/.txt)."
            ) from e

    def names(self) -> list[str]:
        """Column names, from the header (reads only the first block)."""
        stream = self._stream()
        try:
            return list(self._reader(stream, block_size=1 << 16).schema.names)
        finally:
            stream.close()

    def batches(self) -> Iterator[Any]:
        """Record batches in file order; a parse error names the file and the fix."""
        import pyarrow as pa

        stream = self._stream()
        try:
            reader = self._reader(stream)
            rows = 0
            while True:
                try:
                    rb = reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowException, OSError) as e:
                    raise AuditError(
                        f"{self.source}: cannot parse {self.fmt} after row {rows} ({e}). "
                        "Fix or remove the offending line (a stray quote or a row with a different "
                        "number of fields is the usual cause) and ingest again."
                    ) from e
                rows += rb.num_rows
                yield rb
        finally:
            stream.close()
