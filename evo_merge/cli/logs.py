"""How the library's log lines reach the console: one line each on stderr, a warning marked
`warning: ` as the commands' own warnings are (`push`), an information line (a choice the engine
made for the user, a fit's time) bare. Without a handler, Python's last-resort one printed warnings
bare: `.../adapter_config.json: the adapter was trained on ...` read as output."""

from __future__ import annotations

import logging
import sys

LOGGER = "evo_merge"


class _ConsoleLines(logging.Handler):
    """Writes to the stderr of the moment (a test runner's, once swapped), not the one at setup."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            line = f"warning: {message}" if record.levelno >= logging.WARNING else message
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:  # a log line never stops a command
            self.handleError(record)


def print_log_lines() -> None:
    """Install the console handler on the package's logger once per process, and let its
    information lines through where nobody set its level (a command, not a library caller, gets
    them); records still propagate (a caller's own handlers, pytest's caplog, see them)."""
    logger = logging.getLogger(LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, _ConsoleLines) for h in logger.handlers):
        logger.addHandler(_ConsoleLines())
