"""The progress bar long jobs show (synth, data tools, training data scans): done/total, rate, elapsed, ETA.

with item_progress(console, "convert", unit="rows") as (progress, bar):
    ... progress.advance(bar)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second so far."""

    def __init__(self, unit: str = "samples") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def item_progress(
    console: Console, description: str, *, total: int | None = None, unit: str = "samples"
) -> Iterator[tuple[Progress, TaskID]]:
    """A started progress bar with one task; `total=None` shows a count without a bar's end."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        yield progress, progress.add_task(description, total=total)
