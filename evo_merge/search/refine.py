"""Before the final phase: front members that the estimates cannot tell apart get more items.

Two front members overlap when, on every task, their scores lie within the sum of their
standard errors: the front's order between them is noise. A member measured on every search item
(a standard merge, measured as a warm-up) counts with its measured score and a standard error of
0: an estimate within its own SE of it is as unresolved as one within two SEs of another
estimate. With an adaptive estimator, each overlapping estimated member's test is continued to a
smaller standard error (half the target, twice the item budget) once, so the measured front
starts from the members that really differ. Fixed anchors have no further items to give, so
nothing happens for the other estimators. Which members overlap is decided once, on the search's
estimates, and stored: refining changes the estimates, so deciding again (on a resume, after a
kill mid-way) would refine others.
"""

from __future__ import annotations

from collections.abc import Sequence

from evo_merge.search.front import front
from evo_merge.search.ledger import EvaluationLedger
from evo_merge.search.objectives import Objectives
from evo_merge.search.store import Evaluation, Record

REFINE_PRECISION = 0.5  # target SE x 0.5, item budget x 2
STAGE = "resolving the front (adaptive)"
RESOLVED_META = Record("front_refined", list[str])  # keys of the overlapping front members, as first decided


def _score(member: Evaluation, task: str) -> tuple[float, float] | None:
    """A member's score on `task` and its standard error: measured (SE 0) where it is, else its
    estimate; None for an estimate without an SE (nothing to compare it with)."""
    if member.measured is not None:
        return member.measured[task], 0.0
    if member.estimate_se:
        return member.estimates[task], member.estimate_se[task]
    return None


def _within(a: Evaluation, b: Evaluation, names: Sequence[str]) -> bool:
    """Whether `a` and `b` lie within the sum of their standard errors on every task."""
    pairs = [(_score(a, t), _score(b, t)) for t in names]
    return all(x is not None and y is not None and abs(x[0] - y[0]) <= x[1] + y[1] for x, y in pairs)


def overlapping(members: Sequence[Evaluation], names: Sequence[str]) -> list[Evaluation]:
    """The estimated members within the sum of the SEs of another member (estimated or measured)
    on every task; a measured member has no test to continue, so it is never one of them."""
    return [a for a in members if a.measured is None and any(a is not b and _within(a, b, names) for b in members)]


def resolve_front(ledger: EvaluationLedger, objectives: Objectives) -> None:
    """Refine the overlapping front members (adaptive estimators only)."""
    if not ledger.scoring.adaptive():
        return
    keys = ledger.store.get_meta(RESOLVED_META)
    if keys is None:
        keys = [e.key for e in overlapping(front(ledger.store, objectives), objectives.names)]
        ledger.store.set_meta(RESOLVED_META, keys)
    unresolved = [ledger.store.get(key) for key in keys]
    ledger.refine(unresolved, REFINE_PRECISION, STAGE)  # a test already at its precision asks for nothing
