"""`evo-merge mass build`: MASS models (per-input routing over task singular vectors)."""

from __future__ import annotations

from pathlib import Path

import click

from evo_merge.cli.paths import UserPath


@click.group("mass")
def mass() -> None:
    """Build MASS models: per input, the merge of the TSV factors of the tasks it routes to (score one
    with `evo-merge eval --model FOLDER`)."""


@mass.command("build")
@click.option("--base", required=True, type=UserPath(path_type=Path), help="Base model folder.")
@click.option("--models", "first", required=True, type=UserPath(),
              help="Fine-tuned model folders: --models A B [C ...].")
@click.argument("more", nargs=-1, type=UserPath(), metavar="")  # --models A B C: the folders after A
@click.option("--out", required=True, type=UserPath(path_type=Path), help="Output MASS folder.")
@click.option("--layer", type=int, default=None, help="Block routed on (default: the middle block).")
@click.option("--threshold", type=float, default=0.2, show_default=True, help="Keep tasks above this probability.")
@click.option("--max-tasks", type=int, default=3, show_default=True, help="Keep at most this many tasks.")
@click.option("--token", type=click.Choice(["mean", "last"]), default="mean", show_default=True,
              help="Route on the mean over the input's tokens or on its last token.")
@click.option("--link-base", is_flag=True, help="Store the base's path instead of a copy of it.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is a model folder.")
def build(base, first, more, out, layer, threshold, max_tasks, token, link_base, overwrite) -> None:
    """Decompose each model's task vector (TSV-C factors) and write a MASS folder to OUT."""
    from pydantic import ValidationError
    from transformers.utils import logging as hf_logging

    from evo_merge.cli.progress import track
    from evo_merge.errors import UserError
    from evo_merge.mass import MassModel
    from evo_merge.mass.routing import RoutingConfig
    from evo_merge.weights.export import check_output_folder

    # the routing settings' own check, said as the option's before the models are read (after them,
    # `--max-tasks 0` was "MASS routing settings: max_tasks: ...")
    try:
        RoutingConfig(layer=layer or 0, weight="", threshold=threshold, max_tasks=max_tasks, token=token)
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"--{first['loc'][0].replace('_', '-')} {first['input']}: {first['msg']}") from None
    for option, path in [("--base", base), *(("--models", m) for m in (first, *more))]:
        if not Path(path).is_dir():  # "model path not found: org/name" named neither the option nor the way
            raise UserError(f"{option} {path}: no such folder; mass build reads model folders (a Hub model: the "
                            "folder `hf download` prints; a LoRA adapter: merge it into its model first)")
    # before the decomposition, not after it; an input as OUT: --overwrite replaced an endpoint by its own MASS
    check_output_folder(out, overwrite, [Path(p) for p in (base, first, *more)])
    hf_logging.disable_progress_bar()
    model = MassModel.from_checkpoints(
        base, [first, *more], layer=layer, threshold=threshold, max_tasks=max_tasks, token=token,
        track=lambda items, total: track(items, total, "decomposing task vectors"),
    )
    model.save(out, copy_base=not link_base, overwrite=overwrite)
    click.echo(f"wrote {out}: MASS over {', '.join(model.tasks)}, routing at block {model.routing.layer}")

