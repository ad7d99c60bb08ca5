"""One CPU budget for the whole process, sized from the CPUs this process may actually use.

Left alone, torch, faiss, OpenBLAS and every OpenMP runtime each start one thread per core
of the *machine*, and a process pool adds its workers on top. On a shared 2-core machine (or
a cluster node whose cgroup gives a job one core) that oversubscribes the cores, and
libgomp's default wait policy makes it much worse: a thread that reaches a barrier first
spins, burning the core that the thread it waits for needs. Measured here with one competing
busy loop on 2 cores, a training step took 4.5-22 s with the defaults and 0.85-1.1 s with
passive waiting (README, "Speed on a busy machine").

So `configure()`:
- takes the budget from `--threads` / `AUDIT_THREADS`, else `available_cpus()`: the CPU
  affinity mask (`os.sched_getaffinity`, which taskset, cpusets and Slurm set) capped by the
  cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`, as in Docker's
  `--cpus` and Kubernetes limits);
- sets `OMP_WAIT_POLICY=PASSIVE` and the `*_NUM_THREADS` variables for libraries not yet
  loaded (and for worker processes, which inherit the environment), unless the user set them;
- applies the budget to torch (intra- and inter-op), faiss and, through threadpoolctl, every
  BLAS / OpenMP runtime already loaded.

Stages ask `budget()` for their worker-process counts. Under Ray, each task calls
`configure_for_resources(ray.get_runtime_context().get_assigned_resources())` so that a
task given 1 CPU runs on 1 thread.

>>> from audit import threads
>>> threads.configure(2)  # doctest: +SKIP
2
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from audit.errors import AuditError

ENV = "AUDIT_THREADS"
# Read by the OpenMP / BLAS runtimes when they load; setdefault, so a user's choice wins.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_CGROUP = Path("/sys/fs/cgroup")

_configured: int | None = None


def _cgroup_quota(root: Path = _CGROUP) -> float | None:
    """CPUs allowed by the cgroup quota (v2, then v1), or None when there is no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(cgroup_root: Path = _CGROUP) -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup quota (>= 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))  # 1.5 CPUs of quota: 2 threads, each 75% busy
    return max(1, cpus)


def _parse(value: str | int | None, where: str) -> int | None:
    if value is None or value == "" or value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise AuditError(
            f"{where} must be a whole number of threads >= 1 or 'auto' (got {value!r})."
        )
    return n


def resolve(threads: str | int | None = None) -> int:
    """The budget: `threads` if given, else $AUDIT_THREADS, else `available_cpus()`."""
    n = _parse(threads, "--threads")
    if n is None:
        n = _parse(os.environ.get(ENV), f"${ENV}")
    return n if n is not None else available_cpus()


def budget() -> int:
    """The budget in force (`configure()`'s, or what it would choose); for worker counts."""
    return _configured if _configured is not None else resolve()


def configure(threads: str | int | None = None) -> int:
    """Apply one thread budget to this process and the processes it starts; returns it.

    Call it early (before torch or faiss run anything): the OpenMP wait policy is read when
    the runtime loads. Calling it again re-applies a new budget to the loaded libraries.
    """
    global _configured
    n = resolve(threads)
    explicit = _parse(threads, "--threads") is not None or bool(os.environ.get(ENV))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for var in _THREAD_VARS:
        if explicit or var not in os.environ:
            os.environ[var] = str(n)
    os.environ[ENV] = str(n)  # worker processes and subprocesses inherit the same budget
    _apply_to_loaded(n)
    _configured = n
    return n


def configure_for_resources(resources: dict[str, float]) -> int:
    """`configure()` from a scheduler's resources, e.g. Ray's `get_assigned_resources()`.

    >>> configure_for_resources({"CPU": 1.0})  # doctest: +SKIP
    1
    """
    cpus = resources.get("CPU")
    if not cpus or cpus <= 0:
        return configure()
    return configure(max(1, math.floor(cpus)))


def _apply_to_loaded(n: int) -> None:
    # Only libraries already imported: importing torch or faiss here would make every
    # command pay for them.
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # settable once, before any inter-op work; keep what it has
            pass
    if "faiss" in sys.modules:
        import faiss

        faiss.omp_set_num_threads(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
