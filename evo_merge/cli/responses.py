"""`evo-merge responses build`: a real response matrix from a model zoo."""

from __future__ import annotations

from pathlib import Path

import click

from evo_merge.cli.paths import UserPath
from evo_merge.markup import shell


@click.group()
def responses() -> None:
    """Response matrices for IRT, from real models."""


@responses.command("build")
@click.option("--zoo", required=True, type=UserPath(path_type=Path), help="zoo folder (base/ + endpoints, zoo.json)")
@click.option("--tasks", required=True, help="comma-separated task names or paths")
@click.option("--n-merges", default=60, show_default=True, type=click.IntRange(min=0),
              help="random merges besides base and endpoints")
@click.option("--scenario", type=click.Choice(["task", "subskill"]), default="task", show_default=True,
              help="IRT scenario of each item: its task, or the task's own scenario (TASK:SCENARIO)")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="seed of the random merges")
@click.option("--out", required=True, type=UserPath(path_type=Path), help="long-format CSV")
@click.option("--overwrite", is_flag=True, help="replace an existing OUT (refused otherwise, before any scoring)")
def build(zoo: Path, tasks: str, n_merges: int, scenario: str, seed: int, out: Path, overwrite: bool) -> None:
    """Score the base, the endpoints and N random merges on every item of every task."""
    from pydantic import ValidationError

    from evo_merge.cli.outputs import check_output_file, write_output_file
    from evo_merge.cli.progress import StageBars
    from evo_merge.config import TaskSpec
    from evo_merge.errors import UserError
    from evo_merge.schema import validator_message
    from evo_merge.search.responses import build_responses
    from evo_merge.tasks.base import FitnessTask
    from evo_merge.tasks.registry import resolve_task
    from evo_merge.zoo.manifest import finished_zoo

    check_output_file(out, overwrite)
    names = [t.strip() for t in tasks.split(",") if t.strip()]  # "arith, lang" as the irt options read lists
    if not names:
        raise UserError("--tasks: no task names")
    resolved: dict[str, FitnessTask] = {}
    owner: dict[str, str] = {}  # item id -> the task that has it: one matrix holds every task's items
    for spec in names:
        try:  # named as a campaign names the task, so an IRT model fitted on these responses serves it
            name = TaskSpec(task=spec).label
        except ValidationError as error:
            raise UserError(f"--tasks: {validator_message(error.errors()[0])}") from None
        if name in resolved:
            raise UserError(f"--tasks: two tasks named {name!r}; give each a distinct file name")
        resolved[name] = resolve_task(spec)
        if shared := next((i for i in resolved[name].item_ids if i in owner), None):
            raise UserError(f"--tasks: item {shared!r} is in both {owner[shared]!r} and {name!r}")
        owner.update(dict.fromkeys(resolved[name].item_ids, name))
    endpoints = [zoo / m for m in finished_zoo(zoo).endpoints]
    with StageBars() as bars:
        table = build_responses(zoo / "base", endpoints, resolved, n_merges, seed=seed, scenario=scenario,
                                progress=lambda done, total: bars("scoring subjects", done, total))
    write_output_file(out, table.to_csv(index=False), overwrite)
    click.echo(f"wrote {out}: {table.subject.nunique()} subjects x {table.item.nunique()} items")


@responses.command("export")
@click.argument("run", type=UserPath(path_type=Path))
@click.option("--task", help="one task's rows only (its items as the task names them, for `irt fit`)")
@click.option("--out", required=True, type=UserPath(path_type=Path), help="long-format CSV")
@click.option("--overwrite", is_flag=True, help="replace an existing OUT (refused otherwise)")
def export(run: Path, task: str | None, out: Path, overwrite: bool) -> None:
    """What campaign RUN measured on every search item: one row per candidate and item, subjects
    named by their evaluations.csv id, for `irt validate` (do anchors and IRT pay on merges of these
    models?) and `irt fit` (an `estimator.irt_model` for the next campaign)."""
    from evo_merge.cli.outputs import check_output_file, check_outside_run, write_output_file
    from evo_merge.errors import UserError
    from evo_merge.search.binding import read_run
    from evo_merge.search.responses import run_responses

    store, facts = read_run(run)  # first: a folder that is no run is named as such, not as --out's owner
    try:
        check_outside_run(out, run, "its tables, which `report` rewrites")
        check_output_file(out, overwrite)
        table = run_responses(store, task)
        finished = store.finished(facts["generations"])
    finally:
        store.close()
    if table.empty:
        raise UserError(f"{run}: no candidate was measured on every search item yet (calibration does that first)")
    write_output_file(out, table.to_csv(index=False), overwrite)
    n, k = table.task.nunique(), table.scenario.nunique()
    tasks = "" if task else f"{n} task{'s' * (n != 1)}, "
    click.echo(f"wrote {out}: {table.subject.nunique()} subjects x {table.item.nunique()} items "
               f"({tasks}{k} scenario{'s' * (k != 1)})"
               + ("" if finished else "; the run is not finished: what it measured so far "
                  f"(`{shell('evo-merge', 'status', run)}`)"))
