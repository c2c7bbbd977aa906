"""Real response matrices: the base, the endpoints and random merges scored on every item.

This is the data a search's IRT calibration sees; `evo-merge irt fit` / `irt validate` on it
show how well anchors predict full scores for merges of these very models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from evo_merge.config import DEFAULT_METHODS
from evo_merge.merge.kinds import declared_ranges
from evo_merge.search.candidate import reference_candidates
from evo_merge.search.evaluator import CandidateFailed
from evo_merge.search.local import LocalEvaluator
from evo_merge.search.space import SearchSpace
from evo_merge.search.workbench import Workbench
from evo_merge.tasks.base import FitnessTask

COLUMNS = ["subject", "item", "score", "scenario", "task", "method", "weights", "params"]


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
    evaluator = LocalEvaluator(Workbench.open(Path(base), [Path(m) for m in models]), tasks)
    rows = []
    jobs = [(candidate, {name: None for name in tasks}) for _, candidate in subjects]
    for done, (index, outcome, _) in enumerate(evaluator.evaluate_many(jobs), start=1):
        if progress is not None:
            progress(done, len(jobs))
        if isinstance(outcome, CandidateFailed):
            continue
        label, candidate = subjects[index]
        weights = " ".join(f"{w:g}" for w in candidate.weights)
        params = " ".join(f"{k}={v:g}" for k, v in candidate.params)
        for name, scores in outcome.items():
            sub = tasks[name].scenarios or {}
            for item, score in scores.items():
                group = name if scenario == "task" else f"{name}:{sub.get(item, 'all')}"
                rows.append((label, item, score, group, name, candidate.method, weights, params))
    return pd.DataFrame(rows, columns=COLUMNS)
