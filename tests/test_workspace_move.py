"""A workspace moved to another folder (another machine, a shared mount) still reads: the
manifest holds no path of where it was, its stages stay done, and they resume instead of
starting again. Inputs stay where they are (on a cluster: the same shared mount)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audit import hashes, metadata, optouts, pipeline, sql
from audit.checks import duplicates
from audit.workspace import Workspace

SAMPLE = pipeline.sample_dir()
pytestmark = pytest.mark.skipif(not (SAMPLE / "shards").is_dir(), reason="bundled sample not built")


def test_a_moved_workspace_still_reads_and_resumes(tmp_path: Path):
    old = tmp_path / "here" / "ws"
    metadata.ingest(old, [SAMPLE / "shards"], rows_per_part=100)
    hashes.compute(old, workers=1)
    optouts.compute(old, registry=sorted((SAMPLE / "optout").glob("registry-*")))
    optouts.filter_dataset(old, out=old / "consented.parquet")

    new = tmp_path / "there" / "moved"
    new.parent.mkdir()
    shutil.move(old, new)
    assert str(old) not in (new / "manifest.json").read_text("utf-8")

    ws = Workspace.open(new)
    state = ws.status(verify=True)
    assert {k: v["status"] for k, v in state.items()} == {
        "ingest": "done",
        "hash": "done",
        "optout": "done",
        "filter": "done",
    }
    assert ws.stage("filter")["params"]["out"] == "consented.parquet"
    assert sql.query(new, "SELECT count(*) AS n FROM hashes").to_pylist() == [{"n": 300}]
    assert hashes.compute(new, workers=1)["resumed_parts"] == 3  # nothing hashed again
    assert duplicates.find(new)["rows"] == 300  # a downstream stage reads the moved files
