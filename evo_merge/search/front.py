"""The front: non-dominated search candidates by estimate, the ones measured on every item, and
the picks chosen among them (best per task, balanced, or the whole measured front)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evo_merge.search.log import EvaluationLog
from evo_merge.search.objectives import Objectives
from evo_merge.search.store import CampaignStore, Evaluation
from evo_merge.search.study import SEARCH

MEASURE_STAGE = "full evaluation of the front"


def front(store: CampaignStore, objectives: Objectives) -> list[Evaluation]:
    """Non-dominated successful search evaluations, by estimated scores and directions."""
    done = [e for e in store.evaluations(SEARCH) if e.status == "ok"]
    points = np.array([objectives.vector(e.estimates) for e in done]).reshape(len(done), len(objectives.names))
    return [done[i] for i in objectives.non_dominated(points)]


def measure_front(log: EvaluationLog, objectives: Objectives, top: int) -> list[Evaluation]:
    """Evaluate the `top` front members on every item (balanced ones first); return the measured."""
    # ties broken by generation and key, not by id: ids follow completion order on a cluster
    ranked = sorted(front(log.store, objectives),
                    key=lambda e: (-objectives.balanced(e.estimates), e.generation, e.key))
    chosen = ranked[:top]
    log.measure(chosen, MEASURE_STAGE)
    return [m for m in (log.store.get(e.key) for e in chosen) if m.measured is not None]


def picks(measured: Sequence[Evaluation], objectives: Objectives, export: Sequence[str]) -> dict[str, Evaluation]:
    """The configured choices among the measured front: best per task, best balanced, or all."""
    chosen: dict[str, Evaluation] = {}
    if not measured:
        return chosen

    def scores(e: Evaluation) -> dict[str, float]:
        return e.measured or e.estimates

    for pick in export:
        if pick == "best_per_task":
            for task in objectives.names:
                chosen[f"best-{task}"] = max(measured, key=lambda e: objectives.goodness(scores(e), task))
        elif pick == "balanced":
            chosen["balanced"] = max(measured, key=lambda e: objectives.balanced(scores(e)))
        else:
            chosen.update({f"front-{e.id}": e for e in measured})
    return chosen
