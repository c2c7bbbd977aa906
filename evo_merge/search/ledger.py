"""Every evaluation goes through the store: looked up first, evaluated only when missing.

A candidate evaluated before (in this process, one that was killed, or a replay) is never
evaluated again; results are stored as they arrive, so an interruption loses only unfinished
candidates. The evaluator is asked for only when something is missing, so reading or replaying
a run loads no model. With an adaptive estimator a candidate is scored in steps: after its first
items, every candidate of the batch whose test wants more items is scored on them, batch by
batch, each step stored with the estimate it leads to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

from evo_merge.errors import message_line
from evo_merge.progress import Progress, no_progress
from evo_merge.search.candidate import Candidate
from evo_merge.search.evaluator import (
    ITEMS,
    JOB_PARTS,
    CandidateFailed,
    Evaluator,
    Items,
    ItemScores,
    Job,
    JobProgress,
)
from evo_merge.search.score_cache import KeptScores
from evo_merge.search.scoring import Scoring
from evo_merge.search.store import ADAPTIVE_FAILED, MEASURE_FAILED, CampaignStore, Evaluation

log = logging.getLogger(__name__)


class EvaluationLedger:
    """The one way a campaign evaluates: each candidate looked up in the store first, evaluated
    only when missing and stored as its scores arrive (the module's docstring says why)."""

    def __init__(self, store: CampaignStore, evaluator: Callable[[], Evaluator], scoring: Scoring,
                 progress: Progress = no_progress, kept: KeptScores | None = None):
        self.store, self._evaluator, self.scoring, self.progress = store, evaluator, scoring, progress
        self.kept = kept  # the score cache (`evaluator.score_cache`), where the campaign names one

    def evaluate(self, candidates: Sequence[Candidate], *, phase: str, generation: int | None,
                 items: Items | Callable[[str], Items], stage: str,
                 phases: Mapping[str, str] | None = None) -> list[Evaluation]:
        """The stored evaluation of each candidate, evaluating (and storing) the missing ones, on
        `items` (or `items(key)`: each candidate's anchors), in `phase` or, for a key in `phases`,
        in its own (one batch: a cluster runs them together)."""
        unique = list({c.key: c for c in candidates}.values())
        wanted = {c.key: items(c.key) if callable(items) else items for c in unique}
        search = self.scoring.search_items()
        whole = {key: asked == search for key, asked in wanted.items()}
        stored = [e for c in unique if (e := self.store.get(c.key)) is not None]
        self._measure_stored([e for e in stored if whole[e.key]])
        have = {e.key for e in stored}
        todo = [c for c in unique if c.key not in have]
        done = len(unique) - len(todo)
        self.progress(stage, done, len(unique))
        if todo:
            jobs = [(c, wanted[c.key]) for c in todo]
            for index, outcome, seconds, cached in self._outcomes(jobs, self._job(stage)):
                candidate = todo[index]
                self._store(candidate, outcome, seconds, (phases or {}).get(candidate.key, phase), generation,
                            whole[candidate.key], cached)
                done += 1
                self.progress(stage, done, len(unique))
        if not all(whole.values()):  # anchors: an adaptive test may want more
            self._adapt(unique, stage)
        return [self.store.get(c.key) for c in candidates]

    def _outcomes(self, jobs: Sequence[Job], job_progress: JobProgress | None = None
                  ) -> Iterator[tuple[int, ItemScores | CandidateFailed, float, int]]:
        """Each job's outcome: (its index, its scores or failure, seconds, how many of its scores the
        score cache answered). With a cache, a job's items the cache keeps are read from it and the
        others scored (and kept), one job at a time in order, so the evaluations are stored in the
        order a run without it stores them; a job the cache answers whole loads no model."""
        if self.kept is None:
            for index, outcome, seconds in self._evaluator().evaluate_many(jobs, job_progress):
                yield index, outcome, seconds, 0
            return
        for index, (candidate, items) in enumerate(jobs):
            asked = {name: self.scoring.tasks[name].item_ids if ids is None else ids for name, ids in items.items()}
            kept, rest = self.kept.split(candidate, asked)
            outcome: ItemScores | CandidateFailed = kept
            seconds = 0.0
            if rest:
                ((_, scored, seconds),) = list(self._evaluator().evaluate_many([(candidate, rest)], job_progress))
                if isinstance(scored, CandidateFailed):
                    outcome = scored
                else:
                    self.kept.keep(candidate, scored)
                    both = {name: {**kept.get(name, {}), **scored.get(name, {})} for name in asked}
                    outcome = {name: {item: both[name][item] for item in items} for name, items in asked.items()}
            yield index, outcome, seconds, 0 if isinstance(outcome, CandidateFailed) else sum(map(len, kept.values()))

    def _job(self, stage: str) -> JobProgress:
        """The progress of each candidate within `stage`, its merge and its items apart (minutes
        per candidate at 7B), as a stage of its own beside it."""
        return lambda done, total, part=ITEMS: self.progress(stage + JOB_PARTS[part], done, total)

    def _adapt(self, candidates: Sequence[Candidate], stage: str, precision: float = 1.0) -> None:
        """Score each candidate's next adaptive step until every test is done (or a step fails)."""
        failed = set(self.store.adaptive_failures())  # not tried again on a resume: the same decisions follow
        while True:
            jobs = []
            for candidate in candidates:
                evaluation = self.store.get(candidate.key)
                if evaluation.status == "ok" and candidate.key not in failed:
                    step = self.scoring.next_items(self.store.item_scores(candidate.key), precision)
                    if step:
                        jobs.append((candidate, step))
            if not jobs:
                return
            self.progress(f"{stage} (adaptive step)", 0, len(jobs))
            for done, (index, outcome, seconds, cached) in enumerate(self._outcomes(jobs), start=1):
                if not self._store_step(jobs[index][0].key, outcome, seconds, cached):
                    failed.add(jobs[index][0].key)
                self.progress(f"{stage} (adaptive step)", done, len(jobs))

    def _store_step(self, key: str, outcome: ItemScores | CandidateFailed, seconds: float, cached: int) -> bool:
        """Store an adaptive step with the estimate it leads to; False where the step failed (its
        scoring raised, or its estimate did not come out): the test ends there, keeping the estimate
        it had (and the step's items), and the failure is recorded first, so a resume makes the
        same decision."""
        if isinstance(outcome, CandidateFailed):
            ended = self._end_test(key, str(outcome))
            if outcome.items_spent:  # the items its tasks scored before one failed: paid for, not kept
                previous = self.store.get(key)
                self.store.add_items(key, {}, previous.estimates, previous.estimate_se, seconds,
                                     items_unkept=outcome.items_spent)
            return ended
        stored = self.store.item_scores(key)
        scores = {n: {**stored.get(n, {}), **outcome.get(n, {})} for n in self.scoring.names}
        try:
            estimates, se = self.scoring.estimate(scores, key)
        except (ValueError, FloatingPointError) as exc:
            ended = self._end_test(key, f"estimation failed: {exc}")
            previous = self.store.get(key)
            self.store.add_items(key, outcome, previous.estimates, previous.estimate_se, seconds,
                                 measured=self._whole(scores), cached=cached)  # on every item, it needs no estimate
            return ended
        # a test that reached every search item measured its candidate, as anchors that are every item do
        self.store.add_items(key, outcome, estimates, se, seconds, measured=self._whole(scores), cached=cached)
        return True

    def _end_test(self, key: str, error: str) -> bool:
        self.store.set_meta(ADAPTIVE_FAILED + key, error)
        self._say_failed(key, error, "it keeps the estimate of its items", ": its next adaptive step")
        return False

    def _measure_stored(self, stored: Sequence[Evaluation]) -> None:
        """Give a stored evaluation that holds every search item its measurement where it has none:
        a version that stored the two apart was killed between them (a full-evaluation search then
        chose its picks without it), or did not record one for anchors that were every search item
        (tasks of a few items per scenario, an lm-eval `limit`: the final phase and `export --pick`
        read it as None; audit 96)."""
        for evaluation in stored:
            if evaluation.status == "ok" and evaluation.measured is None:
                if (whole := self._search_measurement(evaluation.key, {})) is not None:
                    self.store.add_measurement(evaluation.key, whole, {})

    def _store(self, candidate: Candidate, outcome: ItemScores | CandidateFailed, seconds: float,
               phase: str, generation: int | None, whole: bool, cached: int = 0) -> None:
        """Store an evaluation; scored on every search item (`whole`), with its measurement, at once."""
        scores, estimates, se, status, error = {}, None, None, "failed", None
        # the items scored (not those the score cache answered), counted in its cost where they are not kept (it
        # failed on a later task, or its estimate)
        spent = outcome.items_spent if isinstance(outcome, CandidateFailed) else sum(map(len, outcome.values()))
        if isinstance(outcome, CandidateFailed):
            error = str(outcome)
        else:
            try:
                (estimates, se), scores, status = self.scoring.estimate(outcome, candidate.key), outcome, "ok"
            except (ValueError, FloatingPointError) as exc:  # a UserError goes up: every candidate would fail alike
                error = f"estimation failed: {exc}"
        # scored on every search item: asked to be (`whole`), or its anchors were all of them
        measured = (self.scoring.search_scores(scores) if whole else self._whole(scores)) if status == "ok" else None
        self.store.add(candidate.key, phase=phase, generation=generation, method=candidate.method, status=status,
                       estimates=estimates, item_scores=scores, seconds=seconds, error=error,
                       estimate_se=se if status == "ok" else None, measured=measured,
                       items_unkept=0 if status == "ok" else spent - cached, cached=cached if status == "ok" else 0)
        if status != "ok":
            self._say_failed(candidate.key, error, "stored as failed, with the worst fitness on every task (its "
                             "other tasks' scores too), and not tried again by a resume")

    def _say_failed(self, key: str, error: object, outcome: str, what: str = "") -> None:
        """A failure said as it happens: a run of hours goes on past it, and a transient one (one
        task raising once) can cost the search its best candidate; `status` and the report list
        them too."""
        evaluation = self.store.get(key)
        log.warning("evaluation %d (%s)%s failed: %s; %s", evaluation.id, evaluation.method, what,
                    message_line(str(error)), outcome)

    def refine(self, evaluations: Sequence[Evaluation], precision: float, stage: str) -> None:
        """Continue the adaptive tests of stored evaluations to a smaller standard error."""
        self._adapt([Candidate.from_key(e.key) for e in evaluations], stage, precision)

    def measure(self, evaluations: Sequence[Evaluation], stage: str, *, held_out: bool = True,
                among: Items | None = None, by_export: bool = False) -> None:
        """Score stored evaluations on the items they miss (the held-out ones too, unless
        `held_out` is False; only those in `among`, a race stage's sample, when given), and record
        their scores on the search items once they have every one (`by_export`: for `export --pick`,
        whose items are counted apart from the final phase's)."""
        names = self.scoring.names
        missing = [(e, {n: items for n in names if (items := self._missing(e.key, n, held_out, among))})
                   for e in evaluations]
        self._measure_stored([e for e, items in missing if not items])  # asked for nothing more
        failed = self.store.measure_failures()  # not tried again on a resume: the same decisions follow
        todo = [(e, items) for e, items in missing if items and e.status == "ok" and e.key not in failed]
        self.progress(stage, 0, len(todo))
        if not todo:
            return
        jobs = [(Candidate.from_key(e.key), items) for e, items in todo]
        for done, (index, outcome, _, cached) in enumerate(self._outcomes(jobs, self._job(stage)), start=1):
            key = todo[index][0].key
            if isinstance(outcome, CandidateFailed):  # it worked on the anchors: report, keep the estimate
                self.store.set_meta(MEASURE_FAILED + key, str(outcome))
                self._say_failed(key, outcome, "it keeps its estimate and is measured no further", ": measuring it")
            else:
                self.store.add_measurement(key, self._search_measurement(key, outcome), outcome, by_export=by_export,
                                           cached=cached)
            self.progress(stage, done, len(todo))

    def _search_measurement(self, key: str, new: ItemScores) -> dict[str, float] | None:
        """Its scores on the search items once its stored item scores and `new` hold every one,
        else None."""
        stored = self.store.item_scores(key)
        return self._whole({n: {**stored.get(n, {}), **new.get(n, {})} for n in self.scoring.names})

    def _whole(self, scores: ItemScores) -> dict[str, float] | None:
        """The scores on the search items where `scores` hold every one, else None."""
        complete = all(set(self.scoring.search_ids(n)) <= scores.get(n, {}).keys() for n in self.scoring.names)
        return self.scoring.search_scores(scores) if complete else None

    def _missing(self, key: str, name: str, held_out: bool, among: Items | None = None) -> list[str]:
        have = self.store.item_scores(key, name).get(name, {})
        skip = frozenset() if held_out else self.scoring.holdout[name]
        wanted = self.scoring.tasks[name].item_ids if among is None else among.get(name) or ()
        return [i for i in wanted if i not in have and i not in skip]
