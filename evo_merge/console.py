"""The console a command prints its results to (stdout; progress goes to stderr, `cli/progress.py`)."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

PIPE_WIDTH = 200  # a results table sent to a file or a pipe: as wide as it needs up to this, not folded at 80


def results_console(**options: Any) -> Console:
    """Names and paths are the user's, so text ('[/b]' is not markup). Where stdout is not a
    terminal (a log file, `| less`), rich would fold every table to 80 columns, cutting a row's
    numbers over lines: there it gets PIPE_WIDTH unless COLUMNS says otherwise."""
    console = Console(markup=False, **options)
    if not console.is_terminal and "width" not in options and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console
