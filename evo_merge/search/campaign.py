"""The campaign: calibrate IRT, run the ask-and-tell search, measure the front, export.

Every evaluation goes through the store first: a candidate evaluated before (in this process or
one that was killed) is looked up, never evaluated again. A resumed campaign replays the
algorithm from its seed, which asks for exactly the candidates an uninterrupted one would have,
all found in the store until the point of interruption.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.mixed import MixedVariableDuplicateElimination, MixedVariableMating, MixedVariableSampling
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from evo_merge.config import Campaign
from evo_merge.errors import UserError
from evo_merge.irt import Estimator, IRTModel, select_anchors
from evo_merge.merge.kinds import MASS
from evo_merge.search.evaluator import CandidateFailed, Items, ItemScores, LocalEvaluator, make_evaluator, task_settings
from evo_merge.search.space import Candidate, SearchSpace, SeededSampling, objectives, standard_merges
from evo_merge.search.store import CampaignStore, Evaluation, atomic_write
from evo_merge.tasks.registry import resolve_task
from evo_merge.weights import Checkpoint

CALIBRATION, SEARCH = "calibration", "search"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class RunPaths:
    """Resolved model paths of a campaign (relative paths are against the campaign file)."""

    base: Path
    models: list[Path]


def resolve_campaign(campaign: Campaign, root: Path) -> Campaign:
    """The campaign with every relative path made absolute against `root` (the campaign file's
    folder): models, alignment data and permutation specs, the IRT model folder, local task
    files. A run stores and fingerprints this form, so it resumes from whatever folder its
    command runs in."""

    def absolute(value: str) -> str:
        return os.path.abspath(root / Path(value).expanduser())  # normalised, symlinks kept

    def is_path(value: str) -> bool:  # as the task registry reads it: not a shipped name or a plugin
        return value.endswith((".yaml", ".yml")) or "/" in value

    tasks = [t.model_copy(update={"task": absolute(t.task)}) if is_path(t.task) else t for t in campaign.tasks]
    estimator = campaign.estimator
    if estimator.irt_model is not None:
        estimator = estimator.model_copy(update={"irt_model": absolute(estimator.irt_model)})
    align = campaign.align
    if align is not None:
        align = align.model_copy(update={"data": align.data and absolute(align.data),
                                         "arch": absolute(align.arch) if is_path(align.arch) else align.arch})
    return campaign.model_copy(update={"base_model": campaign.base_model and absolute(campaign.base_model),
                                       "models": [absolute(m) for m in campaign.models],
                                       "tasks": tasks, "estimator": estimator, "align": align})


def resolve_paths(campaign: Campaign, root: Path, run_dir: Path) -> RunPaths:
    def resolve(value: str, key: str) -> Path:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.exists():
            raise UserError(f"{key}: model path {value!r} does not exist ({path})")
        return path.resolve()

    models = [resolve(m, f"models.{i}") for i, m in enumerate(campaign.models)]
    if campaign.align is not None:
        data = resolve(campaign.align.data, "align.data") if campaign.align.data else None
        return aligned_paths(campaign.align, models, run_dir / "aligned", data)
    return RunPaths(resolve(campaign.base_model, "base_model"), models)


def aligned_paths(spec, models: list[Path], out: Path, data: Path | None) -> RunPaths:
    """Align the endpoints once (reused on resume) and return the reference and aligned folders."""
    from evo_merge.align.api import align_folders
    from evo_merge.weights import Checkpoint, write_model_folder

    record = out / "permutations.json"
    if not record.exists():
        align_folders(models, spec.arch, spec.method, out, data=data, seed=spec.seed)
    aligned = [out / name for name in json.loads(record.read_text())["perms"]]
    if spec.reference == "first":
        return RunPaths(aligned[0], aligned)
    mean = out / "universe-mean"
    if not mean.exists():
        checkpoints = [Checkpoint.open(p) for p in aligned]
        tensors = ((n, sum(c.tensor(n) for c in checkpoints) / len(checkpoints)) if checkpoints[0].dtype(n).is_floating_point
                   else (n, checkpoints[0].tensor(n)) for n in checkpoints[0].names)
        write_model_folder(mean, tensors, copy_from=aligned[0])
    return RunPaths(mean, aligned)


def base_candidate(n_models: int) -> Candidate:
    return Candidate("task_arithmetic", (0.0,) * n_models, (("lambda", 1.0),))


def endpoint_candidate(i: int, n_models: int) -> Candidate:
    return Candidate("task_arithmetic", tuple(1.0 if t == i else 0.0 for t in range(n_models)), (("lambda", 1.0),))


def reference_candidates(endpoint_labels: Sequence[str]) -> list[tuple[str, Candidate]]:
    """("base", the base) then (label, endpoint) for each endpoint, as candidates."""
    n = len(endpoint_labels)
    return [("base", base_candidate(n)), *((label, endpoint_candidate(i, n)) for i, label in enumerate(endpoint_labels))]


def make_algorithm(campaign: Campaign, space: SearchSpace) -> NSGA2:
    spec = campaign.algorithm
    seeds = []
    if spec.seed_standard_merges:  # those the genome can express: method searched, values in range
        genomes = {c: space.encode(c) for c in standard_merges(space.n_models).values() if c.method in space.methods}
        seeds = [x for c, x in genomes.items() if space.decode(x) == c]
    algorithm = NSGA2(
        pop_size=spec.population,
        sampling=SeededSampling(seeds) if seeds else MixedVariableSampling(),
        mating=MixedVariableMating(eliminate_duplicates=MixedVariableDuplicateElimination()),
        eliminate_duplicates=MixedVariableDuplicateElimination(),
    )
    algorithm.setup(space.problem(len(campaign.tasks)), termination=("n_gen", spec.generations), seed=spec.seed)
    return algorithm


def searched_ranges(campaign: Campaign, base: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """The configured hyperparameter ranges; MASS's routing layer, when not given, ranges over
    the base's MLP blocks."""
    methods = {name: dict(ranges) for name, ranges in campaign.methods.items()}
    if MASS in methods and "layer" not in methods[MASS]:
        from evo_merge.mass.routing import routing_weights

        layers = list(routing_weights(Checkpoint.open(base).names))
        if not layers:
            raise UserError(f"methods.mass: the base {base} has no MLP block to route on")
        methods[MASS]["layer"] = (layers[0], layers[-1])
    return methods


def config_fingerprint(campaign: Campaign) -> str:
    """Identifies what a run computes: where it is evaluated (local or which cluster) is left out,
    so a run started locally can be resumed on a cluster and back; so are settings at their
    defaults, so a setting added in a later version leaves older runs resumable."""
    where = campaign.model_copy(update={"evaluator": campaign.evaluator.model_copy(update={"kind": "local"})})
    data = where.model_dump_json(exclude={"evaluator": {"address", "n_workers"}}, exclude_defaults=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


class CampaignRunner:
    def __init__(self, campaign: Campaign, root: Path, run_dir: Path, progress: Progress | None = None):
        self.campaign = resolve_campaign(campaign, Path(root))
        self.run_dir = Path(run_dir)
        self.paths = resolve_paths(self.campaign, Path(root), self.run_dir)
        self.store = CampaignStore(self.run_dir)
        self.progress = progress or (lambda stage, done, total: None)
        campaign = self.campaign
        self.task_names = [t.label for t in campaign.tasks]
        self.directions = [t.direction for t in campaign.tasks]
        self.space = SearchSpace(searched_ranges(campaign, self.paths.base), len(self.paths.models),
                                 (campaign.coefficients.low, campaign.coefficients.high))
        self._tasks = {t.label: resolve_task(t.task, **task_settings(campaign, t))
                       for t in campaign.tasks}
        self._evaluator: LocalEvaluator | None = None
        self.estimators: dict[str, Estimator] | None = None
        self._check_fingerprint()

    # ------------------------------------------------------------------ plumbing
    def _check_fingerprint(self) -> None:
        stored = self.store.get_meta("config")
        fingerprint = config_fingerprint(self.campaign)
        if stored is None:
            self.store.set_meta("config", fingerprint)
            atomic_write(self.run_dir / "campaign.yaml", self.campaign_yaml())
        elif stored != fingerprint:
            raise UserError(f"{self.run_dir}: holds a different campaign; resume it with its own campaign.yaml "
                            "or start a new run folder")

    def campaign_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.campaign.model_dump(mode="json"), sort_keys=False)

    @property
    def evaluator(self) -> LocalEvaluator:
        if self._evaluator is None:  # loading models is the slow part of a resume: only when needed
            self._evaluator = make_evaluator(self.campaign, self.paths, self._tasks)
        return self._evaluator

    def all_items(self) -> dict[str, None]:
        return {name: None for name in self.task_names}

    def task_scores(self, scores: ItemScores) -> dict[str, float]:
        return {name: float(np.mean(list(scores[name].values()))) for name in self.task_names}

    def evaluate_batch(self, candidates: Sequence[Candidate], *, phase: str, generation: int | None,
                       items: Items, stage: str) -> list[Evaluation]:
        """Look each candidate up; evaluate, estimate and store the others (failures included).

        Results are stored as they arrive, so an interruption loses only unfinished candidates."""
        unique = list({c.key: c for c in candidates}.values())
        todo = [c for c in unique if self.store.get(c.key) is None]
        done = len(unique) - len(todo)
        self.progress(stage, done, len(unique))
        if todo:
            for index, outcome, seconds in self.evaluator.evaluate_many([(c, items) for c in todo]):
                self._store_outcome(todo[index], outcome, seconds, phase, generation, items)
                done += 1
                self.progress(stage, done, len(unique))
        return [self.store.get(c.key) for c in candidates]

    def _store_outcome(self, candidate: Candidate, outcome: ItemScores | CandidateFailed, seconds: float,
                       phase: str, generation: int | None, items: Items) -> None:
        scores, estimates, status, error = {}, None, "failed", None
        if isinstance(outcome, CandidateFailed):
            error = str(outcome)
        else:
            try:
                scores, estimates, status = outcome, self.estimate(outcome), "ok"
            except (UserError, ValueError, FloatingPointError) as exc:
                error = f"estimation failed: {exc}"
        self.store.add(candidate.key, phase=phase, generation=generation, method=candidate.method, status=status,
                       estimates=estimates, item_scores=scores, seconds=seconds, error=error)
        if status == "ok" and all(v is None for v in items.values()):
            self.store.add_measurement(candidate.key, self.task_scores(scores), {})

    def estimate(self, scores: ItemScores) -> dict[str, float]:
        if self.estimators is None:  # full evaluation (calibration, or the `full` baseline)
            return self.task_scores(scores)
        return {name: float(np.clip(self.estimators[name].estimate(scores[name])["overall"], 0.0, 1.0))
                for name in self.task_names}

    def fitness(self, evaluation: Evaluation) -> np.ndarray:
        if evaluation.status != "ok":  # worst possible score on every task
            return objectives([0.0 if d == "maximize" else 1.0 for d in self.directions], self.directions)
        return objectives([evaluation.estimates[n] for n in self.task_names], self.directions)

    # ------------------------------------------------------------------ phases
    def calibrate(self) -> None:
        """Base and endpoints on all items (+ warm-up merges when IRT is fitted here), then IRT."""
        spec = self.campaign.estimator
        if MASS in self.campaign.methods:
            self.evaluator.mass  # noqa: B018  (fail before any evaluation if MASS cannot decompose the endpoints)
        subjects = reference_candidates([f"endpoint-{i}" for i in range(len(self.paths.models))])
        if spec.kind != "full" and spec.irt_model is None and spec.warmup_merges:
            warmup = self.space.sample(spec.warmup_merges, seed=self.campaign.algorithm.seed + 1)
            subjects += [(f"warmup-{k}", candidate) for k, candidate in enumerate(warmup)]
        evaluations = self.evaluate_batch([c for _, c in subjects], phase=CALIBRATION, generation=None,
                                          items=self.all_items(), stage="calibration")
        for (label, _), evaluation in zip(subjects, evaluations):
            if evaluation.status != "ok" and not label.startswith("warmup-"):  # failed warm-ups are left out
                raise UserError(f"calibration subject {label} failed to evaluate: {evaluation.error.splitlines()[0]}")
        subjects = [s for s, e in zip(subjects, evaluations) if e.status == "ok"]
        if spec.kind == "full":
            return
        self.estimators = {name: self._estimator(name, subjects) for name in self.task_names}

    def _responses(self, name: str, subjects: Sequence[tuple[str, Candidate]]) -> pd.DataFrame:
        scenarios = self._tasks[name].scenarios or {}
        rows = [(label, item, score, scenarios.get(item, name))
                for label, candidate in subjects
                for item, score in self.store.item_scores(candidate.key, name).get(name, {}).items()]
        return pd.DataFrame(rows, columns=["subject", "item", "score", "scenario"])

    def _estimator(self, name: str, subjects: Sequence[tuple[str, Candidate]]) -> Estimator:
        spec, seed = self.campaign.estimator, self.campaign.algorithm.seed
        folder = self.run_dir / "irt" / name
        endpoints = [label for label, _ in subjects if label.startswith("endpoint-")]
        if spec.irt_model is not None:
            model = IRTModel.load(Path(spec.irt_model) / name)
            endpoint_rows = self._responses(name, [s for s in subjects if s[0] in endpoints])
            endpoint_arg: Sequence[str] | pd.DataFrame = endpoint_rows
        elif (folder / "model.json").exists():
            model, endpoint_arg = IRTModel.load(folder), endpoints
        else:
            model = IRTModel.fit(self._responses(name, subjects), backend=spec.backend, dims=spec.dims, seed=seed)
            model.save(folder)
            endpoint_arg = endpoints
        anchors = select_anchors(model, spec.anchors, spec.anchor_method, seed=seed)
        return Estimator(model, anchors, spec.kind, endpoints=endpoint_arg if spec.kind in ("mpirt", "gmpirt") else None)

    def anchor_items(self) -> dict[str, list[str] | None]:
        if self.estimators is None:
            return self.all_items()
        return {name: list(self.estimators[name].anchor_ids) for name in self.task_names}

    def search(self) -> None:
        algorithm = make_algorithm(self.campaign, self.space)  # replayed: stored candidates are looked up
        items = self.anchor_items()
        total = self.campaign.algorithm.generations
        while algorithm.has_next():
            generation = algorithm.n_gen or 1
            population = algorithm.ask()
            evaluations = self.evaluate_batch([self.space.decode(ind.X) for ind in population], phase=SEARCH,
                                              generation=generation, items=items,
                                              stage=f"generation {generation}/{total}")
            population.set("F", np.array([self.fitness(e) for e in evaluations]))
            algorithm.tell(infills=population)
            self.store.complete_generation(generation, [e.key for e in evaluations])

    def front(self) -> list[Evaluation]:
        """Non-dominated successful search evaluations, by estimated scores."""
        done = [e for e in self.store.evaluations(SEARCH) if e.status == "ok"]
        if not done:
            return []
        F = np.array([self.fitness(e) for e in done])
        return [done[i] for i in NonDominatedSorting().do(F, only_non_dominated_front=True)]

    def measure_front(self) -> list[Evaluation]:
        """Evaluate the best front members on every item (balanced ones first)."""
        # ties broken by generation and key, not by id: ids follow completion order on a cluster
        front = sorted(self.front(), key=lambda e: (-float(np.mean(list(e.estimates.values()))), e.generation, e.key))
        chosen = [e for e in front[: self.campaign.final.evaluate_top]]
        todo = [e for e in chosen if e.measured is None]
        stage = "full evaluation of the front"
        self.progress(stage, 0, len(todo))
        jobs = [(Candidate.from_key(e.key), {n: self._missing_items(e.key, n) for n in self.task_names}) for e in todo]
        for done, (index, outcome, _) in enumerate(self.evaluator.evaluate_many(jobs), start=1):
            key = todo[index].key
            if isinstance(outcome, CandidateFailed):  # it worked on the anchors: report, keep the estimate
                self.store.set_meta(f"measure_failed:{key}", str(outcome))
            else:
                stored = self.store.item_scores(key)
                full = {n: {**stored.get(n, {}), **outcome[n]} for n in self.task_names}
                self.store.add_measurement(key, self.task_scores(full), outcome)
            self.progress(stage, done, len(todo))
        return [m for m in (self.store.get(e.key) for e in chosen) if m.measured is not None]

    def _missing_items(self, key: str, name: str) -> list[str]:
        have = self.store.item_scores(key, name).get(name, {})
        return [i for i in self._tasks[name].item_ids if i not in have]

    def run(self) -> tuple[list[Evaluation], dict[str, tuple[int, Path]]]:
        """The whole campaign: (measured front members, exported picks name -> (evaluation id, folder))."""
        try:
            self.calibrate()
            self.search()
            measured = self.measure_front()
            exported = self.export_picks(measured)
        finally:
            self.close()
        return measured, exported

    def close(self) -> None:
        """Stop the evaluator (a dask cluster, or the connection to one); it restarts when needed."""
        if self._evaluator is not None:
            self._evaluator.close()

    # ------------------------------------------------------------------ export
    def recipe(self, candidate: Candidate):
        """The mergekit-style recipe of a candidate, as `evo-merge merge` takes it."""
        from evo_merge.config import Recipe

        return Recipe.model_validate({
            "merge_method": candidate.method,
            "base_model": str(self.paths.base),
            "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(self.paths.models, candidate.weights)],
            "parameters": candidate.param_dict,
            "dtype": "float32",
            "out_dtype": self.campaign.dtype,
        })

    def export(self, evaluation: Evaluation, out: Path, *, overwrite: bool = False) -> Path:
        """Write a candidate as an HF folder from the resident task vectors (no re-read of the
        endpoints); a MASS candidate as a MASS folder."""
        from evo_merge.merge.export import export_merge
        from evo_merge.merge.plan import plan_from_recipe

        candidate = Candidate.from_key(evaluation.key)
        scores = {kind: values for kind, values in
                  (("estimated", evaluation.estimates), ("measured", evaluation.measured)) if values}
        if candidate.method == MASS:
            return self.evaluator.build(candidate).save(out, overwrite=overwrite, scores=scores)
        plan = plan_from_recipe(self.recipe(candidate))
        tensors = self.evaluator.merger.tensors(candidate.method, candidate.weights, candidate.param_dict)
        return export_merge(plan, out, tensors=tensors, overwrite=overwrite, title=out.name, scores=scores)

    def picks(self, measured: Sequence[Evaluation]) -> dict[str, Evaluation]:
        """The configured choices among the measured front: best per task, best balanced, or all."""
        def score(e: Evaluation, task: str) -> float:
            value = (e.measured or e.estimates)[task]
            return value if self.directions[self.task_names.index(task)] == "maximize" else -value

        chosen: dict[str, Evaluation] = {}
        for pick in self.campaign.final.export:
            if not measured:
                break
            if pick == "best_per_task":
                for task in self.task_names:
                    chosen[f"best-{task}"] = max(measured, key=lambda e: score(e, task))
            elif pick == "balanced":
                chosen["balanced"] = max(measured, key=lambda e: float(np.mean([score(e, t) for t in self.task_names])))
            else:
                chosen.update({f"front-{e.id}": e for e in measured})
        return chosen

    def export_picks(self, measured: Sequence[Evaluation]) -> dict[str, tuple[int, Path]]:
        """Export each chosen candidate once, under the first name that picked it."""
        exported: dict[str, tuple[int, Path]] = {}
        folders: dict[int, Path] = {}
        for name, evaluation in self.picks(measured).items():
            if evaluation.id not in folders:
                folders[evaluation.id] = self.export(evaluation, self.run_dir / "models" / name, overwrite=True)
            exported[name] = (evaluation.id, folders[evaluation.id])
        return exported

    def full_item_count(self) -> int:
        return sum(len(task.item_ids) for task in self._tasks.values())
