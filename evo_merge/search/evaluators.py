"""The campaign's evaluator, by `evaluator.kind`: in this process, or over a dask cluster."""

from __future__ import annotations

from collections.abc import Mapping

from evo_merge.search.evaluator import Evaluator, campaign_tasks
from evo_merge.tasks.base import FitnessTask


def make_evaluator(campaign, base, models, tasks: Mapping[str, FitnessTask] | None = None) -> Evaluator:
    """`local` loads the workbench and builds the tasks here (`tasks` when already built);
    `dask` ships their description to the workers (imported only then)."""
    if campaign.evaluator.kind == "dask":
        from evo_merge.search.distributed import DaskEvaluator

        return DaskEvaluator.from_campaign(campaign, base, models)
    from evo_merge.search.local import LocalEvaluator
    from evo_merge.search.workbench import Workbench

    if tasks is None:
        tasks = campaign_tasks(campaign)
    from evo_merge.merge.storage import Storage

    bench = Workbench.open(base, list(models), device=campaign.device, dtype=campaign.dtype,
                           storage=Storage.of(campaign.storage))
    return LocalEvaluator(bench, tasks)
