"""The Ray engine writes what the in-process engine writes, and survives a killed worker.

A local Ray (2 CPUs, no dashboard, on 127.0.0.1) runs ingest -> hash -> embed -> index
(sharded, merged) -> optout -> dedup through the CLI with `--engine ray` on the bundled sample split into 3 parts; every
output the manifest records must have the same bytes (sha256) as the in-process run. Then a
worker process is SIGKILLed while it runs a part: Ray reruns the part and the stage ends with
every row exactly once.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit import pipeline
from audit.cli import cli
from audit.workspace import Workspace

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

SAMPLE = pipeline.sample_dir()
pytestmark = pytest.mark.skipif(not (SAMPLE / "shards").is_dir(), reason="bundled sample not built")
REGISTRIES = [str(p) for p in sorted((SAMPLE / "optout").glob("registry-*"))]
CACHE = str(SAMPLE / "optout" / "cache")
STAGES = ("hash", "embed", "index", "optout", "dedup")


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def ingest(root: Path, rows_per_part: int) -> Path:
    r = CliRunner().invoke(
        cli, ["ingest", str(root), str(SAMPLE / "shards"), "--rows-per-part", str(rows_per_part)]
    )
    assert r.exit_code == 0, r.output
    return root


def describe(root: Path, *engine: str) -> None:
    registry = [a for p in REGISTRIES for a in ("--registry", p)]
    pages = ["--report-dir", str(root.parent / f"{root.name}-reports")]
    for args in (
        ["hash", str(root), *engine],
        ["embed", str(root), *engine],
        ["index", str(root), "--kind", "ivf", *engine],  # IVF: trained once, shards merged
        ["optout", str(root), *registry, "--cache", CACHE, *pages, *engine],
        ["dedup", str(root), *pages],
    ):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output


def outputs(root: Path, stage: str) -> list[tuple[str, str]]:
    """(path, sha256) of everything the manifest says the stage wrote, in part order."""
    rec = Workspace.open(root).stage(stage)
    assert rec is not None and rec["status"] == "done", stage
    found = []
    for key in sorted(rec.get("parts", {}), key=int):
        found += [(o["path"], o["sha256"]) for o in rec["parts"][key]["outputs"]]
    return found + [(o["path"], o["sha256"]) for o in rec.get("outputs", [])]


def test_ray_artefacts_equal_in_process(cluster, tmp_path: Path):
    local = ingest(tmp_path / "local", 100)
    remote = ingest(tmp_path / "remote", 100)
    assert outputs(local, "ingest") == outputs(remote, "ingest")
    describe(local)
    describe(remote, "--engine", "ray")
    for stage in STAGES:
        mine, theirs = outputs(local, stage), outputs(remote, stage)
        assert mine and mine == theirs, f"{stage}: ray artefacts differ from in-process"
        assert (
            Workspace.open(local).stage(stage)["params"]
            == Workspace.open(remote).stage(stage)["params"]
        )
    assert len(Workspace.open(remote).stage("hash")["parts"]) == 3
    s = Workspace.open(remote).status(verify=True)
    assert all(s[name]["status"] == "done" for name in ("ingest", *STAGES))


def _part_runners() -> list[psutil.Process]:
    """Ray worker processes busy with a part (Ray titles a worker after the task it runs)."""
    busy = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::_run_part"):
            busy.append(proc)
    return busy


def test_a_worker_killed_mid_part_is_retried_without_duplicates_or_gaps(cluster, tmp_path: Path):
    from audit import hashes

    root = ingest(tmp_path / "killed", 50)
    shutil.copytree(root, tmp_path / "reference")
    hashes.compute(tmp_path / "reference", workers=1, fast_decode=False)
    killed: list[int] = []
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            hashes.compute(root, fast_decode=False, engine="ray")
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(e)

    driver = threading.Thread(target=drive)
    driver.start()
    deadline = time.monotonic() + 60
    while not killed and driver.is_alive() and time.monotonic() < deadline:
        for proc in _part_runners():
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
            break
        time.sleep(0.01)
    driver.join(timeout=120)
    assert not errors, errors
    assert killed, "no worker was caught running a part"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    # no gaps, no duplicates: every row once, and the same bytes as the undisturbed run
    con = Workspace.open(root).connect()
    n, distinct, lo, hi = con.execute(
        "SELECT count(*), count(DISTINCT row_id), min(row_id), max(row_id) FROM hashes"
    ).fetchone()
    assert (n, distinct, lo, hi) == (300, 300, 0, 299)
    assert sorted(Workspace.open(root).stage("hash")["parts"], key=int) == [
        str(i) for i in range(6)
    ]
    assert outputs(root, "hash") == outputs(tmp_path / "reference", "hash")


def test_readme_cost_model_is_what_the_bench_recorded():
    """README's LAION-5B table is the one `python -m audit.bench engines` renders from the
    JSON it wrote (it rewrites the block itself; a hand edit or a stale copy fails here)."""
    import json
    import re

    from audit.bench import engines

    root = Path(__file__).resolve().parent.parent
    recorded = json.loads((root / "reports/bench/engines.json").read_text())
    readme = (root / "README.md").read_text("utf-8")
    found = re.search(
        re.escape(engines.README_BEGIN) + r"\n(.*)\n" + re.escape(engines.README_END), readme, re.S
    )
    assert found, "README has no engines cost-model block"
    assert found.group(1) == engines.cost_model_markdown(recorded)
    # and every stage the bench times is in the model, with the keys the README names
    for stage in (*engines.STAGES, "embed_vit_b_32_image_tower"):
        assert {"rows_per_cpu_second", "core_hours", "machines_64_cpu_x_hours"} <= set(
            recorded["laion_5b"][stage]
        )


def test_bench_summary_is_medians_and_ratios_of_the_runs(tmp_path: Path):
    """`_summarise` on made-up runs: medians, overheads and efficiency from those numbers."""
    from audit.bench import engines

    def rep(scale: float) -> dict[str, tuple[float, float]]:
        return {s: (scale * (i + 1), scale * (i + 1) / 2) for i, s in enumerate(engines.STAGES)}

    runs = {
        "in-process": [rep(1.0), rep(3.0), rep(1.2)],  # median 1.2: the outlier 3.0 is ignored
        "ray-1": [rep(1.32)] * 3,
        "ray-2": [rep(0.66)] * 3,
    }
    load = {c: [1.0, 1.0] for c, _ in engines.CONFIGS}
    r = engines._summarise(100, 3, runs, {"ray-1": 2.0}, {}, load, True, 10.0, tmp_path)
    assert r["stages"]["hash"]["wall_s"]["in-process"] == 1.2
    assert r["overhead_ray_1_cpu"] == round(1.32 / 1.2 - 1, 3)
    assert r["scaling_efficiency_2_cpu"] == 1.0
    assert r["stages"]["embed"]["cpu_per_row_ms"]["in-process"] == round(1000 * 1.2 / 100, 3)
    assert r["laion_5b"]["hash"]["rows_per_cpu_second"] == round(100 / 0.6, 1)
    assert "ingest" not in r["laion_5b"]  # no ingest.json in tmp_path
    assert "cannot give more" in r["scaling_note"] or r["cpus_on_machine"] > 2
