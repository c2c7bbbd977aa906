"""Paths as users write them: `~` and `~name` read as the shell reads them."""

from __future__ import annotations

import os
from pathlib import Path


def expand_home(path: str | os.PathLike[str]) -> Path:
    """`path` with a leading `~` or `~name` expanded. pathlib's `expanduser` raises RuntimeError for a
    user this machine does not know (`~nosuchuser/model`: a traceback, audit 140); this leaves such a
    path as written, so the "not found" that names its key takes over, as the shell leaves it."""
    return Path(os.path.expanduser(path))
