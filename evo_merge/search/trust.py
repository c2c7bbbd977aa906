"""Whose run folder this is. A campaign's tasks may be code (a `module:attr` plugin, an lm-eval
task file whose YAML names Python beside it), and a run folder carries its campaign.yaml: resuming
or exporting a folder received from someone else would run the code it names. So a folder a run
opens here is marked with a keyed digest of the tasks its campaign.yaml names (the settings a
resume may change, such as the placement or the scheduler, are not part of it), under a key only
this user holds (`key_file`); `resume` and `export` of a folder without this user's mark run no
task code until the user says so (`--trust-tasks`), as a folder's scheduler address and tracking
servers need the user's word. Someone else's folder cannot carry the mark: they do not have the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from evo_merge.config import TaskSpec
from evo_merge.search.store import CampaignStore, Record

TRUST_META = Record("trusted_tasks", str)  # HMAC of the campaign's tasks' digest under this user's key
KEY_BYTES = 32


def key_file() -> Path:
    """This user's key: `$XDG_CONFIG_HOME/evo-merge/run-key` (`~/.config` without it)."""
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "evo-merge" / "run-key"


def _key(create: bool) -> bytes | None:
    """The key, made (readable by this user alone) when `create`; None where there is none."""
    path = key_file()
    try:
        key = path.read_bytes()
        if len(key) == KEY_BYTES:
            return key
    except OSError:
        pass
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    os.replace(tmp, path)
    return key


def tasks_digest(tasks: Sequence[TaskSpec]) -> str:
    """What the mark covers: the tasks as the campaign names them (strings, names, options)."""
    text = json.dumps([task.model_dump(mode="json") for task in tasks], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _mark(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def mark_trusted(store: CampaignStore, tasks: Sequence[TaskSpec]) -> None:
    """Mark the folder as run here with these tasks."""
    key = _key(create=True)
    if store.get_meta(TRUST_META) != (mark := _mark(key, tasks_digest(tasks))):
        store.set_meta(TRUST_META, mark)


def is_trusted(store: CampaignStore, tasks: Sequence[TaskSpec]) -> bool:
    """Whether this user's key marked the folder with these tasks."""
    key, recorded = _key(create=False), store.get_meta(TRUST_META)
    return key is not None and recorded is not None and hmac.compare_digest(recorded, _mark(key, tasks_digest(tasks)))
