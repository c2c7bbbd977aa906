"""Where an IRT model folder keeps its anchor sets (`anchors/<method>-<budget>.json`): the paths,
and their removal when the model they were chosen on is replaced. Apart from `anchors.py`, which
chooses the sets, because saving a model (`model.py`, which `anchors.py` imports) removes them."""

from __future__ import annotations

import os
from pathlib import Path

from evo_merge.errors import UserError
from evo_merge.irt.kinds import ANCHOR_METHODS


def refuse_link(folder: Path) -> None:
    """An IRT model folder's `anchors/` that is a link (a folder someone sent) would have its sets
    written, or the user's files deleted, wherever it points."""
    if folder.is_symlink():
        raise UserError(f"{folder}: is a link (to {os.readlink(folder)}); anchor sets are written and removed "
                        "there, so a link is refused: make it a folder")


def anchors_path(model_dir: str | Path, method: str, budget: int) -> Path:
    return Path(model_dir) / "anchors" / f"{method}-{budget}.json"


def remove_anchor_sets(model_dir: str | Path) -> None:
    """Delete the anchor sets stored with a model (`<method>-<budget>.json`), chosen on a model now
    replaced; any other file the user keeps in `anchors/` stays."""
    folder = Path(model_dir) / "anchors"
    refuse_link(folder)
    for path in folder.glob("*.json"):
        method, _, budget = path.stem.rpartition("-")
        if method in ANCHOR_METHODS and budget.isdigit():
            path.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
