"""Reading tar shards and folders without extracting anything: samples, sidecars, fingerprints.

A *sample* is the set of files sharing a key: in a tar, the member path up to the first dot
of its file name (webdataset); in a folder, the relative path without its extension. Each
is a dict extension -> `Loc`, so a reader needs one seek + read per file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from audit.errors import AuditError
from audit.metadata.columns import EXTRA_JSON, FROM_SOURCE, resolve
from audit.workspace import sha256_file

# Image file extensions, in order of preference when a sample has several.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


@dataclass(frozen=True)
class Loc:
    """Where one image's bytes are: `size` bytes at `offset` of `path` (member of a tar, or a file)."""

    path: str
    member: str | None
    offset: int
    size: int


@dataclass
class RawBatch:
    """Consecutive records of one unit, before casting and image checks."""

    pos: int  # position of the first record within its unit (parts split units by position)
    source_rows: list[int] | range
    columns: dict[str, Any]  # canonical name -> Arrow array or Python list
    extras: dict[str, Any]  # workspace column name -> Arrow array or Python list
    images: list[Loc | None]
    expect_image: list[bool]  # a record without an image is an `image_missing` error
    problems: list[tuple[int, str, str]] = field(default_factory=list)  # (index, reason, detail)
    # image bytes carried in the input itself (img2dataset parquet), one entry per record;
    # ingest copies them into the workspace and points `images` there
    inline: list[bytes | None] | None = None

    @property
    def n(self) -> int:
        return len(self.source_rows)


def digest(path: Path) -> str:
    """sha256 of a file; for a folder, of its sorted listing (relative path, size, mtime)."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), path)
            h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def problem(source: Path | str, source_row: int | None, reason: str, detail: str) -> dict[str, Any]:
    return {
        "stage": "ingest",
        "row_id": None,
        "source_file": str(source),
        "source_row": source_row,
        "reason": reason,
        "detail": detail,
    }


def _unsafe(m: tarfile.TarInfo) -> str | None:
    if m.issym() or m.islnk():
        return f"a link to {m.linkname!r}"
    if not m.isfile():
        return "not a regular file"
    p = PurePosixPath(m.name)
    if p.is_absolute() or m.name.startswith("\\") or ":" in p.parts[0]:
        return "an absolute path"
    if ".." in p.parts:
        return "a path with '..'"
    return None


def scan_tar(path: Path, problems: list[dict[str, Any]]) -> dict[str, dict[str, Loc]]:
    """Samples of a tar: key -> {extension: Loc}, in tar order. Nothing is extracted.

    A sample's key is the member path up to the first dot of its file name (webdataset).
    Unsafe members (links, absolute or `..` paths, devices) are reported and never read.
    """
    samples: dict[str, dict[str, Loc]] = {}
    with tarfile.open(path, mode="r:") as tf:
        for m, key, ext in _sample_members(tf, str(path), problems, samples):
            samples.setdefault(key, {})[ext] = Loc(
                str(path.resolve()), m.name, m.offset_data, m.size
            )
    return samples


def _sample_members(
    tf: tarfile.TarFile, source: str, problems: list[dict[str, Any]], samples: dict[str, Any]
) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """(member, sample key, lower-case extension) of each sample file of an open tar, in order.

    Directories, hidden files and unsafe members (reported) are skipped; a tar that breaks
    off ends the walk with a `tar_corrupt` problem naming how many samples came before.
    """
    while True:
        try:
            m = tf.next()
        except (tarfile.TarError, OSError, EOFError) as e:
            problems.append(
                problem(
                    source,
                    None,
                    "tar_corrupt",
                    f"members after {len(samples)} samples unreadable: {e}",
                )
            )
            return
        if m is None:
            return
        tf.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header otherwise; memory stays per-member
        if m.isdir():
            continue
        why = _unsafe(m)
        if why:
            problems.append(
                problem(source, None, "unsafe_tar_member", f"{m.name!r} is {why}; not read")
            )
            continue
        head, _, base = m.name.rpartition("/")
        if not base or base.startswith("."):
            continue
        stem, _, ext = base.partition(".")
        yield m, f"{head}/{stem}" if head else stem, ext.lower()


def stage_remote_tar(
    url: str, dest: Path, problems: list[dict[str, Any]]
) -> dict[str, dict[str, Loc]]:
    """Samples of a remote tar (fsspec URL), streamed once: members are copied into the local
    file `dest` (in the workspace) and every `Loc` points there, so later stages read the
    bytes like those of a local shard, with one seek and read and no network. Unsafe members
    are reported and not copied; a member over `images.MAX_IMAGE_BYTES` keeps its size but
    not its bytes, so reading it is an `image_too_large` error, as for a local shard.
    """
    from audit.images import MAX_IMAGE_BYTES
    from audit.metadata.tables import open_binary
    from audit.workspace import atomic_path

    samples: dict[str, dict[str, Loc]] = {}
    with atomic_path(dest) as tmp, open(tmp, "wb") as out, open_binary(url) as f:
        try:
            tf = tarfile.open(fileobj=f, mode="r|")
        except (tarfile.TarError, OSError) as e:
            raise AuditError(
                f"{url} is not an uncompressed tar ({e}). img2dataset writes plain .tar shards; "
                "decompress it first or remove it from the sources."
            ) from e
        with tf:
            for m, key, ext in _sample_members(tf, url, problems, samples):
                offset = out.tell()
                if m.size <= MAX_IMAGE_BYTES:
                    member = tf.extractfile(m)
                    if member is not None:
                        while block := member.read(1 << 20):
                            out.write(block)
                samples.setdefault(key, {})[ext] = Loc(str(dest), m.name, offset, m.size)
    return samples


def scan_folder(root: Path) -> dict[str, dict[str, Loc]]:
    """Files of a folder: relative path without extension -> {extension: Loc}, in name order."""
    samples: dict[str, dict[str, Loc]] = {}
    inside = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked folders
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if name.startswith(".") or not full.is_file():
                continue
            if not full.resolve().is_relative_to(inside):
                continue  # a symlink out of the source root (to /etc/passwd, say) is not data
            stem, ext = os.path.splitext(os.path.relpath(full, root))
            samples.setdefault(stem.replace(os.sep, "/"), {})[ext.lower().lstrip(".")] = Loc(
                str(full.resolve()), None, 0, full.stat().st_size
            )
    return samples


def pick_image(sample: dict[str, Loc] | None) -> Loc | None:
    if not sample:
        return None
    return next((sample[e] for e in IMAGE_EXTS if e in sample), None)


def read_sidecar(loc: Loc, f: Any) -> bytes:
    if f is None:
        return Path(loc.path).read_bytes()
    f.seek(loc.offset)
    return f.read(loc.size)


def sidecar_batch(pos: int, rows: list[tuple[int, str, dict[str, Loc], Loc]], f: Any) -> RawBatch:
    """Records of images with their `.txt` caption and `.json` metadata."""
    columns: dict[str, list[Any]] = {c: [None] * len(rows) for c in FROM_SOURCE}
    extra: list[str | None] = [None] * len(rows)
    problems: list[tuple[int, str, str]] = []
    for i, (_, key, sample, _loc) in enumerate(rows):
        if "json" in sample:
            try:
                meta = json.loads(read_sidecar(sample["json"], f))
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, OSError) as e:
                problems.append(
                    (i, "bad_value", f"sidecar {sample['json'].member or sample['json'].path}: {e}")
                )
                meta = {}
            mapping, extras = resolve(list(meta), "sidecar", required=False)
            for c, src in mapping.items():
                columns[c][i] = meta[src]
            if extras:
                extra[i] = json.dumps(
                    {src: meta[src] for src in extras.values()}, ensure_ascii=False, default=str
                )
        if "txt" in sample:
            try:
                # bytes, decoded by `convert` (which reports non-UTF-8); the final newline an
                # editor adds is not part of the caption
                columns["caption"][i] = read_sidecar(sample["txt"], f).rstrip(b"\r\n")
            except OSError as e:
                problems.append((i, "bad_value", f"caption file unreadable: {e}"))
        if columns["key"][i] is None:
            columns["key"][i] = key
    return RawBatch(
        pos=pos,
        source_rows=[r[0] for r in rows],
        columns=columns,
        extras={EXTRA_JSON: extra},
        images=[r[3] for r in rows],
        expect_image=[True] * len(rows),
        problems=problems,
    )
