"""Item scores kept across runs (`evaluator.score_cache: FILE`), so that a later campaign on the
same models, tasks and settings reads what an earlier one measured instead of merging and
scoring it again.

Calibration scores the base, every endpoint and the warm-up merges on every search item: at 7B
that is hours, paid again by every campaign over the same models (other methods or ranges,
another seed, a follow-up on a run's IRT models, a fixed campaign started in a new folder). Each
score is kept under two keys, and served only where both are equal:
- the model's: everything that decides the weights scored and how they are run: a SHA-256 of
  every file of the base and the endpoints that a run reads (weights, LoRA adapters, config,
  generation config, tokenizer), the candidate's recipe (its key), the evaluation and storage
  dtypes, the device type and batch size, and the code (evo-merge's, torch's and transformers'
  versions; a merge method of your own, its file's digest);
- the task's: its `items_digest` (what its items say and how they are scored), the options the
  campaign gives it, and lm-eval's and evo-merge's versions.
A task that gives no digest (a plugin's) and a method whose code no file holds (a notebook's) are
never cached: nothing would tell a change. The items a job asks that are kept are read, the
others scored (a follow-up of another seed holds out other items, so the standard merges it
measures share most of their items with an earlier run's). Whole files are hashed once and
remembered by path, size and modification time.

The file holds numbers and digests only: nothing in it executes, and a value that is not a finite
number is refused naming the file.
"""

from __future__ import annotations

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
from evo_merge.errors import UserError
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import ItemScores

log = logging.getLogger(__name__)

SCHEME = 1  # how keys are made: a change makes every key new, so nothing kept under the old way is served
_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    model TEXT NOT NULL, task TEXT NOT NULL, item TEXT NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (model, task, item)
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
"""


def _key(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


class ScoreCache:
    """The SQLite file of kept scores, shared by every run that names it (one writer at a time;
    SQLite waits for the other)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=120, isolation_level=None)
            self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"evaluator.score_cache: {path}: cannot be used as a score cache ({exc}); name "
                            "another file, or remove this one") from None

    def close(self) -> None:
        self.db.close()

    def scores(self, model: str, task: str, items: Sequence[str]) -> dict[str, float]:
        """The kept score of each of `items` that has one."""
        kept = dict(self.db.execute("SELECT item, score FROM scores WHERE model = ? AND task = ?", (model, task)))
        scores = {item: kept[item] for item in items if item in kept}
        if bad := next((item for item, score in scores.items()
                        if not isinstance(score, float) or not math.isfinite(score)), None):
            raise UserError(f"evaluator.score_cache: {self.path} keeps {scores[bad]!r} as item {bad!r}'s score, "
                            "not a finite number (the file was edited or damaged); remove it")
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
        """SHA-256 of the whole file, remembered by its resolved path, size and modification time
        (a 7B checkpoint's 15 GB take 12 s or more; a rewritten file has another time)."""
        real = file.resolve()
        stat = real.stat()
        row = (str(real), stat.st_size, stat.st_mtime_ns)
        known = self.db.execute("SELECT digest FROM files WHERE path = ? AND size = ? AND mtime_ns = ?", row).fetchone()
        if known is not None:
            return known[0]
        with real.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (*row, digest))
        return digest


@dataclass(frozen=True)
class ScoreKeys:
    """The keys a run's scores are kept under: one per candidate (None: its method's code is not
    known) and one per task that gives a digest."""

    setup: str  # what every candidate's key shares: the models' files, dtypes, device, code
    methods: frozenset[str]  # the methods whose code is known
    tasks: Mapping[str, str]

    def model(self, candidate: Candidate) -> str | None:
        return _key([self.setup, candidate.key]) if candidate.method in self.methods else None


def score_keys(cache: ScoreCache, model_files: Sequence[Sequence[Path]], settings: Mapping[str, Any],
               methods: Mapping[str, str | None], tasks: Mapping[str, tuple[str | None, Mapping[str, Any]]]
               ) -> ScoreKeys:
    """The run's keys: `model_files`, the files each model (the base, then each endpoint) is read
    from; `settings`, what else decides a candidate's scores (dtypes, device type, batch size);
    `methods`, each method's code digest ("" for one that changes with evo-merge alone, None where
    no file holds it); `tasks`, each task's `items_digest` (None: it gives none) and the options
    the campaign gives it (`metric: acc_norm` scores the same items otherwise)."""
    versions = {name: package_version(name) for name in ("torch", "transformers")}
    files = [[[file.name, cache.file_digest(file)] for file in files] for files in model_files]
    code = {name: digest for name, digest in methods.items() if digest is not None}
    setup = _key({"scheme": SCHEME, "evo_merge": __version__, "versions": versions, "models": files,
                  "settings": dict(settings), "code": code})
    lm_eval = package_version("lm_eval")
    task_keys = {name: _key({"scheme": SCHEME, "evo_merge": __version__, "lm_eval": lm_eval, "items": digest,
                             "options": dict(options)})
                 for name, (digest, options) in tasks.items() if _scoring_known(digest)}
    return ScoreKeys(setup, frozenset(code), task_keys)


def _scoring_known(digest: str | None) -> bool:
    """A digest that says how the items are scored as well as what they say (`<docs>:<definition>`)."""
    return isinstance(digest, str) and bool(digest.partition(":")[2])


class KeptScores:
    """A run's view of the cache: what is kept of a candidate's scores, and keeping what it scored.
    A cache that fails to keep (a full disk, a file another process holds too long) is said once
    and left: the run's own store is its record, the cache a saving."""

    def __init__(self, cache: ScoreCache, keys: ScoreKeys) -> None:
        self.cache, self.keys, self.broken = cache, keys, False

    def split(self, candidate: Candidate,
              asked: Mapping[str, Sequence[str]]) -> tuple[ItemScores, dict[str, list[str]]]:
        """(the kept scores of the asked items, per task; the asked items none is kept of, per task)."""
        model = self.keys.model(candidate)
        kept: ItemScores = {}
        for name, items in asked.items():
            task = self.keys.tasks.get(name)
            if model is not None and task is not None and (scores := self.cache.scores(model, task, items)):
                kept[name] = scores
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
            self.broken = True
            log.warning("evaluator.score_cache: %s: keeping scores failed (%s); this run keeps no more there",
                        self.cache.path, exc)
