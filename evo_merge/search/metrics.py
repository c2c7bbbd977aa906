"""Per-generation progress of a search: hypervolume, best estimate per task, item evaluations spent.

Shared by the report (a row per generation) and experiment trackers (a step per generation), so
both show the same numbers; it lives with the search so the study loop can compute it as each
generation ends without reaching up to the report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymoo.indicators.hv import HV

from evo_merge.search.store import Evaluation


def hypervolume(scores: np.ndarray) -> float:
    """Hypervolume of maximised scores in [0, 1] against the all-zero reference point."""
    if len(scores) == 0:
        return 0.0
    return float(HV(ref_point=np.zeros(scores.shape[1]))(-np.asarray(scores, dtype=float)))


def generation_metrics(evaluations: Sequence[Evaluation], tasks: Sequence[str], generation: int) -> dict[str, float]:
    """Over the search evaluations up to `generation`: `hypervolume` of the successful estimates,
    `best_<task>` per task and `items` (item evaluations spent, failures included)."""
    upto = [e for e in evaluations if e.phase == "search" and e.generation is not None and e.generation <= generation]
    ok = np.array([[e.estimates[t] for t in tasks] for e in upto if e.status == "ok"]).reshape(-1, len(tasks))
    best = {f"best_{t}": float(ok[:, i].max()) if len(ok) else float("nan") for i, t in enumerate(tasks)}
    return {"hypervolume": hypervolume(ok), **best, "items": float(sum(e.items_evaluated for e in upto))}
