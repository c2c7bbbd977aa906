"""`evo-merge align`: put models trained from different initialisations into one basis."""

from __future__ import annotations

import click

from evo_merge.align.methods import METHODS
from evo_merge.cli.paths import UserPath
from evo_merge.errors import UserError


@click.command("align")
@click.option("--models", "first", required=True, type=UserPath(), help="Model folders: --models A B [C ...].")
@click.argument("more", nargs=-1, type=UserPath(), metavar="")  # --models A B C: the folders after A
@click.option("--arch", required=True, help="mlp | cnn | resnet | llama | gpt2 | SPEC.yaml")
@click.option("--method", type=click.Choice(METHODS), default="weight", show_default=True,
              help="Matching on weights (weight, c2m3) or on activations of --data (activation, mudsc).")
@click.option("--data", type=UserPath(), default=None,
              help="Inputs for activation and mudsc: .safetensors with x (and y), or a text file.")
@click.option("--f", "balance", type=float, default=None, help="MuDSC balance factor (searched if omitted).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the matching.")
@click.option("--out", required=True, type=UserPath(), help="Output folder.")
@click.option("--overwrite", is_flag=True, help="replace an earlier alignment in --out (once the new one is written)")
def align(first: str, more: tuple[str, ...], arch: str, method: str, data, balance, seed: int, out: str,
          overwrite: bool) -> None:
    """Align models and write each, mapped into the common basis, under OUT."""
    from pathlib import Path

    from evo_merge.align.api import align_folders, check_alignment_folder, check_alignment_output
    from evo_merge.weights.export import staged_folder

    if balance is not None and method != "mudsc":  # the other methods have no balance: it was ignored silently
        raise UserError(f"--f is MuDSC's balance factor; --method {method} does not use it")
    target = Path(out)
    check_alignment_output(target, overwrite, [first, *more])
    # a failed run leaves OUT as it was
    with staged_folder(target, overwrite=overwrite, check=check_alignment_folder) as folder:
        result = align_folders([first, *more], arch, method, folder, data=data, f=balance, seed=seed)
    for i, perms in enumerate(result.perms):
        moved = sum(int((p != range(len(p))).sum()) for p in perms.values())
        click.echo(f"model {i}: {moved} units moved")
    click.echo(f"wrote {out}")
