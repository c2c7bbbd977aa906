"""The optional packages a campaign needs (its `evaluator: dask`, its `tracking:` section), checked
by `plan` as `run` finds them missing: `plan` said `fits` (exit 0) for a campaign `run` then
refused at once."""

from __future__ import annotations

import importlib.util

from evo_merge.config import Campaign


def check_campaign_extras(campaign: Campaign) -> None:
    """Stop with `run`'s own one-line error (exit 2) when a package the campaign names is missing.
    The dask check is the evaluator's own (`import_distributed`); the trackers' is worded as
    `report.tracking.open_tracker` words it, with its install hint, where it is checked only as a
    tracker starts (which `plan` must not: it would create the tracker's run)."""
    from evo_merge.errors import UserError

    if campaign.evaluator.kind == "dask":
        from evo_merge.search.distributed import import_distributed

        import_distributed()
    tracking = campaign.tracking
    if tracking is None:
        return
    from evo_merge.report.tracking import EXTRA

    for key in ("mlflow", "wandb"):  # each key's package is named as the key
        if getattr(tracking, key) is not None and importlib.util.find_spec(key) is None:
            raise UserError(f"tracking.{key}: the {key} package is not installed ({EXTRA})")
