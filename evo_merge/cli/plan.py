"""`evo-merge plan CAMPAIGN.yaml`: the memory a campaign needs, from checkpoint headers, before it runs."""

from __future__ import annotations

from pathlib import Path

import click

from evo_merge.cli.extras import check_campaign_extras
from evo_merge.cli.paths import UserPath
from evo_merge.cli.trust import TRUST_TASKS, check_tasks_trusted, run_folder_of
from evo_merge.search.preflight import planned_campaign


def item_budget(campaign, tasks: dict, n_models: int, held: dict[str, int]) -> str:
    """The item evaluations of the calibration and of the search at most (beside scoring every
    search candidate on every item), where a slip in a number shows: a thousand warm-up merges are
    a thousand full evaluations. The standard merges and the final phase come on top. `held`: each
    task's held-out items (`held_out`)."""
    spec, algorithm = campaign.estimator, campaign.algorithm
    searched = {name: len(task.item_ids) - held[name] for name, task in tasks.items()}
    whole = sum(searched.values())
    per_task = {name: len(set((task.scenarios or {"": ""}).values())) for name, task in tasks.items()}
    if spec.whole:
        each, how = whole, "every search item"
    elif spec.adaptive:
        each, how = sum(min(spec.max_items * n, searched[name]) for name, n in per_task.items()), "at most, adaptive"
    else:
        each, how = sum(min(spec.anchors * n, searched[name]) for name, n in per_task.items()), "anchors"
    fitted_here = spec.fits_irt
    subjects = 1 + n_models + (spec.warmup_merges if fitted_here else 0)
    candidates = algorithm.population * algorithm.generations
    standard = ("every search item" if spec.whole else "an adaptive test, as any candidate" if spec.adaptive
                else "the anchors, as any candidate")
    return (f"items: calibration {subjects:,} models x {whole:,} search items = {subjects * whole:,}; search at most "
            f"{candidates:,} candidates x {each:,} ({how}) = {candidates * each:,} (every item: "
            f"{candidates * whole:,}); the standard merges not among the warm-ups (on {standard}) and the "
            "final phase (its race, the picks measured whole) add theirs")


def task_line(name: str, n_items: int, holdout, held: int, asked: int | None = None) -> str:
    """A task, its items and how many the final phase holds out (`held`, the run's split, and the
    `asked` it falls short of, `holdout.shortfalls`): with `holdout: auto` a task under AUTO_MIN_ITEMS
    items holds none, so its picks' published scores are on items the search chose on; the report
    said so after the run, the plan says it before."""
    from evo_merge.search.holdout import AUTO_MIN_ITEMS

    if held:
        fewer = f" of the {asked:,} asked: each scenario keeps an item for the search" if asked else ""
        return f"{name} ({n_items:,} items, {held:,} held out{fewer})"
    if holdout == "auto":
        return (f"{name} ({n_items:,} items, none held out: fewer than {AUTO_MIN_ITEMS}, so its picks are scored on "
                "the items the search chose on)")
    return f"{name} ({n_items:,} items)"


@click.command()
@click.argument("campaign_file", metavar="CAMPAIGN.yaml", type=UserPath(path_type=Path))
@click.option("--out", type=UserPath(path_type=Path), default=None,
              help="the run folder: a campaign bound to it is planned as it resumes there (with the defaults "
                   "it was written under), and only what a resume may change is suggested")
@TRUST_TASKS
def plan(campaign_file: Path, out: Path | None, trust_tasks: bool) -> None:
    """Print the host and device memory a campaign needs and whether it fits (exit 2 if not); its
    models, tasks, estimator and `align` section are checked as `run` checks them before it loads
    a model (what needs the models loaded, such as MASS's decomposition, `run` finds out)."""
    from evo_merge.errors import naming_file
    from evo_merge.search.capacity import campaign_plan, decomposition_note, gpu_note
    from evo_merge.search.estimator_checks import check_irt_model_items
    from evo_merge.search.evaluator import campaign_tasks
    from evo_merge.search.holdout import holdout_items, shortfalls
    from evo_merge.search.run_folder import check_run_folder

    if out is not None:
        check_run_folder(out)
    campaign, base, models, resuming = planned_campaign(campaign_file, out, check_bound=True, planning=True)
    with naming_file(campaign_file):
        check_campaign_extras(campaign)  # as `run` refuses it: dask or a tracker's package missing
    if (folder := run_folder_of(campaign_file, out)) is not None:  # the folder's code, as `resume` would run it
        check_tasks_trusted(campaign_file, folder, trust_tasks)
    with naming_file(campaign_file):
        tasks = campaign_tasks(campaign)
        # the split the run makes (a holdout leaving a task no search item refused, as `run` refuses it)
        split = holdout_items(tasks, campaign.final.holdout, campaign.algorithm.seed)
        short = shortfalls(tasks, campaign.final.holdout, split)
        held = {name: len(items) for name, items in split.items()}
        lines = [task_line(name, len(task.item_ids), campaign.final.holdout, held[name], short.get(name, (None,))[0])
                 for name, task in tasks.items()]
        check_irt_model_items(campaign, tasks)
    result = campaign_plan(campaign, base, models, resuming=resuming, planning=True)
    click.echo("tasks: " + ", ".join(lines))
    click.echo(item_budget(campaign, tasks, len(models), held))
    if note := gpu_note(campaign):
        click.echo(note)
    click.echo(result.table())
    if note := decomposition_note(campaign, result, len(models)):
        click.echo(f"note: {note}")
    if not result.fits:
        raise result.refusal()
