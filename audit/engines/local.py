"""The in-process executor, and `PartResult`, what every per-part function returns."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit import stages
from audit.workspace import Output, Part


@dataclass(frozen=True)
class PartResult:
    """What a per-part function wrote (paths relative to the workspace) and its counts."""

    outputs: list[Output]
    info: dict[str, Any] = field(default_factory=dict)


class InProcess:
    """Every part in this process, in order (the stage may still use a local process pool)."""

    name = "local"
    in_process = True

    def map_parts(
        self, ref: str, ws_root: str | os.PathLike[str], parts: Sequence[Part], settings: dict
    ) -> Iterator[tuple[Part, PartResult]]:
        fn = stages.load(ref)
        for part in parts:
            yield part, fn(str(ws_root), part, **settings)
