"""What `run`, `resume` and `plan` check of a campaign file before any model is loaded: its
models, estimator, device, `align` section and storage folder as the run will resolve them, the
defaults a run folder it is bound to was written under, and whether its memory plan fits. A
library user calls `check_campaign_fits` before `CampaignRunner.open`, as `run` does: the runner
itself finds a misfit only once the models are loaded."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from evo_merge.config import Campaign, EvaluatorSpec
from evo_merge.markup import shell
from evo_merge.user_paths import expand_home

log = logging.getLogger(__name__)


def campaign_models(campaign_file: Path, evaluator: EvaluatorSpec | None = None, planning: bool = False,
                    ) -> tuple[Campaign, Path, list[Path]]:
    """(campaign with absolute paths, base path, endpoint paths) as the run will see them; with
    `align`, the endpoints themselves (aligned copies have their shapes). `evaluator`: where the run
    evaluates when that is not the file's (`resume --scheduler`). `planning`: for `plan` alone, a GPU
    this machine lacks passes where its budget is given (`capacity.gpu_elsewhere`)."""
    from evo_merge.align.builders import check_arch
    from evo_merge.errors import naming_file
    from evo_merge.merge.storage import check_disk_dir
    from evo_merge.search.capacity import gpu_elsewhere
    from evo_merge.search.workspace import checked_campaign
    from evo_merge.weights.checkpoint import read_config
    from evo_merge.weights.devices import resolve_device

    with naming_file(campaign_file):
        campaign = Campaign.load(campaign_file)
        if evaluator is not None:
            campaign = campaign.model_copy(update={"evaluator": evaluator})
        campaign, refs = checked_campaign(campaign, campaign_file.parent)  # as the run resolves and checks them
        if not (planning and gpu_elsewhere(campaign)):
            # a GPU that is not here: said naming the file, before any model; `plan` can plan it against a budget
            resolve_device(campaign.device, missing="; to plan the campaign for a GPU machine from here, give its "
                                                    "memory as storage.device_budget_gib" if planning else "")
        for line in campaign.ignored_settings():
            log.warning(line)
        models = [refs[f"models.{i}"].path for i in range(len(campaign.models))]
        base = refs["base_model"].path if "base_model" in refs else models[0]  # aligned copies have its shapes
        _check_writable_in_place(base)
        storage, evaluator = campaign.storage, campaign.evaluator
        if storage.placement == "disk" and storage.disk_dir and not evaluator.remote:
            check_disk_dir(storage.disk_dir)  # a remote cluster's workers keep their files on their own machines
        if campaign.align is not None:
            check_arch(campaign.align.arch, read_config(models[0]) or {}, "align.arch")
    return campaign, base, models


def _check_writable_in_place(base: Path) -> None:
    """A campaign writes each merged tensor into the loaded base: one transformers holds only fused
    with others (a mixture of experts') is refused here, before a model is loaded, as the in-place
    merger would refuse it once the base is."""
    from evo_merge.weights import Checkpoint
    from evo_merge.weights.module_names import fused_error, fused_tensors

    with Checkpoint.open(base) as checkpoint:
        names = checkpoint.names
    if fused := fused_tensors(base, names):
        raise fused_error(base, next(name for name in names if name in fused), "a transformers model of it")


def planned_campaign(campaign_file: Path, run_dir: Path | None, check_bound: bool = False,
                     evaluator: EvaluatorSpec | None = None, planning: bool = False,
                     ) -> tuple[Campaign, Path, list[Path], bool]:
    """(campaign, base, endpoints, resuming) as the run in `run_dir` will see them. A folder a
    campaign is bound to runs it under the defaults it was written under (a folder from before
    `dtype: auto` evaluates in float32, whatever the file given now leaves unset), and only what a
    resume may change is to be suggested. `check_bound`: refuse a campaign other than the folder's,
    as `run` does (`resume` words an edited campaign.yaml its own way, later). `evaluator`: as for
    `campaign_models`, and `planning`."""
    from evo_merge.search.binding import as_written_at, bound_defaults, different_campaign, folder_differences
    from evo_merge.search.workspace import models_moved_hint, with_disk_dir

    if run_dir is None:
        campaign, base, models = campaign_models(campaign_file, evaluator, planning)
    else:
        with models_moved_hint(run_dir):
            campaign, base, models = campaign_models(campaign_file, evaluator, planning)
    if check_bound and run_dir is not None and (changed := folder_differences(run_dir, campaign)) is not None:
        raise different_campaign(run_dir, changed)
    version = None if run_dir is None else bound_defaults(run_dir)
    if version is not None:
        campaign = as_written_at(campaign, version)
    if run_dir is not None:
        campaign = with_disk_dir(campaign, run_dir)
    return campaign, base, models, version is not None


def check_campaign_fits(campaign_file: str | Path, run_dir: str | Path, evaluator: EvaluatorSpec | None = None,
                        ) -> None:
    """Stop with exit 2 when the campaign cannot fit in `run_dir` (before the folder is created or
    resumed), naming the `plan` command that prints the same plan. `evaluator`: where the run
    evaluates when that is not the file's (`resume --scheduler`): the memory planned is that
    machine's (none here for a remote cluster)."""
    from evo_merge.search.capacity import check_fits

    if not isinstance(campaign_file, (str, os.PathLike)):  # a Campaign: os.fspath's TypeError named no way on
        raise TypeError(f"check_campaign_fits takes the campaign's file, as `run` checks it, not "
                        f"{type(campaign_file).__name__}; write a campaign made in Python to a file first "
                        "(yaml.safe_dump(campaign.model_dump(mode='json')))")
    campaign_file, run_dir = expand_home(campaign_file), expand_home(run_dir)
    campaign, base, models, resuming = planned_campaign(campaign_file, run_dir, evaluator=evaluator)
    check_fits(campaign, base, models, resuming=resuming,
               details=shell("evo-merge", "plan", campaign_file, "--out", run_dir))
