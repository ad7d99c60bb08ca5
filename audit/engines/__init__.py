"""Executors of the stages' per-part functions: in this process (default) or on a Ray cluster.

A per-part function (`Stage.part` in `audit.stages`) does one metadata part's work: it reads
the part, computes, writes the part's files atomically under the workspace and returns a
`PartResult` naming them. It never touches `manifest.json`: the driver (the stage's `compute`)
records each part as its result arrives, so a worker killed mid-part leaves at most a
`.tmp-*` file, and the part is simply run again (Ray retries it) and rewritten whole.
Engines differ only in where the function runs, so both write the same bytes.

    >>> from audit import engines
    >>> engine = engines.get("ray", ray_address="auto")    # doctest: +SKIP

Ray is an optional extra (`pip install 'audit[ray]'`); only `audit.engines.ray` imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Protocol

from audit.engines.local import InProcess, PartResult
from audit.errors import AuditError
from audit.workspace import Part

__all__ = ["ENGINES", "Engine", "InProcess", "PartResult", "get", "progress"]

ENGINES = ("local", "ray")


class Engine(Protocol):
    name: str
    in_process: bool

    def map_parts(
        self, ref: str, ws_root: str | os.PathLike[str], parts: Sequence[Part], settings: dict
    ) -> Iterator[tuple[Part, PartResult]]:
        """Run `ref(ws_root, part, **settings)` for every part; yield results as they finish."""
        ...


def progress(
    engine: Engine, results: Iterator[tuple[Part, PartResult]], parts: Sequence[Part]
) -> Iterator[tuple[Part, PartResult]]:
    """A progress bar over parts for a remote engine (in this process, the per-part function
    draws its own bar in finer units, and two bars cannot be live at once)."""
    if engine.in_process:
        return results
    from audit.progress import track

    return track(results, total=len(parts), description=f"parts on {engine.name}")


def get(engine: str = "local", ray_address: str | None = None) -> Engine:
    """The executor named `engine`; `ray_address` is "auto", "ray://host:port" or None (a
    local Ray started for this process, or the one already running in it)."""
    if engine == "local":
        if ray_address:
            raise AuditError("--ray-address needs --engine ray.")
        return InProcess()
    if engine == "ray":
        try:
            from audit.engines.ray import RayEngine
        except ImportError as e:
            raise AuditError(
                f"--engine ray needs Ray ({e}). Install it with: pip install 'audit[ray]'"
            ) from e
        return RayEngine(ray_address)
    raise AuditError(f"unknown engine '{engine}'; choose one of: {', '.join(ENGINES)}.")
