"""Whose run folder this is. A campaign's tasks may be code (a `module:attr` plugin, an lm-eval
task file whose YAML names Python beside it), and a run folder carries its campaign.yaml: resuming
or exporting a folder received from someone else would run the code it names. So a folder whose
campaign names task code is marked, as soon as a run binds it here, with a keyed digest of those
tasks (the settings a resume may change, such as the placement or the scheduler, are not part of
it), under a key only this user holds (`key_file`); `resume`, `export` and `plan` of a folder
without this user's mark run no task code until the user says so (`--trust-tasks`), as a folder's
scheduler address and tracking servers need the user's word. Someone else's folder cannot carry
the mark: they do not have the key. A folder keeps the marks of every user who ran it. Its
trackers are marked the same way (`mark_tracking`): a run you started, or resumed with
`--tracking`, reports where its campaign.yaml says without being told again; and so is its score
cache (`mark_score_cache`): a folder someone sent names the file a resume reads scores from and
writes into.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from evo_merge.config import TaskSpec, TrackingSpec
from evo_merge.errors import UserError
from evo_merge.search.store import CampaignStore, Record
from evo_merge.tasks.registry import code_it_runs, code_location

TRUST_META = Record("trusted_tasks", list[str])  # HMACs of the campaign's tasks, one per user's key
TRACKING_TRUST_META = Record("trusted_tracking", list[str])  # HMACs of its trackers, one per user's key
SCORE_CACHE_TRUST_META = Record("trusted_score_cache", list[str])  # HMACs of its cache's path, one per user's key
KEY_BYTES = 32
MARKS_KEPT = 16  # the latest users' marks: a folder on a shared disk, or one user's several machines

log = logging.getLogger(__name__)


def key_file() -> Path:
    """This user's key: `$XDG_CONFIG_HOME/evo-merge/run-key` (`~/.config` without it, or where it is
    relative, which the XDG rules say to ignore: a key in the working directory is another key in
    every folder a command runs from)."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    if os.path.isabs(config):
        return Path(config) / "evo-merge" / "run-key"
    try:
        home = Path.home()
    except RuntimeError as exc:  # no HOME and no passwd entry (a container run as an arbitrary uid): no key
        raise OSError(f"no home folder to keep evo-merge's run key in ({exc}); set HOME or XDG_CONFIG_HOME") from None
    return home / ".config" / "evo-merge" / "run-key"


class DamagedKey(OSError):
    """The key file holds something other than a key: said with the way out, never taken for no key."""


def _read_key(path: Path) -> bytes | None:
    try:
        key = path.read_bytes()
    except OSError:
        return None
    if len(key) != KEY_BYTES:
        raise DamagedKey(f"{path} holds {len(key)} bytes, not a key of {KEY_BYTES}; remove it and a new key is made")
    return key


def _make_key(path: Path) -> bytes:
    """A new key, readable by this user alone, unless another process made one first (then its):
    two first runs at once must not mark folders with keys one of which is lost."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(KEY_BYTES))
    try:
        os.link(tmp, path)  # fails where a key is there: the first one made stays
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    key = _read_key(path)
    if key is None:
        raise OSError(f"{path} could not be read back")
    return key


def tasks_digest(tasks: Sequence[TaskSpec]) -> str:
    """What the mark covers: the tasks as the campaign names them (strings, names, options), and
    where the code each runs is read from (`code_location`): a mark copied into another folder
    whose task of the same name is read from elsewhere (a folder it ships) does not pass."""
    text = json.dumps([{**task.model_dump(mode="json"), "code": code_location(task.task)} for task in tasks],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def tracking_digest(tracking: TrackingSpec) -> str:
    """What a tracking mark covers: every tracker setting (where results go, and as whom)."""
    return hashlib.sha256(json.dumps(tracking.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def code_task(tasks: Sequence[TaskSpec]) -> tuple[int, str] | None:
    """(index, what it runs) of the first task that runs code of its own (`code_it_runs`); None."""
    return next(((i, reason) for i, t in enumerate(tasks) if (reason := code_it_runs(t.task))), None)


def mark_trusted(store: CampaignStore, tasks: Sequence[TaskSpec]) -> None:
    """Mark the folder as run here with these tasks, where they run code of their own. A key that
    cannot be written (a read-only home) is said, and the folder goes unmarked: its resume then
    needs --trust-tasks, as a received one does. A damaged key file is refused with the way out,
    as `is_trusted` refuses it: said as a key that cannot be kept, the run went on unmarked and
    its resume was refused over the same file (audit 130)."""
    if code_task(tasks) is not None:
        _add_mark(store, TRUST_META, tasks_digest(tasks), "--trust-tasks")


def mark_tracking(store: CampaignStore, tracking: TrackingSpec | None) -> None:
    """Mark the folder as reporting, by this user's word, to the trackers `tracking` names: given in
    the campaign a `run` started, or allowed by `resume --tracking` (the folder's own are dropped
    otherwise). The resumes after need no word again (audit 138: `--tracking` on every resume of
    one's own run, for a file store on this machine too)."""
    if tracking is not None:
        _add_mark(store, TRACKING_TRUST_META, tracking_digest(tracking), "--tracking")


def mark_score_cache(store: CampaignStore, path: str | None) -> None:
    """Mark the folder as reading and writing the score cache at `path` (absolute) by this user's
    word: named in the campaign a `run` started, or allowed by `resume --score-cache`."""
    if path is not None:
        _add_mark(store, SCORE_CACHE_TRUST_META, _text_digest(path), "--score-cache")


def is_trusted(store: CampaignStore, tasks: Sequence[TaskSpec]) -> bool:
    """Whether this user's key marked the folder with these tasks. A damaged key file is an error
    (the user's own folder would read as someone else's)."""
    return _carries(store, TRUST_META, tasks_digest(tasks))


def tracking_trusted(store: CampaignStore, tracking: TrackingSpec) -> bool:
    """Whether this user's key marked the folder as reporting to these trackers."""
    return _carries(store, TRACKING_TRUST_META, tracking_digest(tracking))


def score_cache_trusted(store: CampaignStore, path: str) -> bool:
    """Whether this user's key marked the folder as using the score cache at `path` (absolute)."""
    return _carries(store, SCORE_CACHE_TRUST_META, _text_digest(path))


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _add_mark(store: CampaignStore, record: Record, digest: str, word: str) -> None:
    """This user's keyed mark of `digest` added to `record` (the latest MARKS_KEPT users' kept); a
    key that cannot be kept is said, naming the `word` the folder will need instead."""
    path = None
    try:
        path = key_file()
        key = _read_key(path) or _make_key(path)
    except DamagedKey as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        log.warning("cannot keep evo-merge's run key%s (%s): this run folder is not marked as run by you, "
                    "and resuming or exporting it will need %s", f" at {path}" if path else "",
                    exc.strerror or exc, word)
        return
    try:
        marks = store.get_meta(record, [])
    except UserError:  # a damaged record marks nothing: replaced (the user has said the folder may do this)
        marks = []
    if (mark := _mark(key, digest)) not in marks:
        store.set_meta(record, [*marks, mark][-MARKS_KEPT:])


def _carries(store: CampaignStore, record: Record, digest: str) -> bool:
    """Whether `record` holds this user's keyed mark of `digest`; a damaged key file is an error. A
    damaged record was refused as damage to restore from a backup, where the user's word replaces
    it (`_add_mark`)."""
    try:
        key = _read_key(key_file())
    except DamagedKey as exc:
        raise UserError(str(exc)) from None
    except OSError:
        return False
    if key is None:
        return False
    try:
        marks = store.get_meta(record, [])
    except UserError:  # a damaged record carries no mark: refused as unmarked, with the word that replaces it
        return False
    mark = _mark(key, digest)
    return any(hmac.compare_digest(mark, recorded) for recorded in marks)


def _mark(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
