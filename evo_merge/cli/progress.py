"""Rich progress helpers shared by commands: bars on stderr, so stdout keeps only results (a user
who sends stdout to a log still sees the bars, and the log holds no bar frames). Where stderr is
not a terminal (`nohup ... 2> log`, a batch job) rich draws nothing until the bars stop, so a
campaign of hours said nothing until it ended: there each stage is a line as it advances instead,
and a line every few minutes while nothing advances (a task waiting on a server, a deadlocked
plugin), so a log tells a stalled run from a finished or killed one. Results go to stdout
(`evo_merge.console.results_console`)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from evo_merge.progress import hms
from evo_merge.search.evaluator import JOB_PARTS

PER_CANDIDATE = tuple(JOB_PARTS.values())  # the suffixes of the stages that follow one candidate at a time

T = TypeVar("T")


def live(console: Console) -> bool:
    """Whether bars redraw on `console`: a real terminal that is not `TERM=dumb` (where rich draws no
    bars, and a run said nothing until it ended). `FORCE_COLOR`, set in many CI systems, makes rich
    take a log file for a terminal, which then filled with bar frames (hundreds of KB a minute)."""
    try:
        tty = console.file.isatty()
    except (AttributeError, ValueError):  # closed, or no file at all
        tty = False
    return tty and console.is_interactive


def _bars(**options) -> Progress:
    console = Console(stderr=True)
    return Progress(*_columns(), console=console, disable=not live(console), **options)


@contextmanager
def _shown(progress: Progress) -> Iterator[Progress]:
    """The bars drawn while inside; disabled ones not started at all (their stop prints a blank line)."""
    if progress.disable:
        yield progress
        return
    with progress:
        yield progress


# what StageLines prints: a stage's count with its time, or that nothing moved for a while
STAGE_LINE = re.compile(r"^.+: \d+/\d+ (in \d+:\d\d:\d\d|\(\d+:\d\d:\d\d\)|"
                        r"\(nothing new for \d+:\d\d:\d\d, still working\))$")


class StageLines:
    """A stage's progress as plain lines, for a console that is not a terminal: when it advances,
    at most every `every` seconds, and when it ends (with its time). While `watching`, a stage
    that has not moved for `quiet` seconds is a line too, again every `quiet` seconds: one
    candidate's items at 7B take minutes, so the line says only that nothing moved."""

    def __init__(self, console: Console, every: float = 30.0, quiet: float = 300.0):
        self.console, self.every, self.quiet = console, every, quiet
        self.live = live(console)  # asked once: every progress call of a run comes here
        self.times: dict[str, tuple[float, float]] = {}  # stage -> (started, last line)
        self.ended: set[str] = set()
        self.open: dict[str, tuple[int, int]] = {}  # stages not ended -> (done, total), the last told last
        self.heard = self.said_quiet = time.monotonic()  # its last call; the last line saying nothing moved
        self.lock = threading.Lock()  # the watcher reads what the calls write

    def __call__(self, stage: str, done: int, total: int) -> None:
        # a stage with nothing to do (a finished run's resume: "race: 0/0") is not a line
        if self.live or stage in self.ended or total == 0:
            return
        with self.lock:
            self._told(stage, done, total)

    def _told(self, stage: str, done: int, total: int) -> None:
        now = self.heard = time.monotonic()
        self.open.pop(stage, None)
        if done < total:
            self.open[stage] = (done, total)
        else:  # with its candidates' parts (one that failed partway never ended)
            for suffix in PER_CANDIDATE:
                self.open.pop(stage + suffix, None)
        # one candidate's merge or items, again for each: no line when they end, and a clock of their own
        per_candidate = stage.endswith(PER_CANDIDATE)
        if per_candidate and done == 0:  # a candidate starts (the one before may have failed partway)
            self.times[stage] = (now, now)
        started, last = self.times.setdefault(stage, (now, now))
        if done >= total:
            if per_candidate:
                del self.times[stage]
            else:
                self._say(f"{stage}: {done}/{total} in {hms(now - started)}")
                self.ended.add(stage)
        elif done and now - last >= self.every:
            self._say(f"{stage}: {done}/{total} ({hms(now - started)})")
            self.times[stage] = (started, now)

    def check(self) -> None:
        """Say the stage last told if nothing has moved for `quiet` seconds (and not said so within them)."""
        with self.lock:
            now = time.monotonic()
            if not self.open or now - max(self.heard, self.said_quiet) < self.quiet:
                return
            stage, (done, total) = next(reversed(self.open.items()))
            self._say(f"{stage}: {done}/{total} (nothing new for {hms(now - self.heard)}, still working)")
            self.said_quiet = now

    @contextmanager
    def watching(self) -> Iterator[StageLines]:
        """Check for a quiet stage from a background thread while inside (not on a terminal, where
        the bars' clocks run)."""
        if self.live:
            yield self
            return
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(min(self.quiet / 4, 30.0)):
                self.check()

        watcher = threading.Thread(target=watch, name="evo-merge stage watcher", daemon=True)
        watcher.start()
        try:
            yield self
        finally:
            stop.set()
            watcher.join()

    def _say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)


def _columns() -> tuple:
    # the elapsed clock runs while a bar stands still (a stalled task shows as a clock, not a frozen line)
    return (TextColumn("{task.description:<28}", markup=False), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn())


def track(items: Iterable[T], total: int, description: str = "working") -> Iterator[T]:
    """Iterate with a progress bar on stderr (count and ETA)."""
    with _shown(_bars(transient=True)) as progress:
        task = progress.add_task(description, total=total)
        with StageLines(progress.console).watching() as lines:
            lines(description, 0, total)
            for done, item in enumerate(items, 1):
                yield item
                progress.advance(task)
                lines(description, done, total)


class StageBars:
    """One rich progress bar per stage (calibration, each generation, the front) with ETA."""

    def __init__(self):
        self.progress = _bars()
        self.lines = StageLines(self.progress.console)
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        elif stage.endswith(PER_CANDIDATE) and done <= self._completed(stage):
            # the next candidate's (a count never goes back within one): rich keeps a task it saw
            # finish finished, so the bar said 0:00:00 remaining for every candidate after the first
            self.progress.reset(self.tasks[stage], total=total, completed=done)
        self.progress.update(self.tasks[stage], completed=done, total=total)
        if done >= total:  # its candidates' merge and items bars go with it
            for suffix in PER_CANDIDATE:
                if stage + suffix in self.tasks:
                    self.progress.remove_task(self.tasks.pop(stage + suffix))
        self.lines(stage, done, total)

    def _completed(self, stage: str) -> float:
        return next(task.completed for task in self.progress.tasks if task.id == self.tasks[stage])

    def __enter__(self):
        if not self.progress.disable:
            self.progress.start()
        self._watching = self.lines.watching()
        self._watching.__enter__()
        return self

    def __exit__(self, *exc):
        self._watching.__exit__(*exc)
        if not self.progress.disable:
            self.progress.stop()
