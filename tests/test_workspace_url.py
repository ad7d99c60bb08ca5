"""A workspace at an fsspec URL (here fsspec's in-memory filesystem, `memory://`): the
per-part stages (ingest, hash, embed, optout) and the index run on it and write the same bytes as on a
local folder; `audit query` and `audit status` read it; the other stages say they do not run
there; the lease replaces the flock; keys left by killed uploads are swept. `file://` URLs
are local folders (the fast path, with flock and atomic renames)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from audit import embeddings, hashes, knn, metadata, optouts, pipeline, sql
from audit.checks import duplicates
from audit.cli import cli
from audit.errors import AuditError
from audit.workspace import LEASE, FsPath, Workspace

SAMPLE = pipeline.sample_dir()
pytestmark = pytest.mark.skipif(not (SAMPLE / "shards").is_dir(), reason="bundled sample not built")
REGISTRY = sorted((SAMPLE / "optout").glob("registry-*"))


@pytest.fixture
def url():
    """A fresh workspace URL in fsspec's memory filesystem, removed afterwards."""
    import fsspec

    where = f"memory://ws-{uuid.uuid4().hex[:8]}"
    yield where
    fs = fsspec.filesystem("memory")
    if fs.exists(where):
        fs.rm(where, recursive=True)


def _run(ws_root: str | Path) -> None:
    metadata.ingest(ws_root, [SAMPLE / "shards"], rows_per_part=100)
    hashes.compute(ws_root, workers=1)
    embeddings.compute(ws_root, model="tiny", pretrained="none", workers=0)
    knn.build(ws_root)  # faiss reads local files only: from the store it gets the bytes
    optouts.compute(ws_root, registry=REGISTRY)


def _outputs(ws: Workspace) -> dict[str, str]:
    """Every recorded output of every stage: path -> sha256."""
    out = {}
    for rec in ws.manifest["stages"].values():
        for part in rec.get("parts", {}).values():
            out |= {o["path"]: o["sha256"] for o in part["outputs"]}
        out |= {o["path"]: o["sha256"] for o in rec.get("outputs", [])}
    return out


def _registry_named_by_file(ws: Workspace, rel: str) -> list[dict]:
    """The rows of an optout table with each registry location cut to the file's name."""
    import re

    with ws.path(rel).open("rb") as f:
        rows = pq.read_table(f).to_pylist()
    for r in rows:
        if isinstance(r.get("location"), str):
            r["location"] = re.sub(r"^\S*/(registry-\S+)", r"\1", r["location"])
    return rows


def test_per_part_stages_on_a_memory_url_write_what_a_local_run_writes(url, tmp_path):
    _run(url)
    _run(tmp_path / "ws")
    remote, local = Workspace.open(url), Workspace.open(tmp_path / "ws")
    assert isinstance(remote.root, FsPath) and not (tmp_path / "memory:").exists()
    assert set(remote.manifest["stages"]) == {"ingest", "hash", "embed", "index", "optout"}
    got, want = _outputs(remote), _outputs(local)
    assert len(want) > 20 and got.keys() == want.keys()
    # same bytes, but where the optout tables name the registry: the local workspace records
    # it relative to itself, the URL workspace (no relative path to a local file) absolutely
    same = {rel for rel in want if not rel.startswith("optout/")}
    assert len(same) > 20 and {r: got[r] for r in same} == {r: want[r] for r in same}
    for rel in set(want) - same:
        mine, theirs = _registry_named_by_file(remote, rel), _registry_named_by_file(local, rel)
        assert mine == theirs and len(mine) > 0, rel
    for rel in same:  # and the bytes on the store are the recorded ones
        assert remote.path(rel).stat().st_size == (tmp_path / "ws" / rel).stat().st_size
    # the driver's lease is gone and no upload left a temporary key
    keys = remote.root.fs.find(remote.root.path)
    assert not any(k.rsplit("/", 1)[-1].startswith((".tmp-", LEASE)) for k in keys)
    # duckdb reads the store through fsspec: the views and `audit query` / `audit status`
    n = sql.query(url, "SELECT count(*) AS n, count(phash) AS p FROM hashes").to_pylist()
    assert n == [{"n": 300, "p": 300}]
    status = CliRunner().invoke(cli, ["status", url, "--verify", "--json"])  # re-hashes the store
    assert status.exit_code == 0, status.output
    assert {s["status"] for s in json.loads(status.output)["stages"].values()} == {"done"}
    q = CliRunner().invoke(
        cli, ["query", url, "SELECT count(*) AS n FROM optout", "--format", "csv"]
    )
    assert q.exit_code == 0 and q.output.splitlines()[1] == "1500", q.output
    out = tmp_path / "hashes.parquet"  # a local --output of a query over the store
    q = CliRunner().invoke(
        cli, ["query", url, "SELECT * FROM hashes", "--format", "parquet", "--output", str(out)]
    )
    assert q.exit_code == 0 and pq.read_metadata(out).num_rows == 300, q.output
    # the indexes answer searches from the store as they do locally
    queries = np.load(tmp_path / "ws" / "embeddings" / "img-00001.npy")[:5].astype(np.float32)
    got_e, want_e = (
        knn.search_embeddings(url, queries),
        knn.search_embeddings(tmp_path / "ws", queries),
    )
    assert (got_e[1] == want_e[1]).all() and (got_e[1][:, 0] == np.arange(100, 105)).all()
    codes = np.asarray(
        pq.read_table(tmp_path / "ws" / "hashes" / "part-00000.parquet")["phash"][:5], np.uint64
    )
    assert (knn.search_hashes(url, codes)[1] == knn.search_hashes(tmp_path / "ws", codes)[1]).all()
    # a rerun resumes from the manifest: nothing is hashed again
    assert hashes.compute(url, workers=1)["resumed_parts"] == 3


def test_other_stages_and_copied_images_refuse_a_url_workspace(url):
    # through the CLI too: its WS argument (a click Path) keeps the URL a URL
    result = CliRunner().invoke(
        cli, ["ingest", url, str(SAMPLE / "shards"), "--rows-per-part", "300"]
    )
    assert result.exit_code == 0 and Workspace.open(url).num_rows == 300, result.output
    assert CliRunner().invoke(cli, ["hash", url, "--workers", "1"]).exit_code == 0
    with pytest.raises(AuditError, match="stage 'dedup' does not run on a URL workspace yet"):
        duplicates.find(url)
    result = CliRunner().invoke(cli, ["dedup", url])
    assert result.exit_code == 1 and "URL workspace" in result.output, result.output
    # image bytes ingest would copy into the workspace (a remote tar) are refused up front
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe(f"{url}-in/00000.tar", (SAMPLE / "shards" / "00000.tar").read_bytes())
    with pytest.raises(AuditError, match="cannot take yet"):
        metadata.ingest(f"{url}-x", [f"{url}-in/00000.tar"])
    fs.rm(f"{url}-in", recursive=True)


def test_the_lease_keeps_a_second_driver_out_and_lapses(url):
    metadata.ingest(url, [SAMPLE / "shards"], rows_per_part=300)
    ws = Workspace.open(url)
    lease = {"host": "other-node", "pid": 4242, "token": "not-ours"}
    ws.path(LEASE).fs.pipe(
        ws.path(LEASE).path, json.dumps({**lease, "expires": time.time() + 600}).encode()
    )
    with pytest.raises(AuditError, match=r"another audit is running .*other-node, pid 4242"):
        hashes.compute(url, workers=1)
    assert Workspace.open(url).lock_holder() == "other-node:4242"
    # a lease nobody renewed (its driver was killed) no longer counts
    ws.path(LEASE).fs.pipe(
        ws.path(LEASE).path, json.dumps({**lease, "expires": time.time() - 1}).encode()
    )
    assert hashes.compute(url, workers=1)["hashed"] == 300
    assert not ws.path(LEASE).exists()


def test_unrecorded_files_are_not_read_and_temporary_keys_are_swept(url):
    metadata.ingest(url, [SAMPLE / "shards"], rows_per_part=100)
    ws = Workspace.open(url)
    fs = ws.root.fs
    # what a killed worker leaves: a finished file nobody recorded, and a half upload
    fs.pipe(
        ws.path("metadata/part-00099.parquet").path,
        ws.path("metadata/part-00000.parquet").read_bytes(),
    )
    fs.pipe(ws.path("hashes/.tmp-part-00000.parquet.dead").path, b"half")
    assert sql.query(url, "SELECT count(*) AS n FROM metadata").to_pylist() == [{"n": 300}]
    hashes.compute(url, workers=1)
    assert not ws.path("hashes/.tmp-part-00000.parquet.dead").exists()


def test_a_file_url_is_a_local_folder(tmp_path):
    where = f"file://{tmp_path / 'ws'}"
    metadata.ingest(where, [SAMPLE / "shards"], rows_per_part=300)
    ws = Workspace.open(where)
    assert isinstance(ws.root, Path) and (tmp_path / "ws" / "manifest.json").is_file()
    assert hashes.compute(where, workers=1)["hashed"] == 300
    assert (tmp_path / "ws" / ".audit.lock").exists()  # the flock, as for any local folder
