"""One exception type for mistakes a user can fix.

Core modules raise :class:`UserError` with a message that names the file, key or tensor at
fault; the CLI prints it on one line and exits with code 2, without a traceback. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a path, a config key, a tensor): fixable without code changes."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line for a one-line error; its type when it has none
    (lm-eval raises a bare `TypeError` for some configs)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
