"""One thread budget per process: from affinity and cgroup quota, --threads / AUDIT_THREADS,
applied to torch, faiss and BLAS/OpenMP, and to worker counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit import threads
from audit.errors import AuditError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore(monkeypatch):
    import torch

    before = torch.get_num_threads()
    for var in ("AUDIT_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    monkeypatch.setattr(threads, "_configured", None)
    yield
    torch.set_num_threads(before)
    from threadpoolctl import threadpool_limits

    threadpool_limits(before)


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_available_cpus_is_the_affinity_capped_by_the_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert threads.available_cpus(cgroup(tmp_path / "none", {})) == affinity
    v2_max = cgroup(tmp_path / "v2max", {"cpu.max": "max 100000\n"})
    assert threads.available_cpus(v2_max) == affinity
    one = cgroup(tmp_path / "v2one", {"cpu.max": "100000 100000\n"})
    assert threads.available_cpus(one) == 1
    # 1.5 CPUs of quota: two threads each busy 75% of the time, not one.
    half = cgroup(tmp_path / "v2half", {"cpu.max": "150000 100000\n"})
    assert threads.available_cpus(half) == min(affinity, 2)
    v1 = cgroup(
        tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    )
    assert threads.available_cpus(v1) == 1
    v1_unlimited = cgroup(
        tmp_path / "v1u", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    )
    assert threads.available_cpus(v1_unlimited) == affinity


def test_the_budget_comes_from_the_option_then_the_environment(monkeypatch):
    assert threads.resolve() == threads.available_cpus()
    monkeypatch.setenv("AUDIT_THREADS", "3")
    assert threads.resolve() == 3 and threads.resolve("auto") == 3
    assert threads.resolve(1) == 1 and threads.resolve("2") == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(AuditError, match="threads"):
            threads.resolve(bad)
    monkeypatch.setenv("AUDIT_THREADS", "lots")
    with pytest.raises(AuditError, match="AUDIT_THREADS"):
        threads.resolve()


def test_configure_applies_one_budget_to_torch_faiss_blas_and_workers():
    import faiss
    import torch
    from threadpoolctl import threadpool_info

    assert threads.configure(1) == 1
    assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    assert {p["num_threads"] for p in threadpool_info()} == {1}
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["AUDIT_THREADS"] == "1"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert threads.budget() == 1  # what hash and embed size their worker pools from
    # A Ray task given 1 CPU runs on one thread; no CPU resource falls back to the machine's.
    assert threads.configure_for_resources({"CPU": 1.0}) == 1
    assert threads.configure_for_resources({"CPU": 2.5}) == 2


def test_hash_workers_default_to_the_budget(tmp_path, monkeypatch):
    from audit import hashes, metadata

    real, seen = hashes._run_tasks, []

    def recording(tasks, workers):
        seen.append(workers)
        return real(tasks, workers)

    monkeypatch.setattr(hashes, "_run_tasks", recording)
    metadata.ingest(tmp_path / "ws", [ROOT / "audit" / "data" / "sample" / "shards"])
    threads.configure(1)
    assert hashes.compute(tmp_path / "ws", which=["phash"])["hashed"] == 300
    assert seen == [1]


def test_cli_threads_option_reaches_the_libraries_of_a_fresh_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_THREADS")}
    env.pop("OMP_WAIT_POLICY", None)
    code = (
        "from audit.cli import cli\n"
        "import sys\n"
        "sys.argv = ['audit', '--threads', '1', 'status', sys.argv[1]]\n"
        "try:\n    cli()\nexcept SystemExit:\n    pass\n"
        "import os, torch, faiss\n"
        "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads(), faiss.omp_get_max_threads())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.split()[-3:] == ["PASSIVE", "1", "1"], done.stderr
    result = CliRunner().invoke(
        __import__("audit.cli", fromlist=["cli"]).cli, ["--threads", "0", "status", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--threads" in result.output
