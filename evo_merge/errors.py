"""One exception type for mistakes a user can fix.

Core modules raise :class:`UserError` with a message that names the file, key or tensor at
fault; the CLI prints it on one line and exits with code 2, without a traceback. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (a path, a config key, a tensor): fixable without code changes."""


class MissingModel(UserError):
    """A model a config names is neither a local path nor a Hub id: moved, perhaps, which a run
    folder's own campaign says how to mend."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'ties'?)` where a known name is close to `name` (`tie`), else empty."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line for a one-line error; its type when it has none
    (lm-eval raises a bare `TypeError` for some configs)."""
    return message_line(str(exc), type(exc).__name__)


def message_line(text: str | None, empty: str = "no message") -> str:
    """A stored or raised message's first line, `empty` when it has none (a bare `RuntimeError()`
    while merging is stored as a failure with an empty message)."""
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else empty


def described(exc: BaseException) -> str:
    """An exception from a library we call with the user's input, as `Type: first line` (`Type` alone
    when it has no message): the type says what went wrong where the message is terse (KeyError: 'x')."""
    line = first_line(exc)
    return line if line == type(exc).__name__ else f"{type(exc).__name__}: {line}"


@contextmanager
def naming_file(path: str | Path) -> Iterator[None]:
    """User errors raised inside start with `path` (the config they are about), unless they already
    start with a path that exists: a key alone (`models.1: ...`) does not say which file."""
    try:
        yield
    except UserError as exc:
        text = str(exc)
        head = re.sub(r":\d+:\d+$", "", text.split(": ", 1)[0])  # a YAML error's `FILE:LINE:COL`
        if head != text and (head == str(path) or _exists(head)):
            raise
        exc.args = (f"{path}: {text}",)  # the same error (a `MissingModel` stays one), its file named
        raise exc from None


def _exists(text: str) -> bool:
    """Whether `text` names an existing file; text no file could be named by (longer than the system
    takes, holding a NUL) names none, where `Path.exists` raised and lost the error it was asked about."""
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False
