"""The campaign's evaluator, by `evaluator.kind`: in this process, or over a dask cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evo_merge.config import Campaign
from evo_merge.search.evaluator import Evaluator, campaign_tasks
from evo_merge.tasks.base import FitnessTask


def make_evaluator(campaign: Campaign, base: Path, models: Sequence[Path],
                   tasks: Mapping[str, FitnessTask] | None = None) -> Evaluator:
    """`local` loads the workbench and builds the tasks here (`tasks` when already built);
    `dask` ships their description to the workers (imported only then)."""
    if campaign.evaluator.kind == "dask":
        from evo_merge.search.distributed import DaskEvaluator

        return DaskEvaluator.from_campaign(campaign, base, models)
    from evo_merge.merge.storage import Storage
    from evo_merge.search.local import LocalEvaluator

    return LocalEvaluator.open(base, models, campaign_tasks(campaign) if tasks is None else tasks,
                               device=campaign.device, dtype=campaign.dtype, storage=Storage.of(campaign.storage))
