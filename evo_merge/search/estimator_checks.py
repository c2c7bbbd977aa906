"""What a campaign's estimator needs, checked before anything is evaluated (`plan`, `run`,
`resume`, `Workspace.open`): enough calibration subjects to fit IRT on, or an IRT model for every
task, fitted on the items the run will search. Found out after calibration, the costly part, was
paid."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from evo_merge.config import Campaign
from evo_merge.errors import UserError
from evo_merge.irt.model import MIN_SUBJECTS
from evo_merge.search.layout import IRT_FOLDER

if TYPE_CHECKING:
    from evo_merge.tasks.base import FitnessTask


def check_estimator(campaign: Campaign) -> None:
    """What the estimator needs, checked before anything is evaluated (`plan` and `run`): enough
    calibration subjects to fit IRT on, or an IRT model for every task."""
    _check_calibration_size(campaign)
    _check_irt_model_per_task(campaign)


def _check_calibration_size(campaign: Campaign) -> None:
    """A campaign that fits IRT has the subjects to (the base, the endpoints, the warm-ups): found
    out after calibration, the costly part, was paid."""
    spec = campaign.estimator
    if not spec.fits_irt:
        return
    subjects = 1 + len(campaign.models) + spec.warmup_merges
    if subjects < MIN_SUBJECTS:
        raise UserError(f"estimator.warmup_merges: {spec.warmup_merges} gives {subjects} calibration subjects "
                        f"(the base, {len(campaign.models)} endpoint(s) and the warm-ups); an IRT model needs "
                        f"{MIN_SUBJECTS}: set it to {MIN_SUBJECTS - 1 - len(campaign.models)} or more")
    if spec.dims != "auto" and spec.dims > subjects:  # the fit refused it, after calibration
        raise UserError(f"estimator.dims: {spec.dims} is more than the {subjects} calibration subjects (base, "
                        f"endpoints, warm-up merges) the IRT model is fitted on; at most {subjects}, or `auto`")


def _shipped_hint(folder: Path) -> str:
    """`irt_model: irt_models`, as the docs write it, is the checkout's folder: outside one (a wheel
    install), the path of the copy the package carries, to paste."""
    from evo_merge.shipped import shipped_dir

    shipped = shipped_dir("irt_models")
    if folder.name != "irt_models" or shipped is None:
        return ""
    return f"; the IRT models shipped with evo-merge are in {shipped}"


def _check_irt_model_per_task(campaign: Campaign) -> None:
    """A campaign scored by fitted IRT models has one per task: checked before anything is evaluated,
    not when the search first needs it, after calibration. One `kind: full` never reads is said
    unused (`ignored_settings`), not checked."""
    if not campaign.estimator.reads_irt_model:
        return
    folder = Path(campaign.estimator.irt_model)
    if not folder.is_dir():
        raise UserError(f"estimator.irt_model: {folder}: no such folder{_shipped_hint(folder)}")
    for task in campaign.tasks:
        if not (folder / task.label / "model.json").is_file():
            # a run folder given for its irt/: the way there, not only `irt fit`
            in_run = folder / IRT_FOLDER
            way = (f"a run's models are in its {IRT_FOLDER}/: give {in_run}"
                   if (in_run / task.label / "model.json").is_file() else "fit one with `evo-merge irt fit`")
            raise UserError(f"estimator.irt_model: {folder} holds no IRT model for task {task.label} "
                            f"(no {task.label}/model.json); {way}")


def check_irt_model_items(campaign: Campaign, tasks: Mapping[str, FitnessTask]) -> None:
    """Each task's `estimator.irt_model` fitted on the items the run will search (`task_irt_model`),
    with the hold-out split the run draws: `plan` said "fits" of a model fitted with another
    `algorithm.seed` or `limit`, which `run` refused at once."""
    from evo_merge.search.holdout import holdout_items
    from evo_merge.search.scoring import task_irt_model  # (loads torch: `plan` alone asks this before the run)

    if not campaign.estimator.reads_irt_model:
        return
    held_out = holdout_items(tasks, campaign.final.holdout, campaign.algorithm.seed)
    for name, task in tasks.items():
        task_irt_model(Path(campaign.estimator.irt_model), name, task.item_ids, frozenset(held_out.get(name, ())))
