"""The Ray executor: each metadata part is one Ray task, retried if its worker dies.

Tasks receive the workspace path and the part, read their inputs and write their outputs
there themselves (so the workspace must be on storage every node sees: a local path on one
machine, NFS or another shared mount on a cluster), and return only the small `PartResult`.
A task killed mid-part (node lost, OOM, SIGKILL) is rerun by Ray up to `MAX_RETRIES` times;
its part files are written to temporary names and renamed, so the rerun replaces whatever a
dead attempt may have finished, and the driver records each part exactly once.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from audit import stages, threads
from audit.engines.local import PartResult
from audit.errors import AuditError
from audit.workspace import Part, is_url

MAX_RETRIES = 3


@dataclass
class Usage:
    """What the tasks this driver started used: finished tasks and their CPU seconds (the
    worker process's own, and its finished child processes'). The driver's own CPU time is
    not in it; `audit.bench.engines` adds `time.process_time()` for that."""

    tasks: int = 0
    cpu_seconds: float = 0.0


USAGE = Usage()  # for this driver process, across stages


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@ray.remote(max_retries=MAX_RETRIES, num_cpus=1)
def _run_part(
    ref: str, ws_root: str, part: Part, settings: dict[str, Any]
) -> tuple[PartResult, float]:
    # one thread per CPU Ray gave the task: torch, faiss and BLAS would otherwise start one
    # per core of the node and spin against the node's other tasks
    threads.configure_for_resources(ray.get_runtime_context().get_assigned_resources())
    started = _cpu_seconds()
    result = stages.load(ref)(ws_root, part, **settings)
    return result, _cpu_seconds() - started


class RayEngine:
    """Parts as Ray tasks, one CPU each, on the cluster at `address` (None: a local one)."""

    name = "ray"
    in_process = False

    def __init__(self, address: str | None = None):
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise AuditError(
                    f"cannot reach a Ray cluster at {address or 'a new local one'} ({e}). Start "
                    "one with `ray start --head`, or pass --ray-address ray://HOST:10001."
                ) from e

    def map_parts(
        self, ref: str, ws_root: str | os.PathLike[str], parts: Sequence[Part], settings: dict
    ) -> Iterator[tuple[Part, PartResult]]:
        stages.load(ref)  # fail here, in the driver, if the function does not exist
        # absolute: a worker's working directory is not the driver's (on a cluster the shared
        # mount has the same path on every node)
        # a URL workspace is handed over unchanged: workers open it through fsspec
        root = str(ws_root) if is_url(ws_root) else str(Path(ws_root).resolve())
        pending = {_run_part.remote(ref, root, p, settings): p for p in parts}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref_done in done:
                part = pending.pop(ref_done)
                result, cpu = ray.get(ref_done)
                USAGE.tasks += 1
                USAGE.cpu_seconds += cpu
                yield part, result
