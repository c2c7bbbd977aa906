"""Before the final phase: front members that the estimates cannot tell apart get more items.

Two front members overlap when, on every task, their estimates lie within the sum of their
standard errors: the front's order between them is noise. With an adaptive estimator, each
overlapping member's test is continued to a smaller standard error (half the target, twice the
item budget) once, so the measured front starts from the members that really differ. Fixed
anchors have no further items to give, so nothing happens for the other estimators. Which members
overlap is decided once, on the search's estimates, and stored: refining changes the estimates,
so deciding again (on a resume, after a kill mid-way) would refine others.
"""

from __future__ import annotations

from collections.abc import Sequence

from evo_merge.search.front import front
from evo_merge.search.log import EvaluationLog
from evo_merge.search.objectives import Objectives
from evo_merge.search.store import Evaluation, Record

REFINE_PRECISION = 0.5  # target SE x 0.5, item budget x 2
STAGE = "resolving the front (adaptive)"
RESOLVED_META = Record("front_refined", list[str])  # keys of the overlapping front members, as first decided


def overlapping(members: Sequence[Evaluation], names: Sequence[str]) -> list[Evaluation]:
    """Members whose estimates are within the sum of the SEs of another member's on every task."""
    out = []
    for a in members:
        for b in members:
            if a is not b and a.estimate_se and b.estimate_se and all(
                    abs(a.estimates[t] - b.estimates[t]) <= a.estimate_se[t] + b.estimate_se[t] for t in names):
                out.append(a)
                break
    return out


def resolve_front(log: EvaluationLog, objectives: Objectives) -> list[Evaluation]:
    """Refine the overlapping front members (adaptive estimators only); returns those refined."""
    if not log.scoring.adaptive():
        return []
    keys = log.store.get_meta(RESOLVED_META)
    if keys is None:
        keys = [e.key for e in overlapping(front(log.store, objectives), objectives.names)]
        log.store.set_meta(RESOLVED_META, keys)
    unresolved = [log.store.get(key) for key in keys]
    log.refine(unresolved, REFINE_PRECISION, STAGE)  # a test already at its precision asks for nothing
    return unresolved
