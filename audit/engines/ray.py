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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ray

from audit import stages
from audit.engines.local import PartResult
from audit.errors import AuditError
from audit.workspace import Part

MAX_RETRIES = 3


@ray.remote(max_retries=MAX_RETRIES, num_cpus=1)
def _run_part(ref: str, ws_root: str, part: Part, settings: dict[str, Any]) -> PartResult:
    return stages.load(ref)(ws_root, part, **settings)  # type: ignore[no-any-return]


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
        root = str(Path(ws_root).resolve())
        pending = {_run_part.remote(ref, root, p, settings): p for p in parts}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref_done in done:
                part = pending.pop(ref_done)
                yield part, ray.get(ref_done)
