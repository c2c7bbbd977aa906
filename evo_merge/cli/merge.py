"""`evo-merge merge RECIPE.yaml --out DIR`."""

from __future__ import annotations

import re
from pathlib import Path

import click

from evo_merge.cli.paths import UserPath

# units of --max-shard-size: Hugging Face's (`save_pretrained(max_shard_size="2GB")`, decimal or binary)
# and mergekit's (`--out-shard-size 5B`: K, M, B for thousand, million, billion bytes)
SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "kb": 10**3, "mb": 10**6, "gb": 10**9,
              "kib": 2**10, "mib": 2**20, "gib": 2**30}


class ByteSize(click.ParamType):
    """A size in bytes as Hugging Face or mergekit writes it: `2GB`, `1.5GiB`, `5B` (mergekit's five
    billion), or a number of bytes. `Mb`, which Hugging Face reads as megabits, is refused."""

    name = "SIZE"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = match[2] if match else ""
        if match and re.fullmatch(r"[kKmMgG]b", unit):
            self.fail(f"{value!r}: {unit} reads as bits in Hugging Face's units; write {unit[0].upper()}B for bytes",
                      param, ctx)
        size = int(float(match[1]) * SIZE_UNITS[unit.lower()]) if match and unit.lower() in SIZE_UNITS else 0
        if size < 1:
            self.fail(f"{value!r} is not a size (a number of bytes, or with a unit: 500MB, 2GB, 1.5GiB, or "
                      "mergekit's 5B)", param, ctx)
        return size


@click.command()
@click.argument("recipe", type=UserPath(path_type=Path))
@click.option("--out", required=True, type=UserPath(path_type=Path), help="output model folder")
@click.option("--dtype", default=None,
              help="computation and output dtype: float32, bfloat16, float16 (or fp32, bf16, fp16, half; "
                   "default: the recipe's)")
@click.option("--allow-pickle", is_flag=True, help="also read .bin/.pt/.pth/.ckpt checkpoints (weights_only=True)")
@click.option("--overwrite", is_flag=True,
              help="replace OUT if it is a model folder (only once the new folder is complete)")
@click.option("--device", default="cpu", show_default=True,
              help="where each tensor is combined: cpu, cuda, cuda:N or auto (a GPU makes TSV-M's SVDs "
                   "practical at 7B); inputs are read and the output written on the host")
@click.option("--max-shard-size", type=ByteSize(), default="5GiB", show_default=True,
              help="split the weights into safetensors files of at most this size (500MB, 2GB, or mergekit's 5B; "
                   "one file is held in memory while written)")
def merge(recipe: Path, out: Path, dtype: str | None, allow_pickle: bool, overwrite: bool, device: str,
          max_shard_size: int) -> None:
    """Build one merge from a mergekit-style RECIPE into an HF model folder."""
    from evo_merge.cli.progress import track
    from evo_merge.errors import UserError
    from evo_merge.merge.export import INPUTS_FILE, changed_inputs, export_merge
    from evo_merge.merge.plan import plan_from_recipe
    from evo_merge.merge.recipe import Recipe
    from evo_merge.weights import parse_dtype
    from evo_merge.weights.devices import resolve_device
    from evo_merge.weights.references import short_label

    try:
        parse_dtype(dtype)
    except UserError as err:
        raise UserError(f"--dtype: {err}") from None
    where = resolve_device(device, key="--device")
    plan = plan_from_recipe(Recipe.load(recipe), root=recipe.parent, dtype=dtype, source=recipe,
                            allow_pickle=allow_pickle)
    for name in changed_inputs(plan, recipe):  # a rebuild whose inputs changed: not the folder's weights
        click.echo(f"warning: {name}: its weights are not those {recipe} was merged from ({INPUTS_FILE} beside "
                   "it): the output will differ from that merge", err=True)
    export_merge(plan, out, overwrite=overwrite, device=where, max_shard_bytes=max_shard_size,
                 track=lambda items, total: track(items, total, f"merging ({plan.method.name})"))
    base = plan.source_recipe.base_model
    inputs = f"{len(plan.refs) - 1} model(s) onto base {short_label(base)}" if base else f"{len(plan.refs)} model(s)"
    click.echo(f"wrote {out} ({plan.method.name} of {inputs}, {len(plan.jobs)} tensors)")
