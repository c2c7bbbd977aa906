"""The campaign store: every evaluation, and which generations are complete, in one SQLite file.

Any process can open a run folder and read or continue it (as with an Optuna study). Each
evaluation is committed in its own transaction together with its per-item scores, so a crash
loses at most the candidate being evaluated. The database is the run's only source of truth:
the search state is rebuilt by replaying the algorithm against it, and nothing in a run folder
is unpickled (a `checkpoint.pkl` left by an older version is ignored), so opening a run folder
someone sent you executes nothing from it. A database that fails SQLite's integrity check is
refused with the way out, never half-read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

from evo_merge.config import Direction
from evo_merge.errors import UserError
from evo_merge.files import parse_json
from evo_merge.markup import visible
from evo_merge.search.candidate import Candidate

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    phase TEXT NOT NULL,           -- calibration | search | baseline (CALIBRATION, SEARCH, BASELINE)
    generation INTEGER,
    method TEXT NOT NULL,
    genome TEXT NOT NULL,          -- Candidate.key (JSON)
    status TEXT NOT NULL,          -- ok | failed (STATUSES)
    estimates TEXT,                -- JSON {task: estimated full score}
    estimate_se TEXT,              -- JSON {task: standard error of the estimate}
    measured TEXT,                 -- JSON {task: score on every item}, once measured
    items_evaluated INTEGER NOT NULL DEFAULT 0,   -- when evaluated (anchors, or all items; failed: before it)
    items_measured INTEGER NOT NULL DEFAULT 0,    -- added later by the final phase (its race, then every item)
    items_by_export INTEGER NOT NULL DEFAULT 0,   -- those of items_measured that `export --pick` measured
    seconds REAL,
    error TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS item_scores (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
    task TEXT NOT NULL,
    item TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (evaluation_id, task, item)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    keys TEXT NOT NULL,            -- JSON list of the keys of the population told to the algorithm
    completed REAL NOT NULL,
    told TEXT,                     -- JSON {key: [minimised objective values]} told to the algorithm
    metrics TEXT                   -- JSON {name: value}: the search as the generation ended (search.metrics)
);
"""
TABLES = ("evaluations", "item_scores", "meta", "generations")
CALIBRATION = "calibration"  # phase of the base, the endpoints and the random warm-ups: measured to fit IRT
SEARCH = "search"
BASELINE = "baseline"  # phase of the standard merges: warm-ups measured before the search, or scored after it
PHASES = (CALIBRATION, SEARCH, BASELINE)  # an evaluation's phase, as a run writes it
STATUSES = ("ok", "failed")  # an evaluation's status: scored (estimates, maybe measured), or failed (its error)
# columns added after the first release, added to older databases when they are opened
ADDED_COLUMNS = {("evaluations", "estimate_se"): "TEXT", ("generations", "told"): "TEXT",
                 ("generations", "metrics"): "TEXT", ("evaluations", "items_by_export"): "INTEGER NOT NULL DEFAULT 0"}


@dataclass(frozen=True)
class Record:
    """A metadata record of the store: its key and the shape a run writes it in. Read back, a value
    not of that shape (checked strictly: "1" is no 1) is the store's one-line damaged error, where
    it was a traceback wherever the value was first used (a status line, a report's table). A
    field added to a shape later must be optional (`NotRequired`, `| None`): older folders lack it."""

    key: str
    shape: Any = Any


# a task's or pick's name read back from a store: as a campaign writes them (`config.SAFE_NAME`); a
# crafted store's `../x` or terminal escape codes are its damage, not names to print or build paths from
StoredName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
# other text read back from a store and printed (a campaign's name, its endpoints as it names them, a
# plugin method's name): its control characters shown as text, so a crafted store cannot drive the
# terminal of whoever runs `status` on it, and a run that recorded a tab or newline still reads
StoredText = Annotated[str, AfterValidator(visible)]
# a dtype by the name torch gives it (`float64` for a float64 base under `storage.dtype: auto`)
StoredDtype = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class TaskFacts(TypedDict):
    name: StoredName
    direction: Direction
    items: int  # the task's items, held-out ones included


class Facts(TypedDict):
    """What reading a run needs without its models or tasks (`status`, `report`)."""
    name: StoredText
    generations: int
    algorithm: StoredText
    tasks: Annotated[list[TaskFacts], Field(min_length=1)]
    weights: dict[str, float] | None  # objective.weights: the optimiser sees their weighted sum
    estimator: NotRequired[str]  # estimator.kind: what an estimate's SE is (runs from before: none)
    endpoints: NotRequired[list[StoredText]]  # as the campaign names them (runs from before: none)
    stored_dtype: NotRequired[StoredDtype]  # what the search kept its tensors in
    # the methods whose candidates were rounded as kept, so a report and a card say their scores are
    # a merge's a little off the exported picks (a run from before it was recorded: all, below float32)
    rounded_methods: NotRequired[list[StoredText]]
    rounded_task_vectors: NotRequired[bool]  # the cause: the task vectors themselves, or factors (TSV's)


FACTS_META = Record("facts", Facts)
EXPORTED_META = Record("exported", dict[StoredName, tuple[int, str]])  # pick name -> [evaluation id, its folder
#   relative to the run folder (absolute in older runs)]
CALIBRATION_META = Record("calibration_subjects", int)  # how many subjects calibration measures: `status`
#   counts them off
BASELINES_META = Record("baselines", dict[str, str])  # candidate key -> the standard merge it is (its label)
POOLED_META = Record("pooled_estimates", dict[str, dict[str, float]])  # key of a candidate pooled -> its pooled
#   estimates, as the final phase first chose
# the device types the run built candidates on ("cpu", "cuda"); one name alone in folders from before
EVALUATED_ON_META = Record("evaluated_on", str | list[str])
REVISION_META = Record("estimator_revision", int)  # the estimator revision candidates are scored with
#   (irt.ESTIMATOR_REVISION)
ANCHORS_META = Record("anchors", dict[str, dict[str, int]])  # task -> scenario -> anchors per candidate, for `status`
# items `export --pick` spent measuring candidates, in folders from before `items_by_export` counted them
PICK_MEASURED_META = Record("items_measured_by_export", int)
FINISHED_META = Record("finished", bool)  # set when the run's final phase and exports are done
# how many of the item scores the run holds the score cache answered (`evaluator.score_cache`): counted in the
#   items, which say what a campaign asks, though not scored by this run
FROM_CACHE_META = Record("items_from_score_cache", Annotated[int, Field(ge=0)])
MIXED_META = Record("estimator_revisions", list[int])  # where a resumed folder's estimates mix revisions: those it
#   holds (0: unrecorded)
MEASURE_FAILED = "measure_failed:"  # + key: the error of a final-phase measurement that failed
ADAPTIVE_FAILED = "adaptive_failed:"  # + key: the error of an adaptive test's step that failed


@dataclass
class Evaluation:
    id: int
    key: str
    phase: str
    generation: int | None
    method: str
    status: str
    estimates: dict[str, float] | None
    measured: dict[str, float] | None
    items_evaluated: int
    seconds: float | None
    error: str | None
    estimate_se: dict[str, float] | None = None


class ClosedStoreError(UserError):
    """A store used after it was closed."""


class _ClosedDatabase:
    """A closed store's database: any use says so. sqlite's "Cannot operate on a closed database"
    was what a notebook's next cell got from a runner whose `with` block had ended (audit 142)."""

    def __init__(self, path: Path):
        self._path = path

    def close(self) -> None:
        """Closing again is no mistake (a `with` block after `close`)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # Python's own lookups (copy, pickle, hasattr of a protocol): not a use
            raise AttributeError(name)
        raise ClosedStoreError(f"{self._path}: the run's database was closed (its runner's `with` block ended, or its "
                        "store was closed); open the run again to go on (CampaignRunner.open with the same run_dir)")


class CampaignStore:
    DB = "state.sqlite"

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.db = _open_checked(self.run_dir / self.DB)

    def close(self) -> None:
        self.db.close()
        self.db = _ClosedDatabase(self.run_dir / self.DB)

    def __enter__(self) -> CampaignStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def closed_on_error(self) -> Iterator[CampaignStore]:
        """The store, closed if the block raises anything (Ctrl-C and an OSError too), for a caller
        that hands it on open when the block succeeds: the checks that open a run folder refuse it
        in many ways, and each that returned without closing left its database open (audit 130)."""
        try:
            yield self
        except BaseException:
            self.close()
            raise

    def damaged(self, where: str) -> UserError:
        """A value the store wrote that no longer reads as written: the database was edited or damaged."""
        return UserError(f"{self.run_dir / self.DB}: {where} is damaged (edited, or not written by evo-merge); "
                         "restore it from a backup, or start the campaign again in a new run folder")

    def _json(self, text: str | None, where: str) -> Any:
        """`text` parsed; damaged when it is not JSON."""
        try:
            return None if text is None else parse_json(text)
        except (ValueError, TypeError):  # ValueError: JSONDecodeError, or an integer of too many digits
            raise self.damaged(where) from None

    def _evaluation(self, row: Iterable) -> Evaluation:
        """A row of evaluations read back against what `add`, `add_items` and `add_measurement`
        write, each column checked; damaged, naming the column, where one is not."""
        id_, key, genome, phase, gen, method, status, est, meas, n, sec, err, se = row
        where = f"evaluation {id_} (evaluations.{{}})".format
        scores = {column: self._json(text, where(column))
                  for column, text in (("estimates", est), ("measured", meas), ("estimate_se", se))}
        try:
            candidate = Candidate.from_key(key)
        except (ValueError, TypeError):  # not JSON, or not a candidate's layout
            raise self.damaged(where("key")) from None
        for column, ok in (("genome", genome == key), ("method", method == candidate.method),
                           ("phase", phase in PHASES),
                           ("generation", gen is None or type(gen) is int), ("status", status in STATUSES),
                           ("items_evaluated", type(n) is int and n >= 0), ("seconds", sec is None or _finite(sec)),
                           ("error", err is None or type(err) is str),
                           ("estimates", status != "ok" or scores["estimates"] is not None),  # a failed one has none
                           *((column, _is_scores(value, unit=column == "measured"))
                             for column, value in scores.items())):
            if not ok:
                raise self.damaged(where(column))
        return Evaluation(id_, key, phase, gen, method, status, scores["estimates"], scores["measured"], n, sec,
                          err, scores["estimate_se"])

    # -- evaluations
    def get(self, key: str) -> Evaluation | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM evaluations WHERE key = ?", (key,)).fetchone()
        return self._evaluation(row) if row else None

    def _stored(self, key: str) -> Evaluation:
        """`key`'s evaluation, which the caller has stored: a LookupError naming it where it is not."""
        evaluation = self.get(key)
        if evaluation is None:
            raise LookupError(f"no evaluation of candidate {key!r} is stored")
        return evaluation

    def add(
        self,
        key: str,
        *,
        phase: str,
        generation: int | None,
        method: str,
        status: str,
        estimates: Mapping[str, float] | None = None,
        item_scores: Mapping[str, Mapping[str, float]] | None = None,
        seconds: float | None = None,
        error: str | None = None,
        estimate_se: Mapping[str, float] | None = None,
        measured: Mapping[str, float] | None = None,
        items_unkept: int = 0,
        cached: int = 0,
    ) -> Evaluation:
        """Record one evaluation and its per-item scores atomically; `measured`, its scores on every
        search item when it was scored on them all, in the same transaction. `items_unkept`: items
        scored but not kept (a candidate that failed on a later task), counted in its items;
        `cached`: how many of its scores the score cache answered (`FROM_CACHE_META`)."""
        scores = item_scores or {}
        n_items = sum(len(s) for s in scores.values()) + items_unkept
        with self._transaction():
            self._count_cached(cached)
            cursor = self.db.execute(
                "INSERT INTO evaluations (key, phase, generation, method, genome, status, estimates, estimate_se,"
                " measured, items_evaluated, seconds, error, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, phase, generation, method, key, status, _dumps(estimates), _dumps(estimate_se),
                 _dumps(measured), n_items, seconds, error, time.time()),
            )
            self._insert_scores(cursor.lastrowid, scores)
        return self._stored(key)

    def forget_failed(self, key: str) -> bool:
        """Delete `key`'s evaluation if it failed (with any item scores it kept), so that it is
        evaluated again; True where there was one. Only for what nothing stored was built on: a
        calibration subject the run stopped at, a generation whose every candidate failed (never
        told to the algorithm)."""
        row = self.db.execute("SELECT id FROM evaluations WHERE key = ? AND status != 'ok'", (key,)).fetchone()
        if row is None:
            return False
        with self._transaction():
            self.db.execute("DELETE FROM item_scores WHERE evaluation_id = ?", (row[0],))
            self.db.execute("DELETE FROM evaluations WHERE id = ?", (row[0],))
        return True

    def add_items(self, key: str, item_scores: Mapping[str, Mapping[str, float]], estimates: Mapping[str, float],
                  estimate_se: Mapping[str, float] | None, seconds: float,
                  measured: Mapping[str, float] | None = None, items_unkept: int = 0,
                  cached: int = 0) -> Evaluation:
        """More items scored for an evaluation (an adaptive test's next step), with the estimates
        they lead to, and its scores on the search items where the step gave it every one
        (`measured`), in one transaction: a kill between two left it unmeasured for the search.
        `items_unkept`: items the step scored but did not keep (it failed on a later task)."""
        evaluation = self._stored(key)
        with self._transaction():
            self._count_cached(cached)
            new = self._insert_scores(evaluation.id, item_scores) + items_unkept
            self.db.execute(
                "UPDATE evaluations SET estimates = ?, estimate_se = ?, items_evaluated = items_evaluated + ?,"
                " seconds = COALESCE(seconds, 0) + ?, measured = COALESCE(?, measured) WHERE id = ?",
                (_dumps(estimates), _dumps(estimate_se), new, seconds, _dumps(measured), evaluation.id),
            )
        return self._stored(key)

    def add_measurement(self, key: str, measured: Mapping[str, float] | None,
                        item_scores: Mapping[str, Mapping[str, float]], *, by_export: bool = False,
                        cached: int = 0) -> Evaluation:
        """Store final-phase item scores of an existing evaluation (items already stored are kept),
        with its scores on every search item once it has them all (`measured`; None: a race stage).
        `by_export`: `export --pick` measured them, counted apart from the final phase in the same
        transaction (a kill between the two records left the totals wrong for good)."""
        evaluation = self._stored(key)
        with self._transaction():
            self._count_cached(cached)
            new = self._insert_scores(evaluation.id, item_scores)
            self.db.execute(
                "UPDATE evaluations SET measured = COALESCE(?, measured), items_measured = items_measured + ?,"
                " items_by_export = items_by_export + ? WHERE id = ?",
                (_dumps(measured), new, new if by_export else 0, evaluation.id),
            )
        return self._stored(key)

    def item_scores(self, key: str, task: str | None = None) -> dict[str, dict[str, float]]:
        evaluation = self._stored(key)
        query = "SELECT task, item, score FROM item_scores WHERE evaluation_id = ?"
        args: tuple = (evaluation.id,)
        if task is not None:
            query, args = query + " AND task = ?", (*args, task)
        out: dict[str, dict[str, float]] = {}
        for t, item, score in self.db.execute(query, args):
            if not (_finite(score) and 0 <= score <= 1):  # a task's item scores lie in [0, 1] (tasks.base)
                raise self.damaged(f"evaluation {evaluation.id} (item_scores.score)")
            out.setdefault(t, {})[item] = score
        return out

    def evaluations(self, phase: str | None = None) -> list[Evaluation]:
        query = f"SELECT {_COLUMNS} FROM evaluations"
        rows = self.db.execute(query + (" WHERE phase = ? ORDER BY id" if phase else " ORDER BY id"),
                               (phase,) if phase else ()).fetchall()
        evaluations = [self._evaluation(r) for r in rows]
        tasks = self.scored_tasks()
        for e in evaluations if tasks is not None else ():  # the run's tasks: one missing was a KeyError in `status`
            if e.estimates is not None and set(e.estimates) != tasks:
                raise self.damaged(f"evaluation {e.id} (evaluations.estimates)")
            for column, scores in (("measured", e.measured), ("estimate_se", e.estimate_se)):
                if not set(scores or {}) <= tasks:
                    raise self.damaged(f"evaluation {e.id} (evaluations.{column})")
        return evaluations

    def scored_tasks(self) -> set[str] | None:
        """The tasks the first successful evaluation was estimated on (None before there is one):
        what the run's recorded tasks must be, read without reading every evaluation."""
        row = self.db.execute(f"SELECT {_COLUMNS} FROM evaluations WHERE status = 'ok' AND estimates IS NOT NULL "
                              "ORDER BY id LIMIT 1").fetchone()
        return set(self._evaluation(row).estimates or {}) if row else None

    def items_evaluated(self, phase: str | None = None, *, measured: bool = False) -> int:
        """Item evaluations spent in `phase` (all phases when None), plus front measurement if `measured`."""
        column = "items_evaluated + items_measured" if measured else "items_evaluated"
        query = f"SELECT COALESCE(SUM({column}), 0) FROM evaluations"
        return self.db.execute(query + (" WHERE phase = ?" if phase else ""), (phase,) if phase else ()).fetchone()[0]

    def items_by_phase(self) -> dict[str, int]:
        """Item evaluations per phase in the order the phases began (calibration, search, baseline),
        then the final phase's (`final phase`: its race and the items measured whole), then those
        `export --pick` measured (`export --pick`, where it measured any)."""
        rows = self.db.execute("SELECT phase, SUM(items_evaluated) FROM evaluations GROUP BY phase ORDER BY MIN(id)")
        by_export = self.db.execute("SELECT COALESCE(SUM(items_by_export), 0) FROM evaluations").fetchone()[0]
        by_export += self.get_meta(PICK_MEASURED_META, 0)  # counted apart before the column was added
        final = self.items_evaluated(measured=True) - self.items_evaluated() - by_export
        return {**dict(rows.fetchall()), "final phase": final, **({"export --pick": by_export} if by_export else {})}

    # -- key/value metadata (config hash, phase markers)
    def set_metas(self, values: Mapping[str | Record, Any]) -> None:
        """Several metadata keys in one transaction: all of them, or none after a kill."""
        with self._transaction():
            for key, value in values.items():
                self.set_meta(key, value)

    def get_meta(self, key: str | Record, default: Any = None) -> Any:
        """The value stored under `key` (`default` where there is none), of the record's shape."""
        record = key if isinstance(key, Record) else Record(key)
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (record.key,)).fetchone()
        return default if row is None else self._read(record, row[0])

    def _read(self, record: Record, text: str) -> Any:
        """A stored meta value checked against its record's shape; damaged where it is not of it."""
        try:
            return _adapter(record.shape).validate_json(text, strict=True)
        except ValidationError:
            raise self.damaged(f"meta {record.key!r}") from None

    def exported(self) -> dict[str, tuple[int, str]]:
        """Pick name -> (evaluation id, its folder as `run` recorded it: relative to the run folder,
        absolute in older runs)."""
        return self.get_meta(EXPORTED_META, {})

    def set_exported(self, exported: Mapping[str, tuple[int, str]]) -> None:
        self.set_meta(EXPORTED_META, {name: [eid, folder] for name, (eid, folder) in exported.items()})

    def estimator_revisions(self) -> tuple[int | None, list[int]]:
        """(the estimator revision candidates are scored with, None in a folder from before
        revisions were recorded; the revisions a reopened folder's estimates mix, 0 for unrecorded,
        [] where they do not mix); damaged where they are not what a run writes."""
        return self.get_meta(REVISION_META), self.get_meta(MIXED_META, [])

    def measure_failures(self) -> dict[str, str]:
        """Candidate key -> error, for each final-phase measurement that failed (the candidate
        worked on its anchors, so it keeps its search evaluation and estimate)."""
        return self._failures(MEASURE_FAILED)

    def forget_measure_failures(self) -> None:
        """Delete every final-phase measurement failure, so that `resume` measures them again: only
        for a final phase that measured no pick, whose cause was not the candidates."""
        with self._transaction():
            self.db.execute("DELETE FROM meta WHERE substr(key, 1, ?) = ?", (len(MEASURE_FAILED), MEASURE_FAILED))

    def adaptive_failures(self) -> dict[str, str]:
        """Candidate key -> error, for each adaptive test stopped by a step that failed (the
        candidate keeps the estimate from the items it had)."""
        return self._failures(ADAPTIVE_FAILED)

    def _failures(self, prefix: str) -> dict[str, str]:
        # a prefix compared as text: LIKE would read the prefixes' `_` as any character
        query = "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?"
        rows = self.db.execute(query, (len(prefix), prefix)).fetchall()
        return {key.removeprefix(prefix): self._read(Record(key, str), value) for key, value in rows}

    def set_meta(self, key: str | Record, value: Any) -> None:
        key = key.key if isinstance(key, Record) else key
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- progress: generations and the finished flag, checked against the evaluations
    def complete_generation(self, generation: int, told: Mapping[str, Sequence[float]],
                            metrics: Mapping[str, float] | None = None) -> None:
        """Record that `generation` was told to the algorithm: each key's objective values, and the
        search's metrics as it ended. A replayed generation keeps the metrics and the time first
        recorded: stored estimates may have changed since (an adaptive test continued before the
        final phase), and `status` reckons the time left from when generations really ended."""
        self.db.execute(
            "INSERT INTO generations (generation, keys, completed, told, metrics) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (generation) DO UPDATE SET keys = excluded.keys, "
            "told = excluded.told, metrics = COALESCE(generations.metrics, excluded.metrics)",
            (generation, json.dumps(sorted(told)), time.time(),
             json.dumps({key: [float(v) for v in values] for key, values in told.items()}),
             _dumps(metrics, finite=False)),
        )

    def metrics(self, generation: int) -> dict[str, float] | None:
        """The search's metrics as `generation` ended; None where not recorded (an older folder)."""
        row = self.db.execute("SELECT metrics FROM generations WHERE generation = ?", (generation,)).fetchone()
        return self._json(row[0], f"generation {generation}'s metrics") if row and row[0] else None

    def told(self, generation: int) -> dict[str, list[float]]:
        """What `generation` was told, by key: a replay answers it alike even where a stored
        estimate changed since (an adaptive test continued before the final phase). Empty for a
        generation not recorded, or recorded before these values were kept."""
        row = self.db.execute("SELECT told FROM generations WHERE generation = ?", (generation,)).fetchone()
        return self._json(row[0], f"generation {generation}'s told values") if row and row[0] else {}

    def generation_ends(self) -> list[float]:
        """When each recorded generation was first told to the algorithm (seconds since the epoch),
        in generation order."""
        return [end for (end,) in self.db.execute("SELECT completed FROM generations ORDER BY generation")]

    def generations_completed(self) -> int:
        """The generations 1..n recorded complete whose every evaluation is in the database: a
        generation whose evaluations were lost (a truncated database), or whose record is not of the
        shape a run writes, does not count, for every reader alike (`resume` replays it and writes
        its record again; `status` called the store damaged: audit 130)."""
        have = {key for (key,) in self.db.execute("SELECT key FROM evaluations")}
        done = 0
        for generation, keys in self.db.execute("SELECT generation, keys FROM generations ORDER BY generation"):
            try:
                recorded = _adapter(list[str]).validate_json(keys or "", strict=True)
            except ValidationError:
                break
            if generation != done + 1 or not have.issuperset(recorded):
                break
            done = generation
        return done

    def mark_finished(self) -> None:
        """Set once the run's outputs (exports and report) are written."""
        self.set_meta(FINISHED_META, True)

    def finished(self, generations: int) -> bool:
        """Finished, and none of the `generations` configured is missing from the database. A flag
        not of the shape a run writes reads as not finished, as `resume` reads it (its replay sets
        the flag again): `status` called the store damaged where `resume` mended it (audit 127)."""
        try:
            flag = self.get_meta(FINISHED_META)
        except ClosedStoreError:
            raise
        except UserError:
            return False
        return bool(flag) and self.generations_completed() >= generations

    def _insert_scores(self, evaluation_id: int, scores: Mapping[str, Mapping[str, float]]) -> int:
        rows = [
            (evaluation_id, task, item, float(score)) for task, items in scores.items() for item, score in items.items()
        ]
        before = self.db.total_changes
        self.db.executemany("INSERT OR IGNORE INTO item_scores VALUES (?, ?, ?, ?)", rows)
        return self.db.total_changes - before

    def _count_cached(self, n: int) -> None:
        """Add `n` to the item scores the score cache answered, in the caller's transaction."""
        if n:
            self.set_meta(FROM_CACHE_META, self.get_meta(FROM_CACHE_META, 0) + n)

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


_COLUMNS = (
    "id, key, genome, phase, generation, method, status, estimates, measured, items_evaluated, seconds, error,"
    " estimate_se"
)


@cache
def _adapter(shape: Any) -> TypeAdapter:
    return TypeAdapter(shape)


def evaluated_on(store: CampaignStore) -> list[str]:
    """The device types a run built its candidates on (`EVALUATED_ON_META`); none recorded: []."""
    recorded = store.get_meta(EVALUATED_ON_META)
    return [] if recorded is None else [recorded] if isinstance(recorded, str) else list(recorded)


def _dumps(value: Any, *, finite: bool = True) -> str | None:
    """JSON text of a value to store. Scores must be `finite`: a non-finite one is refused before
    it is written (it would read back as a damaged run folder, blaming the user); a generation's
    metrics may be NaN (no successful estimate yet)."""
    return None if value is None else json.dumps(value, allow_nan=not finite)


def _finite(value: Any) -> bool:
    """A number a run writes: an int or a finite float ("1" and True are none; NaN, Infinity, and an
    integer past a float's range are refused)."""
    return type(value) in (int, float) and -_LARGEST <= value <= _LARGEST


_LARGEST = sys.float_info.max


def _is_scores(value: Any, unit: bool = False) -> bool:
    """None, or {task: finite number}: estimates, SEs and measurements as a run writes them (JSON
    reads NaN and Infinity, which a run never writes: its item scores lie in [0, 1], and so does a
    measurement, their mean, where `unit`)."""
    return value is None or isinstance(value, dict) and all(
        isinstance(k, str) and _finite(v) and (not unit or 0 <= v <= 1) for k, v in value.items())


def _open_checked(path: Path) -> sqlite3.Connection:
    """Connect, verify SQLite's quick check and the schema, create the schema in a new database."""
    way_out = "restore it from a backup, or start the campaign again in a new run folder"
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict.splitlines()[0])
        # a view or trigger runs SQL when read or written: a received store's view under a table's
        # name (which CREATE TABLE IF NOT EXISTS keeps) hung `status` in a recursive query that no
        # signal stops (audit 116); the store makes tables and their indexes only
        if other := db.execute("SELECT type, name FROM sqlite_master WHERE type NOT IN ('table', 'index')").fetchone():
            raise sqlite3.DatabaseError(f"it holds a {other[0]} {other[1]!r}, which evo-merge does not make")
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in TABLES[:3] if t not in tables]
        if tables and missing:  # no table at all: a new (or never written) database
            raise sqlite3.DatabaseError(f"no {', '.join(missing)} table")
        db.executescript(SCHEMA)
        for (table, column), kind in ADDED_COLUMNS.items():
            if column not in {name for _, name, *_ in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    except sqlite3.OperationalError as exc:
        if not os.access(path.parent, os.W_OK):  # sqlite says "unable to open database file": not the cause
            raise UserError(f"run folder {path.parent}: cannot be written (read-only); its database is opened to "
                            "read and record alike: copy the folder elsewhere to look at it") from None
        raise UserError(f"{path}: cannot open the campaign database ({exc})") from None
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: corrupt campaign database ({exc}); {way_out}") from None
    return db


def competing(evaluations: Sequence[Evaluation]) -> list[Evaluation]:
    """The successful search evaluations, then the baselines (the standard merges), each in the
    order given: what competes for the front and the best. Here, torch-free, for `status` as for
    the front, which orders them otherwise (`front.candidates`)."""
    return [e for phase in (SEARCH, BASELINE) for e in evaluations if e.phase == phase and e.status == "ok"]
