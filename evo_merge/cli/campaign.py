"""`evo-merge run | resume | status | report | export`: search campaigns in a run folder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    runner.store.mark_finished()  # after the report: a run cut short while writing it is not finished
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
    from evo_merge.search.store import check_run_folder, remove_unused_run_folder

    check_run_folder(out)
    new = not out.exists()
    with _holding(out):
        try:
            _run(_runner(out, campaign_file))
        except Exception:
            if new:  # a failed start leaves no folder bound to its config
                remove_unused_run_folder(out)
            raise


@click.command()
@RUN_DIR
def resume(run: Path) -> None:
    """Continue an interrupted campaign from its last complete generation, reusing every evaluation."""
    with _holding(run):
        _run(_runner(run))


@contextmanager
def _holding(run: Path) -> Iterator[None]:
    """The run folder's lock for the whole command; Ctrl-C ends with 130 and the way to go on."""
    from evo_merge.cli.faults import Interrupted
    from evo_merge.search.lock import RunLock

    with RunLock(run):
        try:
            yield
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; resume with: evo-merge resume {run}") from None


@click.command()
@RUN_DIR
def status(run: Path) -> None:
    """Generation, evaluations, best so far and item evaluations spent."""
    from rich.console import Console

    runner = _runner(run)
    store, generations = runner.store, runner.campaign.algorithm.generations
    search = [e for e in store.evaluations("search")]
    ok = [e for e in search if e.status == "ok"]
    console = Console()
    console.print(f"campaign {runner.campaign.name}: generation {store.generations_completed()}/{generations}"
                  f"{' (finished)' if store.finished(generations) else ''}")
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
def export(run: Path, pick: int, out: Path, overwrite: bool) -> None:
    """Export one evaluated candidate of a run as an HF model folder."""
    from evo_merge.errors import UserError

    runner = _runner(run)
    evaluation = next((e for e in runner.store.evaluations() if e.id == pick), None)
    if evaluation is None or evaluation.status != "ok":
        raise UserError(f"--pick {pick}: no successful evaluation with that id in {run}")
    click.echo(f"wrote {runner.export(evaluation, out, overwrite=overwrite)}")
