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


def rate(task: Task) -> tuple[float, float] | None:
    """(items per second, seconds) over the whole task so far, up to its last item once it is done: the
    one rate a bar and its command's summary line both show (rich's own speed is a moving window)."""
    seconds = task.finished_time if task.finished else task.elapsed
    if not seconds:
        return None
    return task.completed / seconds, seconds


class RateColumn(ProgressColumn):
    """Items per second so far (`rate`)."""

    def __init__(self, unit: str = "samples") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        measured = rate(task)
        text = "" if measured is None else f"{measured[0]:.1f} {self.unit}/s"
        return Text(text, style="progress.data.speed")


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
