"""One exception type for mistakes a user can fix.

Core modules raise :class:`UserError` with a message that names the file, key or tensor at
fault; the CLI prints it on one line and exits with code 2, without a traceback. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
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
        if head != text and (head == str(path) or Path(head).exists()):
            raise
        exc.args = (f"{path}: {text}",)  # the same error (a `MissingModel` stays one), its file named
        raise exc from None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """An OSError raised inside names `path` when it names no file: a write that fails part-way
    (a full disk, a file-size limit) carries no file name, and `No space left on device` alone does
    not say where the command was writing."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def check_writable(out: Path, option: str | None = None) -> None:
    """`out` (a file or folder to write; `option` the flag that named it) can be created where it is
    meant to go: a read-only place, a path under a file or under /proc was found out only when the
    result was saved, after the work (measuring a pick at 7B is hours). Tried, not inferred: a
    temporary file is made in the folder that will hold it (or its staged copy), and removed."""
    named = f"{option} {out}" if option else f"cannot write {out}"  # as the flag's, or the write's, errors say
    where = next(p for p in Path(out).absolute().parents if p.exists())
    if not where.is_dir():
        raise UserError(f"{named}: {where} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise UserError(f"{named}: cannot write there ({why})" if option else f"{named}: {why}") from None


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a new temporary sibling, fsync, rename: readers see the old or the new file, never
    half; and a link planted at `path` (a run folder someone sent) is replaced, never written through."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # a missing or read-only folder: named as the file asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        with writing(path), os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a report from the user's group
        try:
            os.replace(tmp, path)
        except OSError as exc:  # named as the file asked for: the temporary one is removed below
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
