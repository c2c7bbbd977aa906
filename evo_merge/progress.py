"""How long work says how far it has come: a callback `(stage, done, total)`.

Work on every floor (a campaign's stages, a zoo's training, `irt validate`'s fits) reports
through it and never draws; a command draws it (`cli/progress.py`: a bar on a terminal, a line
as a stage advances in a log, where rich alone would print nothing until the work ended).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: silent."""


def stage_track(progress: Progress, stage: str) -> Callable[[Iterable, int], Iterator]:
    """A file merge's `track` (items, total) reporting to `progress` as `stage`: an export's
    tensors get a bar like the campaign's stages (minutes at 7B)."""
    def track(items: Iterable, total: int) -> Iterator:
        progress(stage, 0, total)
        for done, item in enumerate(items, 1):
            yield item
            progress(stage, done, total)

    return track


def hms(seconds: float) -> str:
    """`1:02:03`: a duration as the progress lines and `status` write it (a clock set back reads 0:00:00)."""
    minutes, seconds = divmod(int(max(seconds, 0)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
