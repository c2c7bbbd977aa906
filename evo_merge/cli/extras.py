"""The optional packages a campaign needs (its `evaluator: dask`, its `tracking:` section), checked
by `plan` as `run` finds them missing: `plan` said `fits` (exit 0) for a campaign `run` then
refused at once."""

from __future__ import annotations

from evo_merge.config import Campaign


def check_campaign_extras(campaign: Campaign) -> None:
    """Stop with `run`'s own one-line error (exit 2) when a package the campaign names is missing:
    the evaluator's own check (`import_distributed`), and the trackers' (`check_tracker_packages`,
    which starts none: starting one would create the tracker's run)."""
    if campaign.evaluator.kind == "dask":
        from evo_merge.search.distributed import import_distributed

        import_distributed()
    from evo_merge.report.tracking import check_tracker_packages

    check_tracker_packages(campaign.tracking)
