"""The evaluator interface the campaign uses, and the types it speaks.

An evaluator turns jobs (a candidate and the item ids to score per task) into per-item scores,
yielding each result as soon as it is known: in order in this process (`LocalEvaluator`), in
completion order on a cluster (`DaskEvaluator`). A candidate that cannot be built or scored
comes back as `CandidateFailed`, so one bad merge never stops a search; a `UserError` (a task
answering wrongly, a method that does not exist) is raised instead, since every candidate would
fail alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from evo_merge.errors import UserError
from evo_merge.search.candidate import Candidate

if TYPE_CHECKING:
    from evo_merge.config import Campaign
    from evo_merge.search.workbench import Workbench
    from evo_merge.tasks.base import FitnessTask

ItemScores = dict[str, dict[str, float]]  # task -> item -> score
Items = Mapping[str, Sequence[str] | None]  # task -> item ids (None: every item)
Job = tuple[Candidate, Items]


class CandidateFailed(Exception):
    """The candidate could not be built or scored (NaN weights, OOM, an exception in a task).
    `items_spent`: the items its tasks scored before one failed, whose scores are not kept (a
    failed candidate gets the worst fitness on every task) but whose cost was paid: a run's item
    totals count them."""

    def __init__(self, message: str, items_spent: int = 0) -> None:
        super().__init__(message)
        self.items_spent = items_spent


Result = tuple[int, "ItemScores | CandidateFailed", float]  # (job index, scores or failure, seconds)
MERGING, PIECES, ITEMS = "merging", "pieces", "items"
# part -> the progress stage's suffix, beside a campaign stage (PIECES: merging a candidate whose method first
# computes its pieces, TSV-M's SVD of every matrix: once in a process, so again after a resume)
JOB_PARTS = {MERGING: " · merging", PIECES: " · merging (computing its pieces first)", ITEMS: " · items"}


class JobProgress(Protocol):
    """Told (done, total) of a part of the job in progress: a 7B model spends minutes on one job,
    merging its tensors (TSV-M's first candidate decomposes each) and scoring its items."""

    def __call__(self, done: int, total: int, part: str = ITEMS) -> None: ...


@runtime_checkable
class Evaluator(Protocol):
    def evaluate_many(self, jobs: Sequence[Job], job_progress: JobProgress | None = None) -> Iterator[Result]:
        """Score every job, yielding (job index, scores or CandidateFailed, seconds); `job_progress`
        follows the job in progress (its tensors merged, its items scored) where the evaluator can
        see them (in this process)."""
        ...

    def workbench(self) -> Workbench | None:
        """This process's resident models when the evaluator has them (None on a cluster)."""
        ...

    def device_types(self) -> list[str]:
        """The device types candidates are built on ("cpu", "cuda"): DARE's and DELLA's drops are
        drawn by each type's own generator, so an export elsewhere is another model of the recipe."""
        ...

    def close(self) -> None:
        """Release what the evaluator holds (a cluster, a connection); it restarts when needed."""
        ...


def task_settings(batch_size: int, options: Mapping[str, object]) -> dict:
    """Constructor settings of a campaign task: the evaluator's batch size unless its options say otherwise."""
    return {"batch_size": batch_size, **options}


def campaign_tasks(campaign: Campaign) -> dict[str, FitnessTask]:
    """The campaign's tasks by label, built as its evaluator scores them; an error names the task's
    key (`tasks.N`). `plan` builds them too, so that a task `run` would refuse is named before it."""
    from evo_merge.tasks.registry import resolve_task

    tasks = {}
    for i, t in enumerate(campaign.tasks):
        try:
            tasks[t.label] = resolve_task(t.task, **task_settings(campaign.evaluator.batch_size, t.options))
        except UserError as exc:
            raise UserError(f"tasks.{i}: {exc}") from None
        if t.direction == "maximize" and getattr(tasks[t.label], "higher_is_better", True) is False:
            # a lower-is-better metric maximised: the whole search would run the wrong way
            raise UserError(f"tasks.{i}: task {t.label!r} scores with a metric that is better lower "
                            "(its higher_is_better is false); set `direction: minimize` on it")
    return tasks
