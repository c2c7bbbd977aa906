"""`evo-merge responses build`: a real response matrix from a model zoo."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def responses() -> None:
    """Response matrices for IRT, from real models."""


@responses.command("build")
@click.option("--zoo", required=True, type=click.Path(path_type=Path), help="zoo folder (base/ + endpoints, zoo.json)")
@click.option("--tasks", required=True, help="comma-separated task names or paths")
@click.option("--n-merges", default=60, show_default=True, type=click.IntRange(min=0),
              help="random merges besides base and endpoints")
@click.option("--scenario", type=click.Choice(["task", "subskill"]), default="task", show_default=True)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="long-format CSV")
def build(zoo: Path, tasks: str, n_merges: int, scenario: str, seed: int, out: Path) -> None:
    """Score the base, the endpoints and N random merges on every item of every task."""
    from evo_merge.cli.progress import StageBars
    from evo_merge.search.responses import build_responses
    from evo_merge.tasks.registry import resolve_task
    from evo_merge.zoo.manifest import read_zoo

    endpoints = [zoo / m for m in read_zoo(zoo).endpoints]
    resolved = {Path(t).stem if "/" in t else t: resolve_task(t) for t in tasks.split(",") if t}
    if not resolved:
        raise click.BadParameter("no task names", param_hint="--tasks")
    with StageBars() as bars:
        table = build_responses(zoo / "base", endpoints, resolved, n_merges, seed=seed, scenario=scenario,
                                progress=lambda done, total: bars("scoring subjects", done, total))
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    click.echo(f"wrote {out}: {table.subject.nunique()} subjects x {table.item.nunique()} items")
