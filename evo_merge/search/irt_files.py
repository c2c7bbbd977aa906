"""The IRT models a run fits and saves in its folder (`irt/<task>`), and the record of what it saved:
read by the runner, which refuses an edited or foreign model, and by `status`, which says so before
a `resume` is refused (audit 138). Torch-free, as `status` is."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from evo_merge.files import parse_json
from evo_merge.search.layout import IRT_FOLDER
from evo_merge.search.store import CampaignStore, Record

IRT_FILES_META = Record("irt_files", dict[str, str])  # task -> digest of irt/<task>'s files as this run saved them
RECORDED_IRT_FILES_SINCE = 10  # the defaults version of every run folder written since IRT_FILES_META was kept
IRT_FILES = ("model.json", "params.npz")


def files_digest(folder: Path) -> str:
    """Hex digest of what an IRT model folder's `IRT_FILES` hold (small: read whole): model.json's
    content, not its layout (reformatted, it is the same model), and each array of params.npz."""
    meta = parse_json((folder / IRT_FILES[0]).read_text())
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    with np.load(folder / IRT_FILES[1]) as arrays:
        for name in sorted(arrays.files):
            array = arrays[name]
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode() + np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def changed_irt_models(run_dir: Path, store: CampaignStore) -> dict[str, str]:
    """Task -> what is wrong with the IRT model the run saved for it (a file missing, unreadable, or
    other than saved); a folder removed whole is not listed: `resume` fits it again."""
    changed = {}
    for task, recorded in store.get_meta(IRT_FILES_META, {}).items():
        folder = run_dir / IRT_FOLDER / task
        if not folder.exists():
            continue
        if missing := [name for name in IRT_FILES if not (folder / name).is_file()]:
            changed[task] = f"{missing[0]} missing"
            continue
        try:
            same = files_digest(folder) == recorded
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # truncated, not JSON, not an npz
            changed[task] = "unreadable"
            continue
        if not same:
            changed[task] = "its files changed since the run saved them"
    return changed
