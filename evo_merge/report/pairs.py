"""Which pairs of tasks the report's front figures draw (pareto.png's panels, report.html's figures)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

MAX_PAIRS = 6  # every pair of the first four tasks


def task_pairs(tasks: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair, so no task is left off the picture (with three tasks the third was), up to
    MAX_PAIRS; a task alone against itself."""
    return list(itertools.combinations(tasks, 2))[:MAX_PAIRS] if len(tasks) > 1 else [(tasks[0], tasks[0])]
