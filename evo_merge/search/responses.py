"""Real response matrices: the base, the endpoints and random merges scored on every item, or
what a campaign measured on every search item.

This is the data a search's IRT calibration sees; `evo-merge irt fit` / `irt validate` on it
show how well anchors predict full scores for merges of these very models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from evo_merge.config import DEFAULT_METHODS
from evo_merge.errors import UserError
from evo_merge.irt.model import IRTModel
from evo_merge.merge.kinds import declared_ranges
from evo_merge.search.candidate import Candidate, reference_candidates
from evo_merge.search.evaluator import CandidateFailed
from evo_merge.search.holdout import HOLDOUT_META
from evo_merge.search.layout import IRT_FOLDER
from evo_merge.search.local import LocalEvaluator
from evo_merge.search.space import SearchSpace
from evo_merge.search.store import FACTS_META, CampaignStore
from evo_merge.search.workbench import Workbench
from evo_merge.tasks.base import FitnessTask

COLUMNS = ["subject", "item", "score", "scenario", "task", "method", "weights", "params"]
RUN_COLUMNS = [*COLUMNS, "phase"]


def build_responses(
    base: Path,
    models: Sequence[Path],
    tasks: Mapping[str, FitnessTask],
    n_merges: int,
    *,
    methods: Mapping[str, Mapping[str, tuple[float, float]]] = DEFAULT_METHODS,
    coefficients: tuple[float, float] = (0.0, 1.5),
    seed: int = 0,
    scenario: str = "task",
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Long table, one row per (subject, item). `scenario="task"` labels items by task (one IRT
    scenario per task); `"subskill"` keeps each task's own scenarios, prefixed by the task."""
    n = len(models)
    space = SearchSpace({m: declared_ranges(m, dict(r)) for m, r in methods.items()}, n, coefficients)
    subjects = reference_candidates([f"endpoint-{Path(m).name}" for m in models])
    subjects += [(f"merge-{k:03d}", c) for k, c in enumerate(space.sample(n_merges, seed=seed))]
    evaluator = LocalEvaluator(Workbench.open(Path(base), [Path(m) for m in models], root=Path.cwd()), tasks)
    rows = []
    jobs = [(candidate, {name: None for name in tasks}) for _, candidate in subjects]
    for done, (index, outcome, _) in enumerate(evaluator.evaluate_many(jobs), start=1):
        if progress is not None:
            progress(done, len(jobs))
        if isinstance(outcome, CandidateFailed):
            continue
        label, candidate = subjects[index]
        weights, params = candidate.weights_text(), candidate.params_text()
        for name, scores in outcome.items():
            sub = tasks[name].scenarios or {}
            for item, score in scores.items():
                group = name if scenario == "task" else f"{name}:{sub.get(item, 'all')}"
                rows.append((label, item, score, group, name, candidate.method, weights, params))
    return pd.DataFrame(rows, columns=COLUMNS)


def run_scenarios(store: CampaignStore, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each task's item -> scenario, from the IRT model the run fitted for it (`RUN/irt/<task>`):
    the task's own scenarios, as the campaign's calibration used them. A task without one (a
    full-evaluation run, a model given by `estimator.irt_model`) is left out: one scenario."""
    out = {}
    for name in names:
        folder = store.run_dir / IRT_FOLDER / name
        if (folder / "model.json").is_file():
            model = IRTModel.load(folder)
            out[name] = dict(zip(model.item_ids, model.item_scenarios))
    return out


def run_responses(store: CampaignStore, task: str | None = None) -> pd.DataFrame:
    """Long table of what a run measured whole: one row per (candidate, search item) for every
    candidate scored on all of a task's search items (the base, the endpoints, warm-up and standard
    merges, the final phase's measured ones; every candidate of a full-evaluation run). Subjects are
    the ids of `evaluations.csv`. Held-out items are left out: only the picks are scored on them,
    and a matrix of a few subjects says nothing an IRT fit can use.

    Scenarios are the task's own where the run fitted an IRT model (`run_scenarios`; with all
    tasks, prefixed `task:`), else the task: a model fitted on one task's rows (`task`) has the
    scenarios of the run's own, so a campaign given it (`estimator.irt_model`) draws as many
    anchors (`anchors` per scenario). One scenario per task gave it a fifth of them.

    On this table `irt validate` shows whether anchors and IRT pay on merges of the user's own
    models, and `irt fit` (one task's rows) gives an `estimator.irt_model` for the next campaign."""
    facts = store.get_meta(FACTS_META)
    names = [t["name"] for t in facts["tasks"]]
    if task is not None and task not in names:
        raise UserError(f"no task {task!r} in this run (its tasks: {', '.join(names)})")
    held = {name: set(items) for name, items in store.get_meta(HOLDOUT_META, {}).items()}
    whole = {t["name"]: t["items"] - len(held.get(t["name"], ())) for t in facts["tasks"]}
    chosen = [task] if task is not None else names
    scenarios = run_scenarios(store, chosen)

    def scenario(name: str, item: str) -> str:
        if name not in scenarios:
            return name
        own = scenarios[name].get(item, name)
        return own if task is not None else f"{name}:{own}"

    rows = []
    for evaluation in store.evaluations():
        if evaluation.status != "ok":
            continue
        scored = {name: {i: v for i, v in scores.items() if i not in held.get(name, ())}
                  for name, scores in store.item_scores(evaluation.key).items() if name in chosen}
        candidate = Candidate.from_key(evaluation.key)
        weights, params = candidate.weights_text(), candidate.params_text()
        for name, scores in scored.items():
            if len(scores) == whole[name]:  # anchors or a race's sample alone are no row of a matrix
                rows += [(str(evaluation.id), item, score, scenario(name, item), name, candidate.method, weights,
                          params, evaluation.phase) for item, score in scores.items()]
    table = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if table.duplicated(["subject", "item"]).any():
        shared = table[table.duplicated(["subject", "item"], keep=False)].sort_values("item").iloc[0]
        raise UserError(f"item {shared['item']!r} is in more than one task; name one task (--task) to write "
                        "a matrix per task")
    return table
