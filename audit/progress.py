"""Progress bars for long work (rich), quiet when output is not a terminal or in tests.

Bars count what the user thinks in (images, rows), not internal units (chunks, batches): a
caller iterating over chunks passes `weight`, the number of units each item stands for, and
the bar shows done/total, the rate per second and the time remaining in those units.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("AUDIT_NO_PROGRESS")


def track(
    items: Iterable[T],
    total: int | None = None,
    description: str = "working",
    unit: str = "items",
    weight: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """Iterate `items`, drawing a progress bar on stderr when that is a terminal.

    `total` and the counts are in `unit`s; each item advances the bar by `weight(item)`
    (default 1). With no `total` (not known in advance) the bar shows the count and the rate.
    """
    if not enabled():
        yield from items
        return
    from rich.console import Console

    with _progress(Console(stderr=True), unit) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task, weight(item) if weight is not None else 1)


def _progress(console: Any, unit: str) -> Any:
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task: Any) -> Text:
            total = "?" if task.total is None else f"{int(task.total):,}"
            return Text(f"{int(task.completed):,}/{total} {unit}")

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            # the mean rate since the start: rich's windowed speed jumps wildly on the first chunks
            if not task.elapsed or not task.completed:
                return Text("")
            return Text(f"{task.completed / task.elapsed:,.0f} {unit}/s")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        Count(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
