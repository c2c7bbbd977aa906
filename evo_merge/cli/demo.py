"""`evo-merge demo`: the main job on tiny local models, offline."""

from __future__ import annotations

from pathlib import Path

import click

DEMO_METHODS = {
    "task_arithmetic": {"lambda": 1.0},
    "ties": {"density": 0.3},
    "dare_ties": {"density": 0.5, "seed": 0},
    "tsv": {"alpha": 1.0},
}


@click.command()
@click.option("--out", default="runs/demo", type=click.Path(path_type=Path), show_default=True)
def demo(out: Path) -> None:
    """Merge a tiny base model's fine-tunes with several methods and print what was built."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from evo_merge.config import Recipe
    from evo_merge.merge.export import export_merge
    from evo_merge.merge.plan import plan_from_recipe
    from evo_merge.weights import Checkpoint
    from evo_merge.zoo.tiny import save_tiny_family

    zoo = out / "zoo"
    if not (zoo / "base").exists():
        save_tiny_family(zoo, "llama", n_finetunes=3)
    base, endpoints = zoo / "base", sorted(zoo.glob("ft*"))
    table = Table(title=f"merges of {len(endpoints)} endpoints over {base}")
    for column in ("method", "folder", "parameters", "mean |theta - theta_0|"):
        table.add_column(column)
    for method, params in DEMO_METHODS.items():
        recipe = Recipe.model_validate({
            "merge_method": method, "base_model": str(base),
            "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in endpoints],
            "parameters": params,
        })
        folder = export_merge(plan_from_recipe(recipe), out / "models" / method, overwrite=True)
        with Checkpoint.open(folder) as merged, Checkpoint.open(base) as ref:
            shift = torch.cat([(merged.tensor(n) - ref.tensor(n)).abs().flatten() for n in ref.names]).mean()
        table.add_row(method, str(folder), str(params), f"{shift:.5f}")
    Console().print(table)
    click.echo(f"each folder loads with transformers; rebuild any with: evo-merge merge {out}/models/<method>/merge_recipe.yaml --out DIR")
