"""The workspace: an on-disk folder of parquet, npy, faiss and json files plus `manifest.json`.

Every stage reads files written by earlier stages and writes its own; the manifest records,
for each stage, its parameters, the fingerprints of what it read, and every output with its
sha256, row count and first `row_id`. A stage is *done* when the manifest says so and the
fingerprints of its upstream stages still match; otherwise it is *stale*.

Nothing here knows about any particular stage: stages call `start_stage`, record parts as
they finish them (so a killed run resumes from the last finished part), and `finish`.
All writes go to a temporary name and are `os.replace`d into place.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import stages
from audit.errors import AuditError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# Every table a workspace can hold (view -> (glob, what it is)), from the stage list.
TABLES = stages.TABLES


_UMASK = os.umask(0)
os.umask(_UMASK)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it into place in one step.

    A killed process leaves at most a `.tmp-*` file, never a half-written `path`.
    """
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_parquet(path: str | os.PathLike[str], table: Any) -> None:
    """Write a pyarrow Table (or RecordBatch) as parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def atomic_write_npy(path: str | os.PathLike[str], array: Any) -> None:
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

    def __init__(self, root: str | os.PathLike[str], manifest: dict[str, Any]):
        self.root = Path(root)
        self.manifest = manifest

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike[str], dataset: str | None = None) -> Workspace:
        """Open `root` if it is a workspace, otherwise make it one."""
        root = Path(root)
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
            "dataset": dataset or root.name,
            "created": now(),
            "inputs": [],
            "stages": {},
        }
        ws = cls(root, manifest)
        ws.save()
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Workspace:
        root = Path(root)
        path = root / MANIFEST
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
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise AuditError(
                f"{path} has schema_version {version}; this audit reads {SCHEMA_VERSION}. "
                "Re-ingest into a new workspace."
            )
        return cls(root, manifest)

    @property
    def dataset(self) -> str:
        return str(self.manifest.get("dataset", self.root.name))

    def path(self, rel: str | os.PathLike[str]) -> Path:
        return self.root / rel

    def relative(self, path: str | os.PathLike[str]) -> str:
        """`path` as the manifest records it: relative to the workspace when inside it, so the
        workspace can move (to another folder, machine or shared mount); else unchanged."""
        p = Path(path)
        root = self.root.resolve()
        full = p.resolve() if p.is_absolute() or p.exists() else (Path.cwd() / p).resolve()
        return full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)

    def save(self) -> None:
        atomic_write_json(self.root / MANIFEST, self.manifest)

    # -- inputs and parts ----------------------------------------------------------------
    def metadata_parts(self) -> list[Part]:
        """The metadata shards in row order; every row-aligned artefact follows them."""
        ingest = self.manifest["stages"].get("ingest")
        if not ingest:
            return []
        parts = []
        for key, rec in sorted(ingest.get("parts", {}).items(), key=lambda kv: int(kv[0])):
            out = rec["outputs"][0]
            parts.append(Part(int(key), out["path"], int(out["rows"]), int(out["row_offset"])))
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
        upstream: dict[str, str] = {}
        for dep in depends_on:
            fp = self.stage_fingerprint(dep)
            if fp is None:
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
                why = f"{len(rec.get('parts', {}))} part(s) finished; re-run to resume"
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

        con = duckdb.connect()
        for view, (pattern, _) in TABLES.items():
            if any(self.root.glob(pattern)):
                glob = str(self.root / pattern).replace("'", "''")
                con.execute(
                    f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{glob}', union_by_name=true)"
                )
        return con


class StageRun:
    """A stage in progress: record finished parts as they land, then `finish`."""

    def __init__(self, ws: Workspace, name: str, record: dict[str, Any]):
        self.ws, self.name, self.record = ws, name, record

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


def _describe(root: Path, out: Output) -> dict[str, Any]:
    p = root / out.path
    return {
        "path": out.path,
        "sha256": sha256_file(p),
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
