"""The campaign: calibrate IRT, run the ask-and-tell search, measure the picks' candidates, export.

`CampaignRunner.open` does the one-off work (resolve, align, bind the run folder, build the
tasks); the runner then composes the parts, each taking its collaborators as arguments:
`Scoring` (calibration, IRT, estimates), `EvaluationLedger` (store-first evaluation),
`run_search` (the ask-and-tell loop, replayed from the store on resume), `front` (measure,
pick) and `export`. The evaluator is created only when something must be evaluated.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from functools import cached_property
from itertools import chain, zip_longest
from pathlib import Path

from evo_merge.config import Campaign
from evo_merge.errors import UserError, message_line
from evo_merge.markup import shell, visible
from evo_merge.merge.registry import MASS, method_code
from evo_merge.progress import Progress, no_progress
from evo_merge.search.algorithms import SearchAlgorithm, make_algorithm
from evo_merge.search.candidate import Candidate, endpoint_candidate, reference_candidates, standard_merges
from evo_merge.search.evaluator import Evaluator, campaign_tasks
from evo_merge.search.evaluators import make_evaluator
from evo_merge.search.export import export_candidate, export_picks, record_task_meta
from evo_merge.search.front import candidates, measure_final, measure_picks
from evo_merge.search.holdout import HOLDOUT_META, check_picks_held_out, holdout_items, scenario_groups, shortfalls
from evo_merge.search.kinds import candidate_kind
from evo_merge.search.layout import EVALUATIONS_CSV, IRT_FOLDER
from evo_merge.search.ledger import EvaluationLedger
from evo_merge.search.lock import RunLock
from evo_merge.search.objectives import Objectives
from evo_merge.search.race import small_pick_samples
from evo_merge.search.refine import resolve_front
from evo_merge.search.run_folder import check_run_folder, remove_unused_run_folder
from evo_merge.search.score_cache import CacheUnusable, KeptScores, ScoreCache, score_keys
from evo_merge.search.scoring import Scoring
from evo_merge.search.space import SearchSpace, coefficient_groups
from evo_merge.search.store import (
    BASELINE,
    BASELINES_META,
    CALIBRATION,
    CALIBRATION_META,
    EVALUATED_ON_META,
    CampaignStore,
    Evaluation,
    Record,
    evaluated_on,
)
from evo_merge.search.study import GenerationDone, run_search
from evo_merge.search.workspace import Workspace, record_facts
from evo_merge.tasks.base import FitnessTask
from evo_merge.tasks.registry import task_code
from evo_merge.user_paths import expand_home
from evo_merge.weights.export import check_output_folder

log = logging.getLogger(__name__)
TASK_DATA_META = Record("task_data", dict[str, str])  # task -> digest of its items and their scoring, as first read
# task -> the scheme its digest's definition was computed under, where not the first (`digest_scheme`)
TASK_DATA_SCHEMES_META = Record("task_data_schemes", dict[str, int])
METHOD_CODE_META = Record("method_code", dict[str, str])  # a method of your own -> digest of its file, as first read
TASK_CODE_META = Record("task_code", dict[str, str])  # a plugin task -> digest of its files, as first read


def campaign_objectives(campaign: Campaign) -> Objectives:
    return Objectives.of([t.label for t in campaign.tasks], [t.direction for t in campaign.tasks],
                         campaign.objective.weights)


def search_space(workspace: Workspace) -> SearchSpace:
    """The genome over the configured methods, each method's ranges resolved by its kind; a
    hyperparameter given one value is fixed at it, in every candidate, and left out of the genome."""
    campaign = workspace.campaign
    fixed = {name: {k: v for k, v in settings.items() if not isinstance(v, tuple)}
             for name, settings in campaign.methods.items()}
    methods = {name: candidate_kind(name).searched_ranges(name, settings, workspace.base)
               for name, settings in campaign.methods.items()}
    coefficients = campaign.coefficients
    return SearchSpace(methods, len(workspace.models), (coefficients.low, coefficients.high), coefficients.granularity,
                       coefficient_groups(coefficients.block_size, workspace.base), fixed)


class CampaignRunner:
    def __init__(self, workspace: Workspace, tasks: dict[str, FitnessTask], holdout: dict[str, list[str]],
                 progress: Progress = no_progress, evaluator_factory: Callable[..., Evaluator] = make_evaluator,
                 lock: bool = False):
        """`lock`: whether `run` holds the run folder's lock (`open`'s)."""
        campaign = workspace.campaign
        self.workspace, self.tasks, self.holdout, self._factory = workspace, tasks, holdout, evaluator_factory
        self.objectives = campaign_objectives(campaign)
        self.scoring = Scoring(campaign.estimator, tasks, workspace.store, workspace.run_dir / IRT_FOLDER,
                               campaign.algorithm.seed, self.holdout, before_saving=workspace.check_in_place)
        self.ledger = EvaluationLedger(workspace.store, self.evaluator, self.scoring, progress)
        self.on_generation: list[GenerationDone] = []
        self._evaluator: Evaluator | None = None
        self._locking = lock
        self.followed = False  # whether the campaign's trackers follow it (report.tracking.follow_campaign)

    @cached_property
    def space(self) -> SearchSpace:
        """The campaign's genome (`search_space`), resolved once: with `blocks:N` or MASS it reads
        the base's checkpoint."""
        return search_space(self.workspace)

    @classmethod
    def open(cls, campaign: Campaign, root: str | Path | None = None, run_dir: str | Path | None = None,
             progress: Progress = no_progress, *, lock: bool = True) -> CampaignRunner:
        """Open (or create) the run folder `run_dir` for `campaign` and build its tasks. `root`: the
        folder its relative paths are read from; a loaded campaign's are its file's folder (checked
        there as it loaded, so another root is refused: a runner given the working directory merged
        other models than `check_campaign_fits` had checked, audit 142), a campaign built in Python's
        the working directory unless given.

        The folder is checked as `run` checks it (a folder of other files, or one holding a link,
        is refused), and a start that fails here leaves no folder it created, so the corrected
        campaign starts afresh in it. With `lock`, the run folder's lock is held while the folder is
        bound and while `run` works, as the commands hold it: a `resume` started beside a library
        run is refused, and `status` names the process. `lock=False` where the caller holds it
        already (the commands hold it across the whole command)."""
        if not isinstance(campaign, Campaign):  # a path or a dict: found here, not as an AttributeError deep inside
            raise TypeError("CampaignRunner.open takes a Campaign (Campaign.load(path)), "
                            f"not {type(campaign).__name__}")
        if run_dir is None:
            raise TypeError("CampaignRunner.open needs run_dir: the folder the run is written to")
        root = _campaign_root(campaign, root)
        run_dir = expand_home(run_dir)
        check_run_folder(run_dir, option=None)
        new = not run_dir.exists()
        with RunLock(run_dir) if lock else nullcontext():
            workspace = None
            try:
                workspace = Workspace.open(campaign, root, run_dir)
                spec = workspace.campaign
                tasks = campaign_tasks(spec)
                record_facts(workspace.store, spec, {name: len(task.item_ids) for name, task in tasks.items()},
                             workspace.stored_dtype_name(), workspace.storage_rounding())
                record_task_meta(workspace.store, spec, tasks)
                runner = cls(workspace, tasks, holdout_items(tasks, spec.final.holdout, spec.algorithm.seed), progress,
                             lock=lock)
                runner.check_holdout()
                check_picks_held_out(workspace.store)
                runner.check_task_data()
                runner.check_method_code()
                runner.check_task_code()
                runner.ledger.kept = kept_scores(workspace, tasks, progress)
            except BaseException:
                if workspace is not None:
                    workspace.store.close()
                if new:
                    remove_unused_run_folder(run_dir)
                raise
        return runner

    def check_holdout(self) -> None:
        """The held-out items are drawn from each task's items by position: a task whose items were
        reordered or changed since the run began draws others, some of which the search has scored,
        and the picks' held-out scores would be measured on items choices were made on."""
        store = self.workspace.store
        recorded = store.get_meta(HOLDOUT_META)
        if recorded is None:  # a run that has not begun, or from before items were held out
            return
        for name in sorted(set(recorded) | set(self.holdout)):
            drawn, kept = set(self.holdout.get(name, ())), set(recorded.get(name, ()))
            if drawn != kept:
                raise UserError(f"{store.run_dir / store.DB}: task {name!r}'s held-out items are not those this run "
                                f"drew ({len(drawn ^ kept)} items differ): its items changed order or "
                                "content since the run began (or the record was edited), so the search may have "
                                "scored them; restore the task's data, or start the campaign in a new run folder")

    def check_task_data(self) -> None:
        """A task's items can keep their ids while what they say changes (a data file's answers
        edited), or while how they are scored does (the YAML's answer template, the prompt function
        it names): the run's scores, estimates and picks were measured as it was when the run began,
        and one run mixing two answer keys would rank its candidates on both. Each task that gives a
        digest (`items_digest`, `<docs>:<definition>`: lm-eval tasks, the shipped benchmarks) has it
        recorded when a run first opens and compared after; a change is refused, naming the task and
        which part changed. A definition recorded under an older scheme (`digest_scheme`: how the
        definition is computed, which a later evo-merge may change), or not at all (a run before the
        definition counted), is compared on the docs, then recorded anew; one recorded under a later
        scheme than the task gives now (a task whose few-shot prompts were removed) is compared. Tasks
        that give no digest (plugins) are not checked."""
        store = self.workspace.store
        recorded = store.get_meta(TASK_DATA_META, {})
        schemes = store.get_meta(TASK_DATA_SCHEMES_META, {})
        now = {name: digest for name, task in self.tasks.items()
               if isinstance(digest := getattr(task, "items_digest", None), str)}
        now_schemes = {name: getattr(self.tasks[name], "digest_scheme", 1) for name in now}
        for name in sorted(now):
            if (was := recorded.get(name)) is None or was == now[name]:
                continue
            docs, _, definition = now[name].partition(":")
            was_docs, _, was_definition = was.partition(":")
            if was_docs != docs:
                raise UserError(f"task {name!r}: what its items say changed since this run began (its data "
                                "edited, or its docs given in another order?), where its item ids did not: the run's "
                                "scores were measured on the data it had then; restore that data, or start the "
                                "campaign in a new run folder")
            if was_definition and schemes.get(name, 1) >= now_schemes[name]:  # older: compared on the docs
                raise UserError(f"task {name!r}: how its items are scored changed since this run began (its YAML: "
                                "prompt, answer, choices, metric or filter, or the code it names; or lm-eval, upgraded "
                                "to a version that scores it otherwise), where its items did not: the run's scores "
                                "were measured as it was then; restore it, or start the campaign in a new run folder")
        if {**recorded, **now} != recorded:
            store.set_meta(TASK_DATA_META, {**recorded, **now})
        later = {name: scheme for name, scheme in now_schemes.items() if scheme != schemes.get(name, 1)}
        if later:  # a folder whose every definition is of the first scheme holds no record of it
            store.set_meta(TASK_DATA_SCHEMES_META, {**schemes, **later})

    def check_method_code(self) -> None:
        """A merge method of your own whose code changed between a run and its resume merged the
        candidates after it otherwise than those before, and a pick measured before the change was
        exported with the weights of the code after (audit 135). The file defining each such method
        is recorded when the run first opens and compared after (`_check_code`); evo-merge's own
        methods are not (they change with evo-merge), nor one that no file holds (a notebook's)."""
        self._check_code(METHOD_CODE_META, "merge method", "merged", {
            name: code for name in self.workspace.campaign.methods
            if name != MASS and (code := method_code(name)) is not None})

    def check_task_code(self) -> None:
        """A plugin task whose code changed between a run and its resume (its scoring edited)
        scored the candidates after it otherwise than those before, and the run ranked them on both:
        its files are recorded and compared as a method's are (`task_code`). Tasks built from files
        of items are checked on their data instead (`check_task_data`)."""
        specs = {spec.label: spec.task for spec in self.workspace.campaign.tasks}
        self._check_code(TASK_CODE_META, "task", "scored", {
            name: code for name, task in self.tasks.items() if (code := task_code(specs[name], task)) is not None})

    def _check_code(self, record: Record, kind: str, done: str, now: dict[str, tuple[str, str]]) -> None:
        """Refuse code (name -> (its files, their digest)) changed since the run recorded it, the run's
        candidates having been `done` (merged, scored) by the code it had then; record
        what it has not. A run begun before the record holds none and gains none: the code it ran is
        not known (audit 136), and a finished folder's export writes nothing new."""
        store = self.workspace.store
        recorded = store.get_meta(record)
        if recorded is None and store.items_evaluated():  # a run begun before the record: its code then is unknown
            return
        recorded = recorded or {}
        for name, (file, digest) in sorted(now.items()):
            if recorded.get(name, digest) != digest:
                raise UserError(f"{kind} {name!r}: its code ({file}) changed since this run began, and the run's "
                                f"candidates were {done} by the code it had then; restore it, or start the campaign "
                                "in a new run folder")
        digests = {name: digest for name, (_, digest) in now.items()}
        if {**recorded, **digests} != recorded:
            store.set_meta(record, {**recorded, **digests})

    @property
    def progress(self) -> Progress:
        return self.ledger.progress

    @progress.setter
    def progress(self, value: Progress) -> None:
        self.ledger.progress = value

    def evaluator(self) -> Evaluator:
        """The evaluator, created on first need: loading models is the slow part of a resume."""
        if self._evaluator is None:
            ws = self.workspace
            evaluator = self._factory(ws.evaluation_campaign(), *ws.sources(), self.tasks)
            bench = evaluator.workbench()
            if bench is not None:  # fail before any evaluation when a kind cannot work on these models
                for method in ws.campaign.methods:
                    candidate_kind(method).check(bench)
            self._record_device_types(evaluator.device_types())
            self._evaluator = evaluator
        return self._evaluator

    def _record_device_types(self, types: list[str]) -> None:
        """Keep every device type the run builds candidates on (what an export compares with); a
        resume on another type says so: DARE and DELLA draw other drops there."""
        store = self.workspace.store
        recorded = evaluated_on(store)
        if new := [t for t in types if t not in recorded]:
            if recorded:
                log.warning("this run built its candidates on %s, and now builds them on %s too (a resume, or an "
                            "export measuring a pick): DARE and DELLA candidates draw other drops on each, and a "
                            "pick is exported as the device of the export draws it",
                            " and ".join(recorded), " and ".join(new))
            store.set_meta(EVALUATED_ON_META, sorted({*recorded, *types}))

    def calibrate(self) -> None:
        """Base and endpoints on the search items (+ warm-up merges when IRT is fitted here), then
        IRT. Warm-ups that are standard merges are stored as baselines: candidates, measured."""
        if self.workspace.store.get_meta(HOLDOUT_META) is None:  # said once, as the split is first recorded
            for name, (asked, held) in shortfalls(self.tasks, self.workspace.campaign.final.holdout,
                                                  self.holdout).items():
                log.warning("task %r: %d items held out, not the %d final.holdout asks for (each of its scenarios "
                            "keeps one item for the search)", name, held, asked)
        self.workspace.store.set_meta(HOLDOUT_META, self.holdout)
        standard, random = self.warmup_merges(self.space)
        if standard:  # named from the start: a report of a run cut short before the final phase left them blank
            self.workspace.store.set_meta(BASELINES_META, _baseline_labels(self.space))
        subjects = self.scoring.subjects(len(self.workspace.models), standard + random)
        self.workspace.store.set_meta(CALIBRATION_META, len(subjects))
        for label, candidate in subjects:  # a base or endpoint that failed stopped the run here: tried again
            if not label.startswith("warmup-") and self.workspace.store.forget_failed(candidate.key):
                log.info("calibration subject %s failed before: evaluated again", label)
        spent = self.workspace.store.items_evaluated()
        evaluations = self.ledger.evaluate([c for _, c in subjects], phase=CALIBRATION, generation=None,
                                           items=self.scoring.search_items(), stage="calibration",
                                           phases={c.key: BASELINE for c in standard})
        for (label, _), evaluation in zip(subjects, evaluations):
            if evaluation.status != "ok" and not label.startswith("warmup-"):  # failed warm-ups are left out
                raise UserError(f"calibration subject {label} failed to evaluate: {message_line(evaluation.error)}; "
                                "`evo-merge resume` evaluates it again")
        scored = [s for s, e in zip(subjects, evaluations) if e.status == "ok"]
        if failed := [label for (label, _), e in zip(subjects, evaluations) if e.status != "ok"]:
            # said on every resume too: a plugin fixed since does not bring them back (audit 135)
            log.warning("%d of the %d calibration subjects failed (%s first) and are left out: IRT is fitted on %d; "
                        "a failed evaluation is not tried again by a resume, so once its cause is fixed a new run "
                        "folder calibrates on all of them", len(failed), len(subjects), failed[0], len(scored))
        # said as the calibration is measured, not again on each resume that replays it
        uniform = self.scoring.uniform_tasks(scored) if self.workspace.store.items_evaluated() != spent else {}
        for name, score in uniform.items():
            log.warning("task %r: every calibration subject (the base, the endpoints%s) scored %g on every search "
                        "item: the task may be broken for these models; check it with `evo-merge eval` on an "
                        "endpoint (its prompts, the tokenizer, the metric)", name,
                        ", the warm-ups" if len(scored) > 1 + len(self.workspace.models) else "", score)
        self.scoring.fit(scored)

    def warmup_merges(self, space: SearchSpace) -> tuple[list[Candidate], list[Candidate]]:
        """IRT's warm-up merges: (standard merges, random merges). Where the standard merges are
        candidates (`final.baselines`) and `warmup_standard` is on, those the genome expresses come
        first, one method after another: measured on every search item once, they calibrate IRT
        and then compete in the search and the final phase with their measured scores, where random
        warm-ups are measured only to calibrate. Random merges fill the rest. A standard merge that
        is an endpoint (with one endpoint, task arithmetic at lambda 1 is the endpoint itself) is
        calibrated as that endpoint already: no warm-up, nor a candidate."""
        campaign = self.workspace.campaign
        n = campaign.estimator.warmup_merges
        standard: list[Candidate] = []
        if campaign.estimator.warmup_standard and campaign.final.baselines:
            by_method: dict[str, list[Candidate]] = {}
            for candidate in _baselines(space).values():
                by_method.setdefault(candidate.method, []).append(candidate)
            standard = [c for c in chain.from_iterable(zip_longest(*by_method.values())) if c is not None][:n]
        random = space.sample(n - len(standard), seed=campaign.algorithm.seed + 1) if n > len(standard) else []
        return standard, random

    def algorithm(self) -> SearchAlgorithm:
        spec = self.workspace.campaign.algorithm
        space = self.space
        seeds = list(standard_merges(space.n_models).values()) if spec.seed_standard_merges else []
        if seeds and spec.name != "cmaes":
            # a population also starts from the front's corners, each endpoint alone: they were
            # scored in calibration (looked up, never picked), and crossing them with the standard
            # merges breeds the specialists that the best-per-task picks need
            seeds = [endpoint_candidate(i, space.n_models) for i in range(space.n_models)] + seeds
        return make_algorithm(
            spec.name,
            space,
            n_objectives=self.objectives.n_objectives,
            population=spec.population,
            generations=spec.generations,
            seed=spec.seed,
            seeds=seeds,
        )

    def search(self) -> None:
        def notify(generation: int, evaluations: list[Evaluation]) -> None:
            self.workspace.check_in_place()  # stored: a folder moved meanwhile stops the run here, not at its writes
            for callback in self.on_generation:
                callback(generation, evaluations)

        run_search(
            self.algorithm(),
            self.ledger,
            self.objectives,
            self.scoring.anchor_items,
            self.workspace.campaign.algorithm.generations,
            notify,
        )

    def evaluate_baselines(self) -> None:
        """The standard merges the genome can express, on the anchors like any candidate (those
        the search seeded are looked up): part of the front and picks unless `final.baselines` is off."""
        merges = _baseline_labels(self.space)
        self.workspace.store.set_meta(BASELINES_META, merges)
        if self.workspace.campaign.final.baselines:
            self.ledger.evaluate(
                [Candidate.from_key(k) for k in merges],
                phase=BASELINE,
                generation=None,
                items=self.scoring.anchor_items,
                stage="baselines",
            )

    def measure_final(self) -> list[Evaluation]:
        """Race each pick's top candidates, the front members and the baselines; return what the
        picks are chosen among (`front.measure_final`)."""
        references = [c for _, c in reference_candidates(self.workspace.endpoint_labels())]
        campaign = self.workspace.campaign
        return measure_final(self.ledger, self.objectives, campaign.final, self.space, references,
                             seed=campaign.algorithm.seed)

    def run(self, report: Callable[[dict[str, tuple[int, Path]]], None] | None = None,
            ) -> tuple[list[Evaluation], dict[str, tuple[int, Path]]]:
        """The whole campaign: (candidates measured on every search item, exported picks name ->
        (evaluation id, folder)). The run is marked finished at the end, after `report` (told the
        picks) has written what the user reads: a run cut short while writing it is not finished."""
        with RunLock(self.workspace.run_dir) if self._locking else nullcontext():
            return self._run(report)

    def _raced_items(self) -> dict[str, int]:
        """Search items per task, which a race samples, or none where no race runs: every
        candidate scored on every search item of every task (`kind: full`, or `anchors` at least
        each scenario's search items) is measured whole. Where one task's are not, the race
        samples every task, those the anchors cover too."""
        spec = self.workspace.campaign.estimator
        searched = {name: self.scoring.search_ids(name) for name in self.tasks}

        def covered(name: str) -> bool:  # every search item of the task among a candidate's anchors
            groups = scenario_groups(searched[name], self.tasks[name].scenarios)
            return spec.anchors >= max(map(len, groups.values()), default=0)

        if spec.whole or (not spec.adaptive and all(map(covered, searched))):
            return {}
        return {name: len(ids) for name, ids in searched.items()}

    def _run(self, report: Callable[[dict[str, tuple[int, Path]]], None] | None,
             ) -> tuple[list[Evaluation], dict[str, tuple[int, Path]]]:
        campaign = self.workspace.campaign
        if campaign.tracking is not None and not self.followed:
            log.warning("the campaign's tracking: section is followed by `evo-merge run` and `resume`; a runner "
                        "follows it once evo_merge.report.tracking.follow_campaign(runner) is called (see "
                        "docs/campaigns.md, From Python)")
        self.scoring.check_fitted_models()
        kept = self._exported_picks()  # before anything runs: a run that lost generations chooses again
        if not self.workspace.store.items_evaluated():  # a new run: its race can still be changed
            if note := small_pick_samples(self._raced_items(), campaign.final.race, campaign.final.measure_whole):
                log.warning(note)
        try:
            self.calibrate()
            self.search()
            self.evaluate_baselines()
            resolve_front(self.ledger, self.objectives)
            pool = self.measure_final()
            chosen = kept or measure_picks(self.ledger, pool, self.objectives, campaign.final)
            if not chosen and (failures := self.workspace.store.measure_failures()):
                raise _nothing_measured(self.workspace.store, failures)
            exported = export_picks(self.workspace, chosen, self._evaluator, self.progress)
            measured = [e for e in candidates(self.workspace.store) if e.measured is not None]
            if report is not None:
                self.workspace.check_in_place()
                report(exported)
            self.workspace.store.mark_finished()
        finally:
            self.close()
        return measured, exported

    def finished(self) -> bool:
        """Whether the run folder holds the whole campaign, finished."""
        return self.workspace.store.finished(self.workspace.campaign.algorithm.generations)

    def _exported_picks(self) -> dict[str, Evaluation]:
        """A finished run's picks as it exported them (none for a run still under way): they are not
        chosen again on its resume, where a candidate measured since (`export --pick`) would take a
        pick's place and replace a folder that may already be published."""
        if not self.finished():
            return {}
        store = self.workspace.store
        by_id = {e.id: e for e in store.evaluations()}
        picks = {name: by_id.get(eid) for name, (eid, _) in store.exported().items()}
        # an evaluation gone or no longer measured (an edited store): chosen again, not exported unmeasured
        return picks if all(p is not None and p.status == "ok" and p.measured for p in picks.values()) else {}

    def export_evaluation(self, eid: int, out: str | Path, *, overwrite: bool = False) -> tuple[Evaluation, Path]:
        """Evaluation `eid` as a model folder at `out` (`export --pick`), with the evaluation as it
        was exported. One not yet scored on every item (held-out ones included) is measured first
        and stored, so its card and the report show measured scores; a failed measurement exports
        nothing. The resident models are freed before the file merge (both at once would not fit at
        size), and the model files are checked unchanged since the run read them, after the
        measuring's minutes: the card's scores are of those weights. The run folder's lock is held
        throughout, as `run` holds it (`lock=False`: the caller holds it, as the command does)."""
        with RunLock(self.workspace.run_dir) if self._locking else nullcontext():
            return self._export_evaluation(eid, out, overwrite)

    def _export_evaluation(self, eid: int, out: str | Path, overwrite: bool) -> tuple[Evaluation, Path]:
        workspace = self.workspace
        store = workspace.store
        evaluation = next((e for e in store.evaluations() if e.id == eid), None)
        if evaluation is None or evaluation.status != "ok":
            raise UserError(f"--pick {eid}: no successful evaluation with that id in {workspace.run_dir} (the id "
                            f"column of {workspace.run_dir / EVALUATIONS_CSV}, or a pick's evaluation in "
                            "`evo-merge status`)")
        _refuse_an_input(evaluation, workspace)
        check_output_folder(expand_home(out), overwrite, [workspace.base, *workspace.models])  # not after
        try:
            self.ledger.measure([evaluation], f"measuring evaluation {eid}", by_export=True)
        finally:
            self.close()
        error = store.measure_failures().get(evaluation.key)
        if error is not None:  # an export is measured, or not written (a failure's message may be empty)
            raise UserError(f"--pick {eid}: scoring it on every item failed ({message_line(error)}); not exported")
        measured = store.get(evaluation.key)  # as the measurement left it
        picks = [name for name, (other, _) in store.exported().items() if other == eid]  # its card says so too
        workspace.check_models_unchanged()
        folder = export_candidate(workspace, measured, out, overwrite=overwrite, progress=self.progress,
                                  chosen_as=picks)
        return measured, folder

    def close(self) -> None:
        """Stop the evaluator (a dask cluster, or the connection to one) and let go of it: the
        resident model and task vectors are freed (a whole GPU at 7B); it is made again when needed."""
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def __enter__(self) -> CampaignRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        """`with CampaignRunner.open(...) as runner:` closes the evaluator and the run's database (the
        database also where stopping the evaluator fails)."""
        try:
            self.close()
        finally:
            self.workspace.store.close()
            if self.ledger.kept is not None:
                self.ledger.kept.cache.close()


def kept_scores(workspace: Workspace, tasks: dict[str, FitnessTask], progress: Progress = no_progress
                ) -> KeptScores | None:
    """The score cache the campaign names (`evaluator.score_cache`), with this run's keys: every
    file of its models hashed whole (once per file: 12 s or more per 7B model), its tasks' digests;
    None where it names none."""
    spec = workspace.campaign
    if spec.evaluator.score_cache is None:
        return None
    import torch

    from evo_merge.merge.registry import get_method
    from evo_merge.weights.devices import resolve_device
    from evo_merge.weights.digest import model_file_paths

    try:
        cache = ScoreCache(Path(spec.evaluator.score_cache))
    except CacheUnusable as exc:  # a saving, not the run's record: the run goes on scoring everything itself
        log.warning("evaluator.score_cache: %s; this run goes on without it", exc)
        return None
    files = [model_file_paths(ref) for ref in workspace.evaluated_references()]
    stage, total, digests = "score cache: hashing the models' files", sum(map(len, files)), []
    progress(stage, 0, total)
    for model in files:  # once each: a read-only cache remembers none, and a 7B model's files take 12 s or more
        digests.append([(file.name, cache.file_digest(file)) for file in model])
        progress(stage, sum(map(len, digests)), total)
    methods: dict[str, str | None] = {"task_arithmetic": ""}  # the base and the endpoints are its candidates
    for name in spec.methods:  # evo-merge's own change with its version, which the keys hold
        builtin = name == MASS or get_method(name).is_builtin
        code = None if builtin else method_code(name)
        methods[name] = "" if builtin else None if code is None else code[1]
    device = resolve_device(spec.device)
    settings = {"dtype": workspace.dtype_name(), "storage": workspace.stored_dtype_name(), "device": device.type,
                # another GPU model may round otherwise
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "batch_size": spec.evaluator.batch_size}
    options = {spec_task.label: sorted(spec_task.options.items()) for spec_task in spec.tasks}
    keys = score_keys(digests, settings, methods,
                      {name: (getattr(task, "items_digest", None), options[name]) for name, task in tasks.items()})
    if skipped := [name for name in tasks if name not in keys.tasks]:
        log.info("score cache %s: task(s) %s give no digest of how their items are scored, so their scores are "
                 "not kept", cache.path, ", ".join(skipped))
    if unknown := [name for name, code in methods.items() if code is None]:  # (a notebook's)
        log.info("score cache %s: no file holds the code of merge method(s) %s, so their candidates' scores are "
                 "not kept", cache.path, ", ".join(unknown))
    return KeptScores(cache, keys)


def _nothing_measured(store: CampaignStore, failures: dict[str, str]) -> UserError:
    """A final phase whose every pick failed when measured ended "finished", exit 0, with nothing
    exported: the cause is rarely the candidates (a task failing on items the search never scored,
    such as a malformed held-out row). The run stops naming the most common error, and forgets the
    failures so that `resume` after the fix measures them again."""
    error, count = Counter(failures.values()).most_common(1)[0]
    store.forget_measure_failures()
    return UserError(f"the final phase measured no pick: {count} of {len(failures)} measurements failed with "
                     f"{message_line(error)}; fix the cause (a task failing on items the search did not score, "
                     "such as the held-out ones), then `evo-merge resume` measures them again")


def _baselines(space: SearchSpace) -> dict[str, Candidate]:
    """The standard merges the genome can express, less any that is an endpoint itself (with one
    endpoint, task arithmetic at lambda 1): the baselines, and the warm-ups standard merges give."""
    endpoints = {endpoint_candidate(i, space.n_models).key for i in range(space.n_models)}
    return {label: c for label, c in standard_merges(space.n_models).items()
            if c.key not in endpoints and space.expressible([c])}


def _baseline_labels(space: SearchSpace) -> dict[str, str]:
    """Each baseline's candidate key -> the standard merge it is (`BASELINES_META`)."""
    return {c.key: label for label, c in _baselines(space).items()}


def _refuse_an_input(evaluation: Evaluation, workspace: Workspace) -> None:
    """The base and each endpoint are measured as candidates (task arithmetic at weights 0, or 1 on
    one model): exported, such a folder's card called it a merge of every model, at weight 0
    (audit 127). They are the campaign's inputs, not merges: refused, naming the model. An aligned
    campaign's base with `reference: mean` is the mean of the aligned endpoints, which the run
    built: a merge, exported as one."""
    base, models = workspace.sources()
    align = workspace.campaign.align
    built = align is not None and align.reference == "mean"  # its base: the aligned endpoints' mean, a merge
    for (label, candidate), model in zip(reference_candidates(workspace.endpoint_labels()), [base, *models]):
        if candidate.key == evaluation.key and not (label == "base" and built):
            what = "the base model" if label == "base" else f"the {label}"  # "endpoint arith"
            raise UserError(visible(f"--pick {evaluation.id}: {what} itself ({model}), an input of the campaign, not "
                                    f"a merge: nothing to export (`{shell('evo-merge', 'status', workspace.run_dir)}` "
                                    "shows its scores)"))


def _campaign_root(campaign: Campaign, root: str | Path | None) -> Path:
    """The folder `campaign`'s relative paths are read from (see `CampaignRunner.open`)."""
    given = None if root is None else Path(os.path.abspath(expand_home(root)))
    if campaign.folder is None:
        return given or Path.cwd()
    if given is not None and not _same_folder(given, campaign.folder):
        raise UserError(f"root {given}: the campaign was loaded from {campaign.folder}, against which its relative "
                        "paths were checked; leave root out (or give that folder)")
    return campaign.folder


def _same_folder(one: Path, other: Path) -> bool:
    """The same folder however spelt (through a link, resolved), where both are there to compare."""
    try:
        return one == other or os.path.samefile(one, other)
    except OSError:
        return False
