"""Rich progress helpers shared by commands: bars on stderr, so stdout keeps only results (a user
who sends stdout to a log still sees the bars, and the log holds no bar frames)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def _bars(**options) -> Progress:
    return Progress(*_columns(), console=Console(stderr=True), **options)


def _columns() -> tuple:
    return TextColumn("{task.description:<28}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()


def track(items: Iterable[T], total: int, description: str = "working") -> Iterator[T]:
    """Iterate with a progress bar on stderr (count and ETA)."""
    with _bars(transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


class StageBars:
    """One rich progress bar per stage (calibration, each generation, the front) with ETA."""

    def __init__(self):
        self.progress = _bars()
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
