"""Item scores kept across runs (`evaluator.score_cache: FILE`), so that a later campaign on the
same models, tasks and settings reads what an earlier one measured instead of merging and
scoring it again.

Calibration scores the base, every endpoint and the warm-up merges on every search item: at 7B
that is hours, paid again by every campaign over the same models (other methods or ranges,
another seed, a follow-up on a run's IRT models, a fixed campaign started in a new folder). Each
score is kept under two keys, and served only where both are equal:
- the model's: everything that decides the weights scored and how they are run: a SHA-256 of
  every file of the base and the endpoints that a run reads (weights, LoRA adapters, config,
  generation config, tokenizer), the candidate's recipe (its key) and its own method's code (a
  method of your own: its file's digest; another method list in the campaign leaves the key), the
  evaluation and storage dtypes, the device type (a GPU's model too) and batch size, and the code
  that merges and scores (`source_digest`: evo-merge's own files; torch's and transformers' versions);
- the task's: its `items_digest` (what its items say and how they are scored), the options the
  campaign gives it, and lm-eval's and evo-merge's versions.
A task that gives no digest (a plugin's) and a method whose code no file holds (a notebook's) are
never cached: nothing would tell a change. The items a job asks that are kept are read, the
others scored (a follow-up of another seed holds out other items, so the standard merges it
measures share most of their items with an earlier run's). Whole files are hashed once and
remembered by path, size, modification time, inode and change time (`ScoreCache.file_digest`).

The file holds numbers and digests only: nothing in it executes. A file that cannot serve (another
program's database, a damaged value, a disk that refuses it) is said so, naming it, and the run goes
on without it: the run's own store is its record, the cache a saving.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from evo_merge import __version__
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import ItemScores

log = logging.getLogger(__name__)

SCHEME = 1  # how keys are made: a change makes every key new, so nothing kept under the old way is served
FORMAT = f"evo-merge score cache {SCHEME}"  # what a file made as a score cache says it is
TABLES = {"cache", "scores", "files"}
_SCHEMA = """
CREATE TABLE cache (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    model TEXT NOT NULL, task TEXT NOT NULL, item TEXT NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (model, task, item)
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (path, size, mtime_ns, inode, ctime_ns)
);
"""


def _key(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@functools.cache
def source_digest() -> str:
    """A digest of every Python file of the installed evo_merge package: its version number stays the
    same across commits (a built-in method's trimming changed under one version), so the code a
    score was measured with is named by its text. Read once per process (about a megabyte)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


class CacheUnusable(Exception):
    """The file cannot serve as a score cache (another program's database, a folder, a disk that
    refuses it): said, and the run goes on without it."""


class ScoreCache:
    """The SQLite file of kept scores, shared by every run that names it (one writer at a time;
    SQLite waits for the other). Marked as a score cache when made, so that another program's
    database (or a run's own state.sqlite) named by mistake is refused, never written into."""

    def __init__(self, path: Path) -> None:
        """Raises `CacheUnusable` naming the file where it cannot be a score cache."""
        self.path = path
        if path.is_dir():
            raise CacheUnusable(f"{path} is a folder: name a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=120, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise CacheUnusable(f"{path}: {exc}") from None
        try:
            self._check_format()
        except BaseException:
            self.db.close()
            raise

    def _check_format(self) -> None:
        """Mark a new (empty) file as a score cache; refuse one that is not marked as one."""
        try:
            tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT INTO cache VALUES (?, ?)", ("format", FORMAT))
                return
            marked = tables == TABLES and self.db.execute("SELECT value FROM cache WHERE key = 'format'").fetchone()
        except sqlite3.Error as exc:
            raise CacheUnusable(f"{self.path}: {exc}") from None
        if marked != (FORMAT,):
            raise CacheUnusable(f"{self.path} is a database of something else (tables: {', '.join(sorted(tables))}); "
                                "name another file")

    def close(self) -> None:
        self.db.close()

    def scores(self, model: str, task: str, items: Sequence[str]) -> dict[str, float]:
        """The kept score of each of `items` that has one."""
        kept = dict(self.db.execute("SELECT item, score FROM scores WHERE model = ? AND task = ?", (model, task)))
        scores = {item: kept[item] for item in items if item in kept}
        if bad := next((item for item, score in scores.items()
                        if not isinstance(score, float) or not math.isfinite(score)), None):
            raise CacheUnusable(f"{self.path} keeps {scores[bad]!r} as item {bad!r}'s score, not a finite number "
                                "(the file was edited or damaged)")
        return scores

    def keep(self, model: str, task: str, scores: Mapping[str, float]) -> None:
        rows = [(model, task, item, float(score)) for item, score in scores.items()]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def file_digest(self, file: Path) -> str:
        """SHA-256 of the whole file, remembered by its resolved path, size, modification time, inode
        and status-change time (a 7B checkpoint's 15 GB take 12 s or more): a file rewritten or
        copied in has another inode or change time, which no tool sets back (an archive's fixed
        modification times, `touch -r`, do not fool it). A cache that cannot be written (a team's
        read-only file) hashes without remembering."""
        real = file.resolve()
        stat = real.stat()
        row = (str(real), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
        known = self.db.execute("SELECT digest FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ? "
                                "AND ctime_ns = ?", row).fetchone()
        if known is not None:
            return known[0]
        with real.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        try:
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", (*row, digest))
        except sqlite3.Error as exc:
            log.debug("score cache %s: the digest of %s not remembered (%s)", self.path, real, exc)
        return digest


@dataclass(frozen=True)
class ScoreKeys:
    """The keys a run's scores are kept under: one per candidate (None: its method's code is not
    known) and one per task that gives a digest."""

    setup: str  # what every candidate's key shares: the models' files, dtypes, device, evo-merge's code
    methods: Mapping[str, str]  # each method whose code is known -> its file's digest ("": evo-merge's own)
    tasks: Mapping[str, str]

    def model(self, candidate: Candidate) -> str | None:
        """Its key: the setup, its recipe and its own method's code (another method list in the
        campaign, or another plugin's file edited, leaves it)."""
        code = self.methods.get(candidate.method)
        return None if code is None else _key([self.setup, candidate.key, code])


def score_keys(model_files: Sequence[Sequence[tuple[str, str]]], settings: Mapping[str, Any],
               methods: Mapping[str, str | None], tasks: Mapping[str, tuple[str | None, Mapping[str, Any]]]
               ) -> ScoreKeys:
    """The run's keys: `model_files`, (name, `file_digest`) of each file each model (the base, then
    each endpoint) is read from; `settings`, what else decides a candidate's scores (dtypes, device
    type, batch size);
    `methods`, each method's code digest ("" for one that changes with evo-merge alone, None where
    no file holds it); `tasks`, each task's `items_digest` (None: it gives none) and the options
    the campaign gives it (`metric: acc_norm` scores the same items otherwise)."""
    versions = {name: package_version(name) for name in ("torch", "transformers")}
    evo_merge = [__version__, source_digest()]
    setup = _key({"scheme": SCHEME, "evo_merge": evo_merge, "versions": versions,
                  "models": [[list(named) for named in files] for files in model_files],
                  "settings": dict(settings)})
    lm_eval = package_version("lm_eval")
    task_keys = {name: _key({"scheme": SCHEME, "evo_merge": evo_merge, "lm_eval": lm_eval, "items": digest,
                             "options": dict(options)})
                 for name, (digest, options) in tasks.items() if _scoring_known(digest)}
    return ScoreKeys(setup, {name: code for name, code in methods.items() if code is not None}, task_keys)


def _scoring_known(digest: str | None) -> bool:
    """A digest that says how the items are scored as well as what they say (`<docs>:<definition>`)."""
    return isinstance(digest, str) and bool(digest.partition(":")[2])


class KeptScores:
    """A run's view of the cache: what is kept of a candidate's scores, and keeping what it scored.
    A cache that fails (a full disk, a file another process holds too long, a damaged value) is
    said once and left: the run's own store is its record, the cache a saving."""

    def __init__(self, cache: ScoreCache, keys: ScoreKeys) -> None:
        self.cache, self.keys, self.broken = cache, keys, False

    def split(self, candidate: Candidate,
              asked: Mapping[str, Sequence[str]]) -> tuple[ItemScores, dict[str, list[str]]]:
        """(the kept scores of the asked items, per task; the asked items none is kept of, per task)."""
        model = self.keys.model(candidate)
        kept: ItemScores = {}
        for name, items in asked.items():
            task = self.keys.tasks.get(name)
            if model is None or task is None or self.broken:
                continue
            try:
                if scores := self.cache.scores(model, task, items):
                    kept[name] = scores
            except (CacheUnusable, sqlite3.Error) as exc:
                self._leave("reading", exc)
                kept = {}
        rest = {name: [i for i in items if i not in kept.get(name, {})] for name, items in asked.items()}
        return kept, {name: items for name, items in rest.items() if items}

    def keep(self, candidate: Candidate, scores: ItemScores) -> None:
        model = self.keys.model(candidate)
        if model is None or self.broken:
            return
        try:
            for name, items in scores.items():
                if (task := self.keys.tasks.get(name)) is not None:
                    self.cache.keep(model, task, items)
        except sqlite3.Error as exc:
            self._leave("keeping scores", exc)

    def _leave(self, what: str, exc: Exception) -> None:
        self.broken = True
        log.warning("evaluator.score_cache: %s: %s failed (%s); this run reads and keeps no more there",
                    self.cache.path, what, exc)
