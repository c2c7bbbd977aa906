"""How candidates are scored: calibration subjects, the IRT model per task, anchors, estimates.

Calibration evaluates the base, the endpoints and a few warm-up merges on every item; an IRT
model per task is fitted on those responses (or loaded), anchors are chosen, and from then on a
candidate is scored on its anchors and its full score estimated, with a standard error. The
anchors come in `anchor_sets` sets of the same design, each candidate scored on the one its key
hashes to: with one set for all, every candidate shares that set's sampling error, so the front
follows its luck; with several, neighbours' errors differ. With
`estimator.kind: adaptive` the anchors are only the first step of an adaptive test: `next_items`
says which items each candidate needs next, from the scores it has (a pure function of them, so
a resumed run continues each test where it stopped). With `estimator.kind: full` every
candidate is scored on every item and nothing is estimated.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evo_merge.config import EstimatorSpec
from evo_merge.errors import UserError
from evo_merge.irt import (
    ESTIMATOR_REVISION,
    AdaptiveEstimator,
    Estimator,
    IRTModel,
    choose_anchor_method,
    select_anchors,
)
from evo_merge.irt.adaptive import AdaptiveTest
from evo_merge.irt.kinds import ENDPOINT_ESTIMATORS
from evo_merge.search.binding import DEFAULTS_META
from evo_merge.search.candidate import Candidate, reference_candidates
from evo_merge.search.evaluator import ItemScores
from evo_merge.search.irt_files import IRT_FILES_META, RECORDED_IRT_FILES_SINCE, files_digest
from evo_merge.search.store import ANCHORS_META, MIXED_META, REVISION_META, CampaignStore, Record
from evo_merge.tasks.base import FitnessTask

log = logging.getLogger(__name__)

Subjects = list[tuple[str, Candidate]]


def task_scores(scores: ItemScores, names: Sequence[str]) -> dict[str, float]:
    """Mean item score per task."""
    return {name: float(np.mean(list(scores[name].values()))) for name in names}


def task_irt_model(irt_model: Path, name: str, item_ids: Sequence[str], held_out: frozenset[str]) -> IRTModel:
    """Task `name`'s model in the `irt_model` folder, on its search items (`item_ids` less
    `held_out`): a model fitted on other items (another version of the task, another `limit`, a
    run's `irt/` with another hold-out split) would choose anchors the task does not hold, or
    estimate a score over other items, so it is refused, naming what differs. `plan` asks it as
    the runner does: it said "fits" of a model `run` then refused."""
    folder = irt_model / name
    model = IRTModel.load(folder).without_items(held_out)  # fitted on every item, perhaps
    fitted, searched = set(model.item_ids), {i for i in item_ids if i not in held_out}
    if fitted != searched:
        missing, extra = sorted(searched - fitted), sorted(fitted - searched)
        differs = []
        if missing:
            differs.append(f"{len(missing)} of the task's {len(searched)} search items are not in it "
                           f"(e.g. {missing[0]})")
        if extra:
            differs.append(f"{len(extra)} of its items are not search items of the task (e.g. {extra[0]})")
        raise UserError(f"estimator.irt_model: {folder} was fitted on other items than task {name}'s: "
                        f"{'; '.join(differs)}. "
                        "Fit it on this task's responses, or, for a run's irt/ folder, reuse it with the same "
                        "algorithm.seed and final.holdout (they choose the held-out items)")
    return model


class Scoring:
    """Holds the fitted estimators once `fit` ran (the runner's calibration); `estimate` turns anchor scores
    into task scores."""

    def __init__(self, spec: EstimatorSpec, tasks: Mapping[str, FitnessTask], store: CampaignStore, irt_dir: Path,
                 seed: int, holdout: Mapping[str, Sequence[str]] | None = None,
                 before_saving: Callable[[], None] = lambda: None):
        """`before_saving`: called before an IRT model is written into `irt_dir` (the run checks its
        folder is where it opened it)."""
        self.spec, self.tasks, self.store, self.irt_dir, self.seed = spec, dict(tasks), store, irt_dir, seed
        self._before_saving = before_saving
        self._said: set[str] = set()  # fallbacks of automatic anchors already logged (said once, not per task)
        self.holdout = {name: frozenset((holdout or {}).get(name, ())) for name in self.tasks}
        # every anchor set's estimators (`estimator.anchor_sets`)
        self._sets: list[dict[str, Estimator | AdaptiveEstimator]] = []
        self._tighter: dict[tuple[str, float], AdaptiveTest] = {}
        self._known: dict[str, frozenset[str]] = {}
        self._fitted: dict[str, IRTModel] = {}  # `irt_model`'s, checked and loaded once
        self._mixing: dict[Record, Any] = {}  # revisions to record once a reopened folder estimates anew

    @property
    def estimators(self) -> dict[str, Estimator | AdaptiveEstimator] | None:
        """The first anchor set's estimators, one per task (what `status` lists; the IRT models
        every set shares); None before `fit`, and for full evaluation."""
        return self._sets[0] if self._sets else None

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def search_items(self) -> dict[str, list[str] | None]:
        """Every item calibration and the search may see: all but the held-out ones (None: all)."""
        return {name: self.search_ids(name) if self.holdout[name] else None for name in self.tasks}

    def search_ids(self, name: str) -> list[str]:
        """A task's search item ids, listed even when nothing is held out."""
        return [i for i in self.tasks[name].item_ids if i not in self.holdout[name]]

    def search_scores(self, scores: ItemScores) -> dict[str, float]:
        """Mean score per task on its search items (the held-out ones left out)."""
        return task_scores({n: {i: v for i, v in scores[n].items() if i not in self.holdout[n]} for n in self.names},
                           self.names)

    def subjects(self, n_models: int, warmup: Sequence[Candidate]) -> Subjects:
        """Base and endpoints, then warm-up merges when IRT is fitted here."""
        subjects = reference_candidates([f"endpoint-{i}" for i in range(n_models)])
        if self.spec.fits_irt:
            subjects += [(f"warmup-{k}", candidate) for k, candidate in enumerate(warmup)]
        return subjects

    def fitted_model(self, name: str) -> IRTModel:
        """Task `name`'s model from `irt_model`, checked against its search items (`task_irt_model`)
        and loaded once."""
        if name not in self._fitted:
            self._fitted[name] = task_irt_model(Path(self.spec.irt_model), name, self.tasks[name].item_ids,
                                                self.holdout[name])
        return self._fitted[name]

    def check_fitted_models(self) -> None:
        """Before anything is evaluated: every task's `irt_model` holds the task's search items."""
        if self.spec.reads_irt_model:
            for name in self.names:
                self.fitted_model(name)

    def fit(self, subjects: Subjects) -> None:
        """Fit (or load) one estimator per task from the calibration subjects' stored responses."""
        if not self.spec.whole:
            sets = 1 if self.spec.adaptive else self.spec.anchor_sets
            per_task = {name: self._estimators(name, subjects, sets) for name in self.names}
            self._sets = [{name: per_task[name][s] for name in self.names} for s in range(sets)]
            self._record_revision()
        if not (self.spec.whole or self.spec.adaptive):  # where each task's anchors went, for `status`
            self.store.set_meta(ANCHORS_META, {name: e.anchors.counts() for name, e in self.estimators.items()})

    def _record_revision(self) -> None:
        """Record the estimator revision candidates are scored with. A folder reopened across a change
        of the formulas says so, once, and keeps the revisions it was scored with (`status` shows
        them): its stored estimates stay as they were, since the search's replay answers each
        generation with what it was told, but candidates scored from now on are estimated the new
        way, and the final phase chooses finalists among estimates of both."""
        recorded, mixed = self.store.estimator_revisions()
        if recorded == ESTIMATOR_REVISION:
            return
        estimated = sum(e.estimate_se is not None for e in self.store.evaluations())
        if not estimated:
            self.store.set_meta(REVISION_META, ESTIMATOR_REVISION)
            return
        before = "an estimator from before revisions were recorded" if recorded is None else \
            f"estimator revision {recorded}"
        log.warning(f"this run folder's {estimated} estimated candidates were scored by {before}; this evo-merge "
                    f"estimates with revision {ESTIMATOR_REVISION}, so any candidate it scores here is estimated "
                    "otherwise and the folder's estimates may mix the two (what changed: CHANGELOG.md, IRT standard "
                    "errors, estimator revisions)")
        # recorded when the first candidate is estimated anew: a resume of a finished folder scores none
        self._mixing = {MIXED_META: sorted(set(mixed or [recorded or 0]) | {ESTIMATOR_REVISION}),
                        REVISION_META: ESTIMATOR_REVISION}

    def anchor_set(self, key: str) -> dict[str, Estimator | AdaptiveEstimator]:
        """The estimators of the anchor set candidate `key` is scored on: one of `anchor_sets`,
        chosen by a hash of the key, so a candidate keeps its set on a resume and on any worker."""
        digest = hashlib.sha256(key.encode()).digest()
        return self._sets[int.from_bytes(digest[:8], "big") % len(self._sets)]

    def anchor_items(self, key: str) -> dict[str, list[str] | None]:
        """The items candidate `key` is first scored on: its anchor set's, or every search item."""
        if self.estimators is None:
            return self.search_items()
        return {name: list(estimator.anchor_ids) for name, estimator in self.anchor_set(key).items()}

    def estimate(self, scores: ItemScores, key: str) -> tuple[dict[str, float], dict[str, float] | None]:
        """(full-score estimate, its standard error) per task of candidate `key` from its `scores`
        (on its anchor set's items); item scores lie in [0, 1], so an estimate is kept there too.
        Full evaluation estimates nothing: no standard error. FloatingPointError where an estimate
        or its standard error is not finite. The first estimate made in a reopened folder records
        the estimator revision its later estimates come from (`MIXED_META`): only then do they mix."""
        if self.estimators is None:
            return task_scores(scores, self.names), None
        if self._mixing:
            self.store.set_metas(self._mixing)
            self._mixing = {}
        estimators = self.anchor_set(key)
        results = {name: estimators[name].estimate(self._modelled(name, scores)) for name in self.names}
        for name, r in results.items():  # stored, it would read back as a damaged run folder
            if not (np.isfinite(r["overall"]) and np.isfinite(r.se["overall"])):
                raise FloatingPointError(f"task {name!r}: the estimate {r['overall']} ± {r.se['overall']} "
                                         "is not finite")
        return ({name: float(np.clip(r["overall"], 0.0, 1.0)) for name, r in results.items()},
                {name: float(r.se["overall"]) for name, r in results.items()})

    def next_items(self, scores: ItemScores, precision: float = 1.0) -> dict[str, list[str]] | None:
        """An adaptive test's next step per task (None when every task's test is done, or for
        fixed anchors). `precision` below 1 continues the test to a smaller standard error
        (target × precision) with a larger item budget (max_items / precision)."""
        if self.estimators is None or not self.spec.adaptive:
            return None
        steps = {name: self._test(name, precision).next_items(self._modelled(name, scores)) for name in self.names}
        steps = {name: items for name, items in steps.items() if items}
        return steps or None

    def _modelled(self, name: str, scores: ItemScores) -> dict[str, float]:
        """A task's scores on the items its IRT model knows: a measured candidate also holds
        held-out items, which the model (fitted on search items only) never saw."""
        if name not in self._known:
            self._known[name] = frozenset(self.estimators[name].model.item_ids)
        known = self._known[name]
        return {item: value for item, value in scores.get(name, {}).items() if item in known}

    def adaptive(self) -> bool:
        return self.estimators is not None and self.spec.adaptive

    def _test(self, name: str, precision: float) -> AdaptiveTest:
        test = self.estimators[name].test
        if precision == 1.0:
            return test
        key = (name, precision)
        if key not in self._tighter:
            self._tighter[key] = AdaptiveTest(test.model, test.target_se * precision,
                                              max(1, round(test.max_items / precision)), test.step, seed=test.seed,
                                              model_error=test.model_error)
        return self._tighter[key]

    def uniform_tasks(self, subjects: Subjects) -> dict[str, float]:
        """Tasks on which every subject scored the same on every search item, with that score: a
        task broken for these models (a tokenizer mapping its answers to `<unk>`) ran a whole
        campaign on estimates of noise, its picks "no better than the base"."""
        uniform = {}
        for name in self.names:
            scores = self._responses(name, subjects)["score"]
            if len(scores) and scores.nunique() == 1:
                uniform[name] = float(scores.iloc[0])
        return uniform

    def _responses(self, name: str, subjects: Subjects) -> pd.DataFrame:
        scenarios = self.tasks[name].scenarios or {}
        rows = [(label, item, score, scenarios.get(item, name))
                for label, candidate in subjects
                for item, score in self.store.item_scores(candidate.key, name).get(name, {}).items()
                if item not in self.holdout[name]]  # endpoints measured on the holdout since: never fitted on
        return pd.DataFrame(rows, columns=["subject", "item", "score", "scenario"])

    def _own_model(self, name: str, folder: Path) -> IRTModel:
        """The IRT model this run fitted and saved, as it saved it (`IRT_FILES_META`: an edit of its
        parameters, shapes kept, estimated the rest of the run with another model, silently); a
        damaged or changed one says the way on, since the run can fit it again from the calibration
        responses it stores. A folder saved before the digest was kept is recorded as it is."""
        way_on = (f"; this run fitted it: remove {folder} and `evo-merge resume` fits it again from the stored "
                  "calibration (its candidates after that are estimated by the new fit)")
        try:
            model = IRTModel.load(folder)
        except UserError as err:
            raise UserError(f"{err}{way_on}") from None
        recorded = self.store.get_meta(IRT_FILES_META, {})
        if name not in recorded:
            self._record_files(name, folder)
        elif recorded[name] != files_digest(folder):
            raise UserError(f"{folder}: its files changed since this run saved them{way_on}")
        return model

    def _saved_here(self, name: str, folder: Path) -> bool:
        """Whether `folder` holds the IRT model this run saved: recorded (`IRT_FILES_META`), or from
        a run written before the record was kept (defaults version 9 or earlier). In a later run a
        model with no record is another process's (a run whose folder was moved under it wrote its
        own there, audit 138), or one whose record the database lost (a log cut short): it is fitted
        again from the run's stored calibration, which is deterministic, and replaced."""
        if name in self.store.get_meta(IRT_FILES_META, {}):
            return True
        if self.store.get_meta(DEFAULTS_META, 1) < RECORDED_IRT_FILES_SINCE:
            return True
        log.warning("%s: an IRT model this run has no record of saving (written there by another process, or its "
                    "record lost); fitting the run's own again from its calibration, which replaces it", folder)
        return False

    def _record_files(self, name: str, folder: Path) -> None:
        self.store.set_meta(IRT_FILES_META, {**self.store.get_meta(IRT_FILES_META, {}), name: files_digest(folder)})

    def _estimators(self, name: str, subjects: Subjects, sets: int) -> list[Estimator | AdaptiveEstimator]:
        """Task `name`'s IRT model, fitted (or loaded) once, and an estimator on each of `sets`
        anchor sets drawn from it (the first with the campaign's seed, as before there were sets)."""
        spec = self.spec
        folder = self.irt_dir / name
        endpoints = [label for label, _ in subjects if label.startswith("endpoint-")]
        if spec.irt_model is not None:  # fitted elsewhere
            model = self.fitted_model(name)
            endpoint_subjects = [s for s in subjects if s[0] in endpoints]
            endpoint_arg: Sequence[str] | pd.DataFrame = self._responses(name, endpoint_subjects)
        elif (folder / "model.json").exists() and self._saved_here(name, folder):
            model, endpoint_arg = self._own_model(name, folder), endpoints
        else:
            options = {k: v for k, v in (("lr", spec.lr), ("epochs", spec.epochs)) if v is not None}
            if spec.backend == "pyirt":  # its fits print a line each (time, rate): said whose they are
                log.info("tasks.%s: fitting its IRT model with py-irt on %d calibration subjects", name, len(subjects))
            model = IRTModel.fit(
                self._responses(name, subjects), backend=spec.backend, dims=spec.dims, seed=self.seed, **options
            )
            self._before_saving()
            model.save(folder)
            self._record_files(name, folder)
            endpoint_arg = endpoints
        if spec.adaptive:  # items chosen per candidate: no fixed anchor set
            return [AdaptiveEstimator(model, seed=self.seed, target_se=spec.target_se, max_items=spec.max_items)]
        # an automatic method resolved; a reused model's subjects are not those this run measured
        whose = "calibration subjects" + (" of estimator.irt_model" if spec.irt_model is not None else "")
        method, reason = choose_anchor_method(spec.anchor_method, len(model.subject_ids), whose)
        if reason and reason not in self._said:  # the designed choice with few subjects: said, not warned
            self._said.add(reason)
            log.info(reason)
        endpoint_arg = endpoint_arg if spec.kind in ENDPOINT_ESTIMATORS else None
        first = select_anchors(model, spec.anchors, method, seed=self.seed, allocation=spec.anchor_allocation,
                               balance=spec.anchor_balance)
        # the other sets with the first's count per scenario (an allocation may draw on the seed)
        drawn = [first] + [select_anchors(model, spec.anchors, method, seed=self.seed + s, balance=spec.anchor_balance,
                                          allocation=spec.anchor_allocation, counts=first.counts())
                           for s in range(1, sets)]
        return [Estimator(model, anchors, spec.kind, endpoints=endpoint_arg) for anchors in drawn]

