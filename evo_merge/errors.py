"""One exception type for mistakes a user can fix.

Core modules raise :class:`UserError` with a message that names the file, key or tensor at
fault; the CLI prints it on one line and exits with code 2, without a traceback. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a path, a config key, a tensor): fixable without code changes."""
