"""`evo-merge run | resume | status | report | export`: search campaigns in a run folder."""

from __future__ import annotations

from pathlib import Path

import click

RUN_DIR = click.argument("run", type=click.Path(path_type=Path))


def _runner(run: Path, campaign_file: Path | None = None, progress=None):
    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.search.campaign import CampaignRunner

    if campaign_file is None:
        campaign_file = run / "campaign.yaml"
        if not campaign_file.is_file():
            raise UserError(f"{run}: not a campaign run folder (no campaign.yaml)")
    return CampaignRunner(Campaign.load(campaign_file), campaign_file.parent, run, progress=progress)


def _summary_table(runner, measured, exported):
    from rich.table import Table

    from evo_merge.search.campaign import reference_candidates

    table = Table(title="endpoints vs chosen merges (estimated / measured on all items)")
    table.add_column("model")
    for task in runner.task_names:
        table.add_column(task, justify="right")
    refs = reference_candidates([f"endpoint {m.name}" for m in runner.paths.models])
    for label, candidate in refs:
        e = runner.store.get(candidate.key)
        if e is not None and e.measured:
            table.add_row(label, *[f"{e.measured[t]:.3f}" for t in runner.task_names])
    for name, (eid, _) in exported.items():
        e = next(m for m in measured if m.id == eid)
        table.add_row(f"{name} ({e.method})", *[f"{e.estimates[t]:.3f} / {e.measured[t]:.3f}" for t in runner.task_names])
    return table


def _run(runner) -> None:
    from rich.console import Console

    from evo_merge.report.campaign import write_report

    from evo_merge.cli.progress import StageBars

    with StageBars() as bars:
        runner.progress = bars
        measured, exported = runner.run()
    report = write_report(runner.run_dir, runner.store, runner.task_names, runner.full_item_count(), exported)
    console = Console()
    console.print(_summary_table(runner, measured, exported))
    console.print(f"report: {report}")
    for name, (_, folder) in exported.items():
        console.print(f"model {name}: {folder}")


@click.command()
@click.argument("campaign_file", metavar="CAMPAIGN.yaml", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="run folder (created)")
def run(campaign_file: Path, out: Path) -> None:
    """Start a search campaign in the run folder OUT (an existing run of the same campaign is resumed)."""
    _run(_runner(out, campaign_file))


@click.command()
@RUN_DIR
def resume(run: Path) -> None:
    """Continue an interrupted campaign from its last complete generation, reusing every evaluation."""
    _run(_runner(run))


@click.command()
@RUN_DIR
def status(run: Path) -> None:
    """Generation, evaluations, best so far and item evaluations spent."""
    from rich.console import Console

    runner = _runner(run)
    store = runner.store
    algorithm = store.load_checkpoint()
    generation = 0 if algorithm is None else algorithm.n_gen - 1
    search = [e for e in store.evaluations("search")]
    ok = [e for e in search if e.status == "ok"]
    console = Console()
    console.print(f"campaign {runner.campaign.name}: generation {generation}/{runner.campaign.algorithm.generations}"
                  f"{' (finished)' if store.get_meta('finished') else ''}")
    console.print(f"evaluations: {len(store.evaluations())} ({len(search)} search, "
                  f"{len(search) - len(ok)} failed)")
    for task in runner.task_names:
        if ok:
            best = max(ok, key=lambda e: e.estimates[task])
            console.print(f"best {task}: {best.estimates[task]:.3f} (evaluation {best.id}, {best.method})")
    spent, full = store.items_evaluated("search"), len(search) * runner.full_item_count()
    console.print(f"item evaluations in search: {spent:,} vs {full:,} for a full-evaluation search "
                  f"({full / max(spent, 1):.1f}x saving); total with calibration and front "
                  f"{store.items_evaluated(measured=True):,}")


@click.command()
@RUN_DIR
def report(run: Path) -> None:
    """(Re)write report.md, pareto.csv and the plots of a run."""
    from evo_merge.report.campaign import write_report

    runner = _runner(run)
    path = write_report(runner.run_dir, runner.store, runner.task_names, runner.full_item_count())
    click.echo(f"wrote {path}")


@click.command()
@RUN_DIR
@click.option("--pick", "pick", required=True, type=int, help="evaluation id (see pareto.csv or status)")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True)
@click.option("--push-to-hub", "repo_id", metavar="ORG/NAME", help="upload the exported folder to this Hub repo")
@click.option("--private", is_flag=True, help="create the Hub repo private")
@click.option("--revision", help="Hub branch to upload to (created if missing)")
@click.option("--dry-run", is_flag=True, help="list what --push-to-hub would upload; upload nothing")
def export(run: Path, pick: int, out: Path, overwrite: bool, repo_id: str | None, private: bool,
           revision: str | None, dry_run: bool) -> None:
    """Export one evaluated candidate of a run as an HF model folder (and push it to the Hub)."""
    from evo_merge.errors import UserError
    from evo_merge.report.upload import check_repo_id

    if repo_id is not None:
        check_repo_id(repo_id)  # before the export's minutes, not after
    elif private or revision or dry_run:
        raise UserError("--private, --revision and --dry-run go with --push-to-hub ORG/NAME")
    runner = _runner(run)
    evaluation = next((e for e in runner.store.evaluations() if e.id == pick), None)
    if evaluation is None or evaluation.status != "ok":
        raise UserError(f"--pick {pick}: no successful evaluation with that id in {run}")
    folder = runner.export(evaluation, out, overwrite=overwrite)
    click.echo(f"wrote {folder}")
    if repo_id is not None:
        _push(folder, repo_id, private=private, revision=revision, dry_run=dry_run)


def _push(folder: Path, repo_id: str, *, private: bool, revision: str | None, dry_run: bool) -> None:
    from huggingface_hub import get_token

    from evo_merge.report.upload import LOGIN_HINT, plan_upload, push_to_hub

    plan = plan_upload(folder)
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not dry_run:
        click.echo(f"uploaded: {push_to_hub(plan, repo_id, private=private, revision=revision)}")
        return
    where = f"{repo_id}@{revision}" if revision else repo_id
    click.echo(f"dry run: would upload {len(plan.files)} files to {where}{' (private)' if private else ''}:")
    for name, size in plan.files:
        click.echo(f"  {name}  {size:,} bytes")
    if not get_token():
        click.echo(f"no token found: {LOGIN_HINT}", err=True)
