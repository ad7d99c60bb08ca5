"""The workspace: an on-disk folder of parquet, npy, faiss and json files plus `manifest.json`.

Every stage reads files written by earlier stages and writes its own; the manifest records,
for each stage, its parameters, the fingerprints of what it read, and every output with its
sha256, row count and first `row_id`. A stage is *done* when the manifest says so and the
fingerprints of its upstream stages still match; otherwise it is *stale*.

Nothing here knows about any particular stage: stages call `start_stage`, record parts as
they finish them (so a killed run resumes from the last finished part), and `finish`.
All writes go to a temporary name and are `os.replace`d into place.

The workspace is a local folder (the fast path: renames and a flock) or an fsspec URL
(`FsPath`): there files are uploaded under a unique temporary key and moved onto their
name, only the driver writes the manifest, a lease stands in for the flock, and only the
per-part stages run (`REMOTE_STAGES`). Image locations are stored relative to input roots
the manifest records once (`store` / `locate`), so a workspace and its inputs can move.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import stages
from audit.errors import AuditError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# Held (flock) by every process that runs a stage on the workspace; holds that process's pid.
LOCK = ".audit.lock"
# What stands in for the lock on a URL workspace (see `Workspace._lease`), and how long a
# lease lasts without a manifest save renewing it.
LEASE = ".audit.lease"
LEASE_SECONDS = 3600

# The stages that run on a workspace at an fsspec URL (per-part stages and what they need);
# the others raise a clear error there (their files go through local-only calls).
REMOTE_STAGES = ("ingest", "hash", "embed", "index", "optout")

# Every table a workspace can hold (view -> (glob, what it is)), from the stage list.
TABLES = stages.TABLES


_UMASK = os.umask(0)
os.umask(_UMASK)


def is_url(root: Any) -> bool:
    """True for an fsspec URL (`memory://ws`, `s3://bucket/ws`, ...) or an `FsPath`."""
    return isinstance(root, FsPath) or (isinstance(root, str) and "://" in root)


def as_root(root: str | os.PathLike[str] | FsPath) -> Path | FsPath:
    """A workspace root: a local `Path`, or an `FsPath` for an fsspec URL. `file://` URLs are
    local paths (atomic renames and the flock work there, so they keep the fast path)."""
    if isinstance(root, FsPath):
        return root
    text = str(root) if isinstance(root, str) else _url_from_path(root)
    if text is not None and text.startswith("file://"):
        return Path(text[len("file://") :])
    if text is not None and "://" in text:
        return FsPath.from_url(text)
    return Path(root)


def _url_from_path(root: os.PathLike[str]) -> str | None:
    """The URL a `Path` was made from, if it was one: click's `Path` type (every WS argument)
    turns `memory://ws` into `memory:/ws`. Only fsspec's own protocol names count."""
    import re

    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):/([^/].*)?$", os.fspath(root))
    if not m:
        return None
    import fsspec

    if m.group(1) not in fsspec.available_protocols():
        return None
    slash = "/" if m.group(1) == "file" else ""  # file:///abs lost two of its three slashes
    return f"{m.group(1)}://{slash}{m.group(2) or ''}"


class FsPath:
    """A file or folder in an fsspec filesystem, with the few `pathlib.Path` methods the
    workspace and the per-part stages use (so `ws.path(rel)` works for a URL workspace too).
    It is not `os.PathLike`: code that would `open()` it locally fails loudly instead of
    creating a local file named like the URL."""

    def __init__(self, fs: Any, path: str):
        self.fs, self.path = fs, path.rstrip("/") or "/"

    @classmethod
    def from_url(cls, url: str) -> FsPath:
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise AuditError(f"cannot open the workspace URL {url} ({e}).") from e
        return cls(fs, path)

    def __str__(self) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{self.path.lstrip('/') if protocol != 'memory' else self.path}"

    def __repr__(self) -> str:
        return f"FsPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, rel: str | os.PathLike[str]) -> FsPath:
        return FsPath(self.fs, f"{self.path.rstrip('/')}/{Path(rel).as_posix()}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> FsPath:
        return FsPath(self.fs, self.path.rsplit("/", 1)[0] or "/")

    def with_name(self, name: str) -> FsPath:
        return self.parent / name

    def resolve(self) -> FsPath:
        return self

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def is_symlink(self) -> bool:
        return False

    def is_relative_to(self, other: Any) -> bool:
        return isinstance(other, FsPath) and (
            self.path == other.path or self.path.startswith(other.path.rstrip("/") + "/")
        )

    def relative_to(self, other: FsPath) -> Path:
        if not self.is_relative_to(other):
            raise ValueError(f"{self} is not inside {other}")
        return Path(self.path[len(other.path.rstrip("/")) + 1 :])

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.makedirs(self.path, exist_ok=True)

    def iterdir(self) -> Iterator[FsPath]:
        if not self.is_dir():
            return iter(())
        return iter(FsPath(self.fs, p) for p in sorted(self.fs.ls(self.path, detail=False)))

    def glob(self, pattern: str) -> list[FsPath]:
        return [FsPath(self.fs, p) for p in sorted(self.fs.glob(f"{self.path}/{pattern}"))]

    def unlink(self) -> None:
        self.fs.rm_file(self.path)

    def stat(self) -> os.stat_result:
        size = int(self.fs.info(self.path)["size"])
        return os.stat_result((0, 0, 0, 0, 0, 0, size, 0, 0, 0))

    def open(self, mode: str = "rb") -> Any:
        return self.fs.open(self.path, mode)

    def read_bytes(self) -> bytes:
        return bytes(self.fs.cat_file(self.path))

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


def open_file(path: Path | FsPath | str, mode: str = "rb") -> Any:
    """`path` opened for reading, local or in the workspace's filesystem."""
    return path.open(mode) if isinstance(path, FsPath) else open(path, mode)  # noqa: SIM115


def load_npy(path: Path | FsPath) -> Any:
    """A stored .npy array: memory-mapped from a local file, read whole from a URL workspace."""
    import numpy as np

    if isinstance(path, FsPath):
        return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    return np.load(path, mmap_mode="r")


def read_faiss(path: Path | FsPath, binary: bool = False) -> Any:
    """A stored faiss index (`binary`: a binary one). faiss reads only local files, so from a
    URL workspace the bytes are fetched and deserialised (`faiss.deserialize_index`); writing
    needs nothing special: `atomic_path` gives faiss a local file and uploads it."""
    import faiss

    if isinstance(path, FsPath):
        import numpy as np

        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        return faiss.deserialize_index_binary(data) if binary else faiss.deserialize_index(data)
    return faiss.read_index_binary(str(path)) if binary else faiss.read_index(str(path))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | os.PathLike[str] | FsPath, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open_file(path) if isinstance(path, FsPath) else open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str] | FsPath) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it into place in one step.

    A killed process leaves at most a `.tmp-*` file, never a half-written `path`.
    For a path in an fsspec filesystem (`FsPath`) the temporary file is local; on success it
    is uploaded under a unique temporary key beside `path` and moved onto `path` in one step
    (object stores: a server-side copy, so the object appears whole or not at all); a killed
    upload leaves only a `.tmp-*` key, which the next start of the stage sweeps.
    """
    if isinstance(path, FsPath):
        with _remote_atomic_path(path) as staged:
            yield staged
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600; give it the permissions a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def _remote_atomic_path(path: FsPath) -> Iterator[Path]:
    import uuid

    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.")
    os.close(fd)
    tmp_path = Path(tmp)
    key = path.with_name(f".tmp-{path.name}.{uuid.uuid4().hex}")
    try:
        yield tmp_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.fs.put_file(str(tmp_path), key.path)
        path.fs.mv(key.path, path.path)
    finally:
        tmp_path.unlink(missing_ok=True)
        if key.exists():
            key.unlink()


def atomic_write_bytes(path: str | os.PathLike[str] | FsPath, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str] | FsPath, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str] | FsPath, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_parquet(path: str | os.PathLike[str] | FsPath, table: Any, **options: Any) -> str:
    """Write a pyarrow Table (or RecordBatch) as parquet, atomically (`options`: write_table's).

    Returns the file's sha256, computed as the bytes go out (the writer only appends), so a
    stage can record it without reading the file back.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        sink = _HashingWriter(f)
        pq.write_table(table, sink, **{"compression": "zstd", **options})
    return sink.hash.hexdigest()


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through it."""

    def __init__(self, f: Any):
        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size


def atomic_write_npy(path: str | os.PathLike[str] | FsPath, array: Any) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


@dataclass(frozen=True)
class Output:
    """One file a stage wrote, relative to the workspace root."""

    path: str
    rows: int | None = None
    row_offset: int | None = None
    sha256: str | None = None  # when the writer hashed the bytes as it wrote them


@dataclass(frozen=True)
class Part:
    """One shard of the metadata: rows `row_offset .. row_offset + rows - 1`."""

    number: int
    path: str
    rows: int
    row_offset: int

    @property
    def stem(self) -> str:
        return f"{self.number:05d}"


def part_name(number: int) -> str:
    return f"{number:05d}"


class Workspace:
    """A dataset's folder under `indexes/`. Open with `Workspace.open`, make with `.create`."""

    def __init__(self, root: str | os.PathLike[str] | FsPath, manifest: dict[str, Any]):
        # a local Path (the fast path), or an FsPath for a workspace on an fsspec URL
        self.root: Any = as_root(root)
        self.manifest = manifest
        self._started: set[str] = set()  # stages this object started: its records win in `save`
        self._located: dict[str, str | None] = {}  # input root -> its folder here (`root_dir`)

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def create(cls, root_arg: str | os.PathLike[str], dataset: str | None = None) -> Workspace:
        """Open `root` (a folder or an fsspec URL) if it is a workspace, otherwise make it one."""
        root: Any = as_root(root_arg)
        if root.exists() and not root.is_dir():
            raise AuditError(f"{root} is a file, not a folder. Pass a folder for the workspace.")
        if (root / MANIFEST).exists():
            return cls.open(root)
        if root.exists() and any(root.iterdir()):
            raise AuditError(
                f"{root} exists, is not empty and has no {MANIFEST}: it is not an audit "
                "workspace. Pass a new folder (e.g. indexes/mydata)."
            )
        root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "dataset": safe_name(dataset or root.resolve().name, "dataset name"),
            "created": now(),
            "inputs": [],
            "stages": {},
        }
        ws = cls(root, manifest)
        ws.save()
        return ws

    @classmethod
    def open(cls, root_arg: str | os.PathLike[str]) -> Workspace:
        root: Any = as_root(root_arg)
        path = root / MANIFEST
        if root.exists() and not root.is_dir():
            raise AuditError(f"{root} is a file, not an audit workspace folder.")
        if not path.exists():
            raise AuditError(
                f"{root} is not an audit workspace (no {MANIFEST}). "
                f"Create one with: audit ingest {root} SOURCE..."
            )
        try:
            manifest = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise AuditError(
                f"{path} is unreadable ({e}). Restore it or re-run `audit ingest`."
            ) from e
        _check_manifest(path, manifest)
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise AuditError(
                f"{path} has schema_version {version}; this audit reads {SCHEMA_VERSION}. "
                "Re-ingest into a new workspace."
            )
        return cls(root, manifest)

    # -- the lock and the manifest merge -------------------------------------------------------
    # Two processes running stages on one workspace would each save their own copy of the
    # manifest and erase the other's records; two Workspace objects in one process (match
    # builds the index through a second one) would do the same. So a stage takes an
    # exclusive flock on `.audit.lock` (failing fast, never waiting), and `save` re-reads
    # the manifest and keeps every stage record this object did not itself start.
    def lock(self) -> None:
        """Take the workspace lock for this process (re-entrant); raise if another holds it."""
        import fcntl

        key = self._lock_key = str(self.root.resolve())
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
            return
        if self.remote:
            self._take_lease()
            _HELD[key] = [-1, 1]
            return
        path = self.root / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as e:
            raise AuditError(f"cannot create the lock file {path} ({e.strerror}).") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise AuditError(
                f"another audit is running on {self.root} (pid {pid}). Wait for it to finish, "
                "or stop it; a killed run resumes where it stopped."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]

    def lock_holder(self) -> str | None:
        """The pid recorded by the process holding the workspace lock, or None if it is free."""
        import fcntl

        if str(self.root.resolve()) in _HELD:
            return str(os.getpid())
        if self.remote:
            lease = self._lease()
            return f"{lease['host']}:{lease['pid']}" if lease else None
        try:
            fd = os.open(self.root / LOCK, os.O_RDONLY)
        except OSError:
            return None  # never locked (or unreadable): nothing says a stage is running
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)  # also drops the shared lock the probe may have taken
        return None

    def unlock(self) -> None:
        """Release one `lock`; the last release frees the workspace for other processes."""
        key = getattr(self, "_lock_key", None) or str(self.root.resolve())
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[key]
            if held[0] < 0:  # a lease (URL workspace): drop it so the next driver can start
                with contextlib.suppress(OSError):
                    (self.root / LEASE).unlink()
            else:
                os.close(held[0])  # closing the descriptor releases the flock

    # A URL workspace has no flock: its driver holds a lease instead, `.audit.lease` (JSON:
    # host, pid, token, expires), renewed at every manifest save and dropped at the end. It
    # keeps a second driver from starting by mistake; it is not a mutual-exclusion
    # primitive (two drivers starting in the same instant can both take it), so run one
    # driver per workspace. Workers never touch the manifest or the lease.
    def _lease(self) -> dict[str, Any] | None:
        """The lease of the driver running a stage on this URL workspace, if it is current."""
        try:
            lease = json.loads((self.root / LEASE).read_text("utf-8"))
            if float(lease["expires"]) > _dt.datetime.now(_dt.timezone.utc).timestamp():
                return dict(lease)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _take_lease(self) -> None:
        import socket
        import uuid

        lease = self._lease()
        if lease and lease.get("token") != getattr(self, "_lease_token", None):
            raise AuditError(
                f"another audit is running on {self.root} (host {lease.get('host')}, pid "
                f"{lease.get('pid')}; its lease {self.root / LEASE} runs out at "
                f"{_dt.datetime.fromtimestamp(float(lease['expires']), _dt.timezone.utc):%H:%M} UTC). "
                "Wait for it to finish; if it was killed, delete the lease file."
            )
        self._lease_token = getattr(self, "_lease_token", None) or uuid.uuid4().hex
        self._lease_host = socket.gethostname()
        self._renew_lease()

    def _renew_lease(self) -> None:
        expires = _dt.datetime.now(_dt.timezone.utc).timestamp() + LEASE_SECONDS
        lease = {"host": self._lease_host, "pid": os.getpid(), "token": self._lease_token}
        atomic_write_json(self.root / LEASE, {**lease, "expires": expires})

    def _sweep(self) -> None:
        """Delete the temporary `.tmp-*` keys that killed uploads left on a URL workspace.
        Called as a stage starts, when only the driver (holding the lease) runs: no worker
        is uploading then, and files nobody recorded are never read (`recorded_files`)."""
        fs = self.root.fs
        for key in fs.glob(f"{self.root.path}/**/.tmp-*") + fs.glob(f"{self.root.path}/.tmp-*"):
            with contextlib.suppress(OSError, FileNotFoundError):
                fs.rm_file(key)

    @property
    def remote(self) -> bool:
        """True for a workspace on an fsspec URL (not a local folder)."""
        return isinstance(self.root, FsPath)

    def _merged(self) -> dict[str, Any]:
        """The manifest to save: the one on disk, with the stages this object started replaced
        by its own records (the dicts themselves, so live `StageRun`s keep writing into them)."""
        path = self.root / MANIFEST
        try:
            disk = json.loads(path.read_text("utf-8"))
            _check_manifest(path, disk)
        except (OSError, ValueError, AuditError):
            return self.manifest
        records = dict(disk["stages"])
        for name in self._started:
            if name in self.manifest["stages"]:
                records[name] = self.manifest["stages"][name]
        for name, rec in self.manifest["stages"].items():
            records.setdefault(name, rec)
        merged = {**disk, **{k: v for k, v in self.manifest.items() if k != "stages"}}
        merged["stages"] = records
        return merged

    def _remove_recorded(self, rec: dict[str, Any]) -> None:
        """Delete the files an earlier run of a stage recorded, so a fresh start leaves no stale
        parts behind; only regular files inside the workspace, never through a symlink."""
        root = self.root.resolve()
        for out in _all_outputs(rec):
            p = self.root / str(out.get("path", ""))
            if p.is_symlink() or not p.is_file():
                continue
            if p.resolve().is_relative_to(root) and p.resolve() != root / MANIFEST:
                p.unlink()

    def recorded_files(self, pattern: str) -> list[Path]:
        """Files the manifest records (any stage, parts and outputs) whose path matches the
        glob `pattern` and which exist; what the views read instead of globbing the folder."""
        import fnmatch

        seen: dict[str, Path] = {}
        for rec in self.manifest["stages"].values():
            for out in _all_outputs(rec):
                rel = str(out.get("path", ""))
                p = self.root / rel
                if fnmatch.fnmatchcase(rel, pattern) and rel not in seen and p.is_file():
                    seen[rel] = p
        return [seen[k] for k in sorted(seen)]

    @property
    def dataset(self) -> str:
        # reports go to reports/<dataset>/: a name like ../../x must not lead out of there
        return safe_name(str(self.manifest.get("dataset", self.root.resolve().name)), "dataset")

    def path(self, rel: str | os.PathLike[str]) -> Any:
        """The file `rel` of the workspace: a `Path`, or an `FsPath` on a URL workspace."""
        return self.root / rel

    def duckdb(self) -> Any:
        """A duckdb connection that reads this workspace's files by `str(ws.path(rel))`: for
        a URL workspace its fsspec filesystem is registered (`register_filesystem`)."""
        import duckdb

        con = duckdb.connect()
        if self.remote:
            con.register_filesystem(self.root.fs)
        return con

    def relative(self, path: str | os.PathLike[str]) -> str:
        """`path` as the workspace's files record it (manifest, summaries, tables), so the
        workspace can move together with what is beside it: relative to the workspace root,
        inside it (`consented.parquet`) or outside (`../optout/registry.txt`); a URL as it is.
        Absolute only where no relative path holds: a local path on another filesystem than
        the workspace (another mount does not move with it), or on a URL workspace.
        `locate` reads every form back; the one rule for paths outside the workspace."""
        text = os.fspath(path)
        if is_url(text):
            return text
        if self.remote:
            base = str(self.root) + "/"
            return text[len(base) :] if text.startswith(base) else os.path.abspath(text)
        root, full = self.root.resolve(), Path(text).resolve()
        if full.is_relative_to(root):
            return full.relative_to(root).as_posix()
        if _device(full) != _device(root):
            return full.as_posix()
        return Path(os.path.relpath(full, root)).as_posix()

    # -- input roots: where image locations are relative to --------------------------------
    # A metadata part stores where each image is (`image_path`) and where each row came from
    # (`source_file`) in a form that survives moving the workspace and its inputs:
    #   `images/part-00000.bin`  inside the workspace, relative to it;
    #   `@shards/00000.tar`      under the input root named `shards` (manifest `roots`);
    #   `../other/x.png`         anything else local, relative to the workspace (`relative`);
    #   `/abs/path` or a URL     on another filesystem (and every path of an older workspace).
    # A root records its folder relative to the workspace (`path`: holds when the workspace
    # and its inputs move together) and absolute (`absolute`: the fallback, holds when only
    # the workspace moves); `set_root` points it elsewhere (`audit roots WS NAME NEW_PATH`).
    def set_roots(self, dirs: Mapping[str, str | os.PathLike[str]]) -> None:
        """Record (or replace) the input roots `name -> folder` (saved with the manifest)."""
        roots = self.manifest.setdefault("roots", {})
        for name, d in dirs.items():
            full = Path(d).resolve()
            rec = {"absolute": full.as_posix()}
            if not self.remote:  # from a URL workspace no local path is relative
                rec["path"] = self.relative(full)
            roots[safe_name(name, "root name")] = rec
        self._located = {}

    def add_root(self, folder: str | os.PathLike[str]) -> str:
        """The name of the root for `folder`, recording it under its folder name (made unique)
        unless a root already records that folder."""
        full = Path(folder).resolve()
        taken = self.manifest.get("roots", {})
        for name, rec in taken.items():
            if full.as_posix() in (rec.get("absolute"), self.root_dir(name, strict=False)):
                self.set_roots({name: full})
                return name
        name, n = root_name(full), 1
        while name in taken:
            n += 1
            name = f"{root_name(full)}-{n}"
        self.set_roots({name: full})
        return name

    def root_dir(self, name: str, strict: bool = True) -> str | None:
        """Where root `name` is on this machine: its workspace-relative path if that exists,
        else its absolute one; None (or, with `strict`, an AuditError saying the fix)."""
        located = self._located
        if name not in located:
            rec = self.manifest.get("roots", {}).get(name)
            found = None
            if isinstance(rec, dict):
                for cand in (
                    self.root / rec["path"] if rec.get("path") else None,
                    Path(rec["absolute"]) if rec.get("absolute") else None,
                ):
                    if cand is not None and cand.exists():
                        found = os.path.abspath(cand)
                        break
            located[name] = found
        found = located[name]
        if found is None and strict:
            rec = self.manifest.get("roots", {}).get(name)
            if not isinstance(rec, dict):
                raise AuditError(
                    f"{self.root / MANIFEST} names input root '{name}' but records no such root. "
                    "Re-ingest into a new workspace."
                )
            raise AuditError(
                f"input root '{name}' of {self.root} is not at {rec.get('path')} (from the "
                f"workspace) nor at {rec.get('absolute')}. If it moved, run: "
                f"audit roots {self.root} {name} NEW_PATH"
            )
        return found

    def roots(self) -> dict[str, dict[str, Any]]:
        """Per input root: what the manifest records and where it is found here (or None)."""
        return {
            name: {**rec, "found": self.root_dir(name, strict=False)}
            for name, rec in self.manifest.get("roots", {}).items()
        }

    def set_root(self, name: str, folder: str | os.PathLike[str]) -> None:
        """Point input root `name` at `folder` (after the inputs moved) and save the manifest."""
        if name not in self.manifest.get("roots", {}):
            have = ", ".join(self.manifest.get("roots", {})) or "none"
            raise AuditError(f"{self.root} has no input root '{name}' (roots: {have}).")
        if not Path(folder).is_dir():
            raise AuditError(f"{folder} is not a folder. Pass the folder root '{name}' moved to.")
        self.lock()
        try:
            self.manifest = self._merged()
            self.set_roots({name: folder})
            atomic_write_json(self.root / MANIFEST, self.manifest)
        finally:
            self.unlock()

    def forget_absolute_roots(self) -> None:
        """Drop each input root's `absolute` fallback where its workspace-relative `path`
        holds, and save: for a workspace shipped together with its inputs (the memorisation
        experiment's, committed beside the bundled sample), which then records no path of the
        machine that made it. A root whose `path` does not hold keeps its fallback."""
        self.lock()
        try:
            self.manifest = self._merged()
            for rec in self.manifest.get("roots", {}).values():
                if rec.get("path") and (self.root / rec["path"]).exists():
                    rec.pop("absolute", None)
            self._located = {}
            atomic_write_json(self.root / MANIFEST, self.manifest)
        finally:
            self.unlock()

    def store(self, path: str | os.PathLike[str] | None) -> str | None:
        """`path` (a local file or folder) in the form metadata parts and the manifest keep:
        relative to an input root (`@name/...`), else to the workspace (`relative`)."""
        if path is None:
            return None
        text = str(path)
        if self.remote and text.startswith(str(self.root) + "/"):
            return text[len(str(self.root)) + 1 :]
        if "://" in text:
            return text
        full = os.path.abspath(text)
        stored = self._under_root(full)
        if stored is None and os.path.realpath(full) != full:
            # roots are recorded resolved: a source passed through a symlinked folder
            stored = self._under_root(os.path.realpath(full))
        if stored is not None:
            return stored
        for base in (
            set() if self.remote else {os.path.abspath(self.root), str(self.root.resolve())}
        ):
            if full.startswith(base + "/"):
                return full[len(base) + 1 :]
        return self.relative(full)

    def _under_root(self, full: str) -> str | None:
        """`full` as `@name/rel` if it is under a recorded input root, else None."""
        for name, rec in self.manifest.get("roots", {}).items():
            # where it was recorded, or where it is found now (moved with the workspace)
            for base in (str(rec.get("absolute", "")), self.root_dir(name, strict=False) or ""):
                base = base.rstrip("/")
                if base and full == base:
                    return f"@{name}"
                if base and full.startswith(base + "/"):
                    return f"@{name}/{full[len(base) + 1 :]}"
        return None

    def locate(self, stored: str | None) -> str | None:
        """Where a stored path (`store`'s or `relative`'s form) is on this machine; absolute
        paths (older workspaces, other filesystems) and URLs come back unchanged. The one
        place recorded paths resolve."""
        if not stored or stored.startswith("/") or "://" in stored:
            return stored
        if stored.startswith("@"):
            name, _, rest = stored[1:].partition("/")
            base = self.root_dir(name)
            return f"{base}/{rest}" if rest else base
        if self.remote:
            return str(self.root / stored)
        if stored == ".." or stored.startswith("../"):
            # `relative` measured from the resolved root (a symlinked workspace folder)
            return os.path.normpath(os.path.join(self.root.resolve(), stored))
        return os.path.join(os.path.abspath(self.root), stored)

    def read_part(self, part: Part, columns: list[str] | None = None) -> Any:
        """A metadata part as a pyarrow Table (`columns`, or all) with `image_path` located on
        this machine (`locate`); every stage that reads image bytes reads its rows here."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.remote:
            with self.path(part.path).open("rb") as f:
                table = pq.read_table(f, columns=columns)
        else:
            table = pq.read_table(self.path(part.path), columns=columns)
        i = table.schema.get_field_index("image_path")
        if i < 0:
            return table
        coded = table.column(i).combine_chunks().dictionary_encode()
        values = [self.locate(v) for v in coded.dictionary.to_pylist()]
        located = pa.array(values, pa.string()).take(coded.indices)
        return table.set_column(i, "image_path", located)

    def image_path_sql(self, column: str = "image_path") -> str:
        """A duckdb expression locating `column` (stored form) like `locate`; a root not found
        here keeps its recorded absolute path (the view must open even then)."""

        def lit(text: str) -> str:
            return "'" + text.replace("'", "''") + "'"

        cases = [
            f"WHEN {column} IS NULL OR {column}[1] = '/' OR contains({column}, '://') THEN {column}"
        ]
        for name, rec in self.manifest.get("roots", {}).items():
            base = self.root_dir(name, strict=False) or str(rec.get("absolute", ""))
            cases.append(f"WHEN {column} = {lit('@' + name)} THEN {lit(base)}")
            prefix = f"@{name}/"
            cases.append(
                f"WHEN starts_with({column}, {lit(prefix)}) "
                f"THEN {lit(base + '/')} || {column}[{len(prefix) + 1}:]"
            )
        if not self.remote:  # beside the workspace (`relative`): from the resolved root
            cases.append(
                f"WHEN starts_with({column}, '../') THEN {lit(str(self.root.resolve()) + '/')} || {column}"
            )
        ws = (str(self.root) if self.remote else os.path.abspath(self.root)) + "/"
        return f"CASE {' '.join(cases)} ELSE {lit(ws)} || {column} END"

    def save(self) -> None:
        self.manifest = self._merged()
        atomic_write_json(self.root / MANIFEST, self.manifest)
        if self.remote and str(self.root) in _HELD:
            self._renew_lease()

    # -- inputs and parts ----------------------------------------------------------------
    def metadata_parts(self) -> list[Part]:
        """The metadata shards in row order; every row-aligned artefact follows them."""
        ingest = self.manifest["stages"].get("ingest")
        if not ingest:
            return []
        parts = []
        try:
            for key, rec in sorted(ingest.get("parts", {}).items(), key=lambda kv: int(kv[0])):
                out = rec["outputs"][0]
                parts.append(Part(int(key), out["path"], int(out["rows"]), int(out["row_offset"])))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise AuditError(
                f"{self.root / MANIFEST} is damaged: an ingest part record is malformed ({e!r}). "
                "Re-ingest into a new workspace."
            ) from e
        return parts

    def require_parts(self) -> list[Part]:
        parts = self.metadata_parts()
        if not parts:
            raise AuditError(
                f"{self.root} has no ingested rows yet. Run: audit ingest {self.root} SOURCE..."
            )
        return parts

    @property
    def num_rows(self) -> int:
        return sum(p.rows for p in self.metadata_parts())

    # -- stages ----------------------------------------------------------------------------
    def stage(self, name: str) -> dict[str, Any] | None:
        return self.manifest["stages"].get(name)

    def require_hashes(self, needed: tuple[str, ...] | list[str], by: str) -> None:
        """Raise unless stage `hash` ran and computed every hash in `needed` (`audit hash
        --hashes` can compute fewer than all of `schema.HASHES`)."""
        from audit.schema import HASHES

        rec = self.stage("hash")
        if rec is None:
            raise AuditError(f"{by} needs perceptual hashes. Run: audit hash {self.root}")
        have = rec.get("params", {}).get("hashes", list(HASHES))
        missing = [h for h in needed if h not in have]
        if missing:
            raise AuditError(
                f"{by} needs {', '.join(missing)}, but `audit hash` computed only "
                f"{', '.join(have)}. Run: audit hash {self.root} --hashes {','.join(HASHES)}"
            )

    def stage_fingerprint(self, name: str) -> str | None:
        """A digest of everything the stage wrote; downstream stages record it."""
        rec = self.stage(name)
        if not rec or rec.get("status") != "done":
            return None
        h = hashlib.sha256()
        for out in _all_outputs(rec):
            h.update(f"{out['path']}\0{out.get('sha256')}\n".encode())
        h.update(json.dumps(rec.get("params", {}), sort_keys=True, default=str).encode())
        return h.hexdigest()

    def start_stage(
        self, name: str, params: dict[str, Any], depends_on: tuple[str, ...] | list[str] = ()
    ) -> StageRun:
        """Begin (or resume) a stage.

        If an earlier run of the stage had the same parameters and the same upstream
        fingerprints, its finished parts are kept and `StageRun.is_done(part)` says so;
        otherwise the record starts afresh.
        """
        if self.remote and name not in REMOTE_STAGES:
            raise AuditError(
                f"stage '{name}' does not run on a URL workspace yet ({self.root}); the stages "
                f"that do: {', '.join(REMOTE_STAGES)}. Copy the workspace to a local folder "
                "(or a mount) for the others."
            )
        self.lock()
        if self.remote:
            self._sweep()
        # another Workspace object may have recorded stages since this one read the manifest
        self.manifest = self._merged()
        upstream: dict[str, str] = {}
        for dep in depends_on:
            fp = self.stage_fingerprint(dep)
            if fp is None:
                self.unlock()
                raise AuditError(
                    f"stage '{name}' needs stage '{dep}' first. Run: audit {stages.command(dep)} {self.root}"
                )
            upstream[dep] = fp
        params = json.loads(json.dumps(params, default=str))
        old = self.stage(name)
        if old and old.get("params") == params and old.get("depends_on") == upstream:
            rec = old
            rec["status"] = "running" if rec.get("status") != "done" else "done"
            rec.setdefault("parts", {})
            rec["resumed"] = now()
        else:
            if old:
                self._remove_recorded(old)
            rec = {
                "status": "running",
                "params": params,
                "depends_on": upstream,
                "parts": {},
                "outputs": [],
                "summary": {},
                "started": now(),
            }
        self.manifest["stages"][name] = rec
        self._started.add(name)
        self.save()
        return StageRun(self, name, rec)

    def status(self, verify: bool = False) -> dict[str, dict[str, Any]]:
        """Per stage: done / stale / running, with the reason when not done."""
        result: dict[str, dict[str, Any]] = {}
        for name, rec in self.manifest["stages"].items():
            state, why = rec.get("status", "unknown"), ""
            if state == "done":
                for dep, fp in rec.get("depends_on", {}).items():
                    if self.stage_fingerprint(dep) != fp:
                        state, why = "stale", f"'{dep}' changed since this stage ran"
                        break
                if state == "done":
                    for out in _all_outputs(rec):
                        p = self.root / out["path"]
                        if not p.exists():
                            state, why = "stale", f"{out['path']} is missing"
                            break
                        if verify and sha256_file(p) != out.get("sha256"):
                            state, why = "stale", f"{out['path']} changed on disk"
                            break
            elif state == "running":
                holder = self.lock_holder()
                done = f"{len(rec.get('parts', {}))} part(s) finished"
                why = (
                    f"{done}; an audit holds the workspace lock (pid {holder})"
                    if holder
                    else f"{done}, interrupted: no audit is running; re-run to resume"
                )
            result[name] = {
                "status": state,
                "why": why,
                "finished": rec.get("finished"),
                "summary": rec.get("summary", {}),
            }
        return result

    # -- SQL -----------------------------------------------------------------------------------
    def connect(self, read_only_views: bool = True) -> Any:
        """An in-memory duckdb connection with one view per workspace table that exists."""
        import duckdb

        self.manifest = self._merged()  # what other stages recorded since this object opened
        con = self.duckdb()
        for view, (pattern, _) in TABLES.items():
            # only the files the manifest records: a leftover part is not part of the table
            files = [str(p) for p in self.recorded_files(pattern)]
            if files:
                listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                try:
                    # `metadata` shows where each image is on this machine (`locate`)
                    star = (
                        f"* REPLACE ({self.image_path_sql()} AS image_path)"
                        if view == "metadata"
                        else "*"
                    )
                    con.execute(
                        f"CREATE VIEW {view} AS SELECT {star} "
                        f"FROM read_parquet([{listed}], union_by_name=true)"
                    )
                except duckdb.Error as e:
                    con.close()
                    first = str(e).strip().splitlines()[0]
                    raise AuditError(
                        f"cannot read the '{view}' files of {self.root} ({first}). "
                        f"`audit status {self.root} --verify` names damaged files; "
                        "re-run the stage that wrote them."
                    ) from e
        return con


class StageRun:
    """A stage in progress: record finished parts as they land, then `finish`."""

    def __init__(self, ws: Workspace, name: str, record: dict[str, Any]):
        self.ws, self.name, self.record = ws, name, record
        self._holds_lock = True  # `start_stage` took the workspace lock for this run

    def __del__(self) -> None:
        # A stage that raised never calls `finish`; once its run is dropped, the lock goes
        # too, so a long-lived process (a notebook) does not keep the workspace locked.
        if getattr(self, "_holds_lock", False):
            self._holds_lock = False
            self.ws.unlock()

    @property
    def params(self) -> dict[str, Any]:
        return self.record["params"]

    def is_done(self, part: int | str) -> bool:
        """True if this part was finished by a run with the same parameters and its files are intact."""
        rec = self.record["parts"].get(str(part))
        if not rec:
            return False
        for out in rec["outputs"]:
            p = self.ws.root / out["path"]
            if not p.exists() or p.stat().st_size != out.get("bytes"):
                return False
        return True

    def record_part(self, part: int | str, outputs: list[Output], **info: Any) -> None:
        """Mark `part` finished. Call after its files are in place (atomically written)."""
        self.record["parts"][str(part)] = {
            "outputs": [_describe(self.ws.root, o) for o in outputs],
            "finished": now(),
            **info,
        }
        self.ws.save()

    def part_info(self, part: int | str) -> dict[str, Any] | None:
        return self.record["parts"].get(str(part))

    def finish(self, summary: dict[str, Any], outputs: list[Output] = ()) -> None:  # type: ignore[assignment]
        self.record["outputs"] = [_describe(self.ws.root, o) for o in outputs]
        self.record["summary"] = json.loads(json.dumps(summary, default=str))
        self.record["status"] = "done"
        self.record["finished"] = now()
        self.ws.save()
        if self._holds_lock:
            self._holds_lock = False
            self.ws.unlock()


def roots(
    ws_root: str | os.PathLike[str],
    name: str | None = None,
    new_path: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The workspace's input roots and where each is found here (`audit roots`); with `name`
    and `new_path`, first point root `name` at the folder its inputs moved to.

    >>> roots("indexes/sample", "shards", "/mnt/shared/laion/shards")  # doctest: +SKIP
    {'shards': {'absolute': '/mnt/shared/laion/shards', 'path': '...', 'found': '/mnt/...'}}
    """
    ws = Workspace.open(ws_root)
    if name is not None:
        if new_path is None:
            raise AuditError(
                f"give the folder root '{name}' moved to: audit roots {ws_root} {name} NEW_PATH"
            )
        ws.set_root(name, new_path)
    return ws.roots()


def root_name(folder: Path) -> str:
    """A root's default name: its folder's name, as a plain name (`safe_name`)."""
    name = folder.name or "root"
    return name if name not in (".", "..") else "root"


def safe_name(name: str, what: str = "name") -> str:
    """`name` if it is one plain path component (no separators, not `.`/`..`), else raise:
    dataset names become folders under `reports/` and must stay inside it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise AuditError(
            f"{what} {name!r} is not a plain name: use letters, digits, '-', '_' or '.', "
            "with no '/' (e.g. --dataset mydata)."
        )
    return name


# resolved workspace root -> [open lock descriptor, how many `lock` calls hold it]
_HELD: dict[str, list[int]] = {}


def _check_manifest(path: Path, manifest: Any) -> None:
    """Raise a one-line AuditError unless `manifest` has the shape every reader relies on."""
    fix = "Restore it from a backup or re-ingest into a new workspace."
    if not isinstance(manifest, dict):
        raise AuditError(
            f"{path} is damaged: a JSON {type(manifest).__name__}, not an object. {fix}"
        )
    stages = manifest.get("stages")
    if not isinstance(stages, dict) or not all(isinstance(r, dict) for r in stages.values()):
        raise AuditError(f"{path} is damaged: no 'stages' object. {fix}")
    if not isinstance(manifest.get("inputs", []), list):
        raise AuditError(f"{path} is damaged: 'inputs' is not a list. {fix}")
    for name, rec in stages.items():
        parts = rec.get("parts", {})
        outs = [o for p in parts.values() if isinstance(p, dict) for o in p.get("outputs", [])]
        if (
            not isinstance(parts, dict)
            or not all(
                isinstance(p, dict) and isinstance(p.get("outputs"), list) for p in parts.values()
            )
            or not isinstance(rec.get("outputs", []), list)
            or not all(
                isinstance(o, dict) and isinstance(o.get("path"), str)
                for o in outs + rec.get("outputs", [])
            )
        ):
            raise AuditError(f"{path} is damaged: the record of stage '{name}' is malformed. {fix}")


def _device(path: Path) -> int | None:
    """The filesystem (`st_dev`) holding `path`, or its nearest existing folder."""
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            return os.stat(p).st_dev
    return None


def _describe(root: Path, out: Output) -> dict[str, Any]:
    p = root / out.path
    return {
        "path": out.path,
        "sha256": out.sha256 or sha256_file(p),
        "bytes": p.stat().st_size,
        "rows": out.rows,
        "row_offset": out.row_offset,
    }


def _all_outputs(rec: dict[str, Any]) -> list[dict[str, Any]]:
    outs = []
    for key in sorted(rec.get("parts", {}), key=lambda k: (len(k), k)):
        outs.extend(rec["parts"][key]["outputs"])
    outs.extend(rec.get("outputs", []))
    return outs
