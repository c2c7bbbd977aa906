"""The search loop: ask the algorithm for a generation, evaluate it through the ledger, tell.

There is no algorithm checkpoint: the store holds every evaluation, and a pymoo algorithm set up
with the same seed asks for the same candidates given the same answers, so resuming replays the
loop from the first generation, answering each ask from the store, and evaluates only what was
never stored. Each generation's answers are stored as told: a stored estimate may change later
(an adaptive test continued before the final phase), and the replay must not see that, or it
would ask for other candidates. Nothing is unpickled from a run folder, and the database is the
one source of truth for how far a run got.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from evo_merge.errors import UserError, message_line
from evo_merge.search.algorithms import SearchAlgorithm
from evo_merge.search.evaluator import Items
from evo_merge.search.ledger import EvaluationLedger
from evo_merge.search.metrics import generation_metrics
from evo_merge.search.objectives import Objectives
from evo_merge.search.store import BASELINE, SEARCH, Evaluation

GenerationDone = Callable[[int, list[Evaluation]], None]
logger = logging.getLogger(__name__)


def fitness(evaluation: Evaluation, objectives: Objectives) -> np.ndarray:
    """What the optimiser minimises; a failed candidate gets the worst score on every task."""
    scores = evaluation.estimates if evaluation.status == "ok" else objectives.worst()
    return objectives.minimised(scores)


def run_search(search: SearchAlgorithm, ledger: EvaluationLedger, objectives: Objectives,
               items: Items | Callable[[str], Items], generations: int,
               on_generation: GenerationDone | None = None) -> None:
    """Ask, evaluate on `items` (or each candidate's, `items(key)`; stored answers first), tell,
    until the algorithm's termination."""
    algorithm = search.algorithm
    while algorithm.has_next():
        generation = algorithm.n_gen or 1
        population = search.ask()
        candidates = [search.to_candidate(ind.X) for ind in population]
        told = ledger.store.told(generation)  # a replayed generation is answered as it was the first time
        if told and {c.key for c in candidates} != set(told):
            raise UserError(f"resuming, the search asked other candidates for generation {generation} than the run "
                            "stored: it cannot be replayed here (another pymoo version, or an algorithm that does "
                            "not follow its seed); start the campaign in a new run folder")
        evaluations = ledger.evaluate(candidates, phase=SEARCH, generation=generation, items=items,
                                   stage=f"generation {generation}/{generations}")
        if evaluations and not told and all(e.status != "ok" for e in evaluations):
            raise _every_candidate_failed(ledger, generation, evaluations)
        if (generation == 1 and not told and evaluations and all(e.phase != SEARCH for e in evaluations)
                and not search.one_starting_point):  # (CMA-ES starts from one point at any population)
            logger.warning("generation 1 is its seeds alone (%d of them: endpoints and standard merges, measured in "
                           "calibration, looked up): the search's first new candidates come in generation 2; a "
                           "population larger than the seeds leaves room for new ones from the start", len(evaluations))
        values = np.array([told.get(e.key, fitness(e, objectives)) for e in evaluations], dtype=float)
        population.set("F", values)
        search.tell(infills=population)
        # a replayed generation keeps the metrics it was stored with (estimates may have changed since)
        metrics = None if told else generation_metrics(ledger.store.evaluations(SEARCH), objectives, generation,
                                                       known=ledger.store.evaluations(BASELINE))
        ledger.store.complete_generation(generation, {e.key: row for e, row in zip(evaluations, values)}, metrics)
        if on_generation is not None:
            on_generation(generation, evaluations)


def _every_candidate_failed(ledger: EvaluationLedger, generation: int, evaluations: Sequence[Evaluation]) -> UserError:
    """A generation whose every candidate failed tells the algorithm nothing, and the cause is
    rarely the candidates (a method or task that cannot work here, a bug in a plugin): the run
    stops, naming the most common error. The failures first stored by this generation are
    forgotten, so that once the cause is fixed `resume` asks the same generation and evaluates it
    again. A failure an earlier generation stored was told to the algorithm there, so it stays: a
    generation made only of those cannot be evaluated again, and the message says so."""
    errors = Counter(e.error for e in evaluations)
    error, count = errors.most_common(1)[0]
    forgotten = [ledger.store.forget_failed(e.key) for e in evaluations if e.generation == generation]
    said = f"every candidate of generation {generation} failed ({count} of {len(evaluations)}: {message_line(error)})"
    if not any(forgotten):
        return UserError(f"{said}, each in an earlier generation already, and a failed candidate is not evaluated "
                         "again; fix the cause and start the campaign in a new run folder")
    return UserError(f"{said}; fix the cause, then `evo-merge resume` evaluates them again")
