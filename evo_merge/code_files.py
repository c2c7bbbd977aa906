"""The files holding a user's own code, and a digest of their text: a run folder records the code
of the merge methods and plugin tasks of the user's own it runs, to see it change between the run
and its resume (`merge.registry.method_code`, `tasks.registry.task_code`)."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def source_file(obj: Any) -> str | None:
    """The file defining `obj` (a function, class or module); None where no file holds it (a
    built-in, a notebook cell's `__main__`)."""
    try:
        return inspect.getsourcefile(obj)
    except TypeError:
        return None


def files_digest(files: Iterable[str]) -> str | None:
    """A digest of the files' text, in the order of their names (16 hex digits; of one file, the
    first 16 of its SHA-256); None where one cannot be read."""
    digest = hashlib.sha256()
    for file in sorted(files):
        try:
            digest.update(Path(file).read_bytes())
        except OSError:
            return None
    return digest.hexdigest()[:16]
