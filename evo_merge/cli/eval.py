"""`evo-merge eval`: score one saved model on one task, per item."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import click

from evo_merge.cli.paths import UserPath
from evo_merge.config import EvaluatorSpec


@click.command("eval")
@click.option("--model", "model_dir", required=True, type=UserPath(path_type=Path),
              help="Model folder (HF, or a plain network with an `arch` config), a MASS folder, or a Hub id "
              "(org/name[@revision]) from the Hugging Face cache.")
@click.option("--task", "task_spec", required=True, help="Task: lm-eval name, YAML/folder, shipped benchmark, plugin.")
@click.option("--items", "items_file", type=UserPath(path_type=Path),
              help="File of item ids, one per line; or an anchor set `irt anchors` stored (MODEL/anchors/*.json): "
                   "its anchors that are items of the task.")
@click.option("--batch-size", default=EvaluatorSpec.model_fields["batch_size"].default, show_default=True,
              type=click.IntRange(min=1), help="as a campaign's evaluator.batch_size")
@click.option("--device", default=None, help="torch device (default: where the model loads).")
@click.option("--metric", default=None, help="lm-eval metric[,filter], e.g. exact_match,strip.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="a task option, as a campaign's tasks[].options gives it (VALUE read as YAML: limit=80 is a "
                   "number); repeatable")
@click.option("--subject", default=None, help="Subject name in the table (default: the folder's name, a Hub id's "
              "name).")
@click.option("--allow-pickle", is_flag=True, help="also read .bin weights (pickle: only from a source you trust)")
@click.option("--out", required=True, type=UserPath(path_type=Path), help="Output CSV.")
@click.option("--overwrite", is_flag=True, help="replace an existing OUT (refused otherwise, before any scoring)")
def eval_(model_dir, task_spec, items_file, batch_size, device, metric, options, subject, allow_pickle, out,
          overwrite) -> None:
    """Write long-format per-item scores `subject,item,score[,scenario]` to OUT."""
    import torch
    from transformers.utils import logging as hf_logging

    from evo_merge.cli.outputs import check_output_file, write_output_file
    from evo_merge.cli.progress import StageBars
    from evo_merge.errors import UserError, described
    from evo_merge.irt.anchors import read_anchors
    from evo_merge.tasks.base import item_positions
    from evo_merge.tasks.registry import resolve_task
    from evo_merge.tasks.scoring import read_item_ids, score_table
    from evo_merge.weights.devices import resolve_device

    hf_logging.disable_progress_bar()  # keep errors on one line
    given = _task_options(options)  # before the output's check and any model: a slip in a flag
    check_output_file(out, overwrite)  # another model's scores, minutes of work at 7B
    if device is not None:
        device = str(resolve_device(device, key="--device"))
    anchors = items_file is not None and items_file.suffix == ".json"
    items = (read_anchors(items_file).all_items() if anchors else read_item_ids(items_file)) if items_file else None
    if items == []:
        raise UserError(f"--items {items_file}: no item ids in it")
    model_dir, name = _model_folder(model_dir)
    model, tokenizer = _load(model_dir, allow_pickle)
    # the options over the flags, as a campaign's options go over its evaluator's batch size
    settings = {"batch_size": batch_size, "device": device, "metric": metric, **given}
    try:  # named as the user gave it: a shipped benchmark's lm-eval task has a name of its own
        task = resolve_task(task_spec, **{k: v for k, v in settings.items() if v is not None})
    except UserError as exc:
        text = str(exc).removeprefix(f"task {task_spec}: ").removeprefix(f"task file {task_spec}: ")
        raise UserError(f"--task {task_spec}: {text}") from None
    if anchors:
        items = _task_anchors(items, task, items_file)
    if items is not None:  # the task's own check, naming the file and the task as the user gave them
        try:
            item_positions(task_spec, {item: n for n, item in enumerate(task.item_ids)}, items)
        except UserError as exc:
            raise UserError(f"--items {items_file}: {exc}") from None
    with StageBars() as bars:  # minutes at 7B: a bar on a terminal, a line every 30 s in a log
        try:
            table = score_table(task, model, tokenizer, subject or name, items,
                                lambda done, total: bars(f"scoring {task.name}", done, total))
        except (UserError, OSError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001  a plugin's scorer may raise anything, as a campaign takes it
            raise UserError(f"task {task.name}: scoring raised {described(exc)} (--debug shows where)") from exc
    if table.empty:
        raise UserError(f"task {task.name}: no items to score")
    write_output_file(out, table.to_csv(index=False), overwrite)  # a full disk keeps the file that was there
    click.echo(f"{task.name}: {len(table)} items, mean score {table['score'].mean():.4f} -> {out}")


def _model_folder(given: Path) -> tuple[Path, str]:
    """(the folder `--model` names, the subject's default name): a Hub id (`org/name[@rev]`) is its
    snapshot in the Hugging Face cache, named as a campaign's tables name it (a snapshot folder's name
    is a commit hash). An adapter (`+adapter`) is not read here: merge it into its model first."""
    from evo_merge.errors import UserError
    from evo_merge.weights.references import is_hub_id, resolve_reference, short_label, split_adapter

    if given.exists() or not is_hub_id(split_adapter(str(given), Path.cwd())[0].partition("@")[0]):
        return given, given.resolve().name  # a folder, or what `_load` says is none
    ref = resolve_reference(str(given), Path.cwd(), "--model")  # the cache's snapshot, or why there is none
    if ref.lora is not None:
        raise UserError(f"--model {given}: eval scores a model, not a model with a LoRA adapter; merge the adapter "
                        "into it first (evo-merge merge)")
    return ref.path, short_label(ref.name)


def _task_anchors(anchors: list[str], task: Any, file: Path) -> list[str]:
    """The anchors of `file` that are items of `task`: an IRT model fitted over several tasks
    (`responses build --tasks a,b`) stores one set for all of them, scored one task at a time."""
    from evo_merge.errors import UserError

    held = set(task.item_ids)
    mine = [item for item in anchors if item in held]
    if not mine:
        raise UserError(f"--items {file}: none of its {len(anchors)} anchors is an item of task {task.name}")
    if len(mine) < len(anchors):
        click.echo(f"{file}: {len(mine)} of its {len(anchors)} anchors are items of task {task.name}; scoring those",
                   err=True)
    return mine


def _task_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--option KEY=VALUE` pairs as a campaign's `tasks[].options` holds them: each value a YAML
    scalar (a number, a truth value or text), the keys given once."""
    import yaml

    from evo_merge.config import TaskSpec
    from evo_merge.errors import UserError

    scalars = get_args(get_args(TaskSpec.model_fields["options"].annotation)[1])  # the schema's value types
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--option {pair}: expected KEY=VALUE, e.g. limit=80")
        if key in options:
            raise UserError(f"--option {key}: given twice")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except (yaml.YAMLError, ValueError):
            value = text
        if not isinstance(value, scalars):
            raise UserError(f"--option {pair}: a task option is a number, true/false or text, not a "
                            f"{type(value).__name__}")
        options[key] = value
    return options


def _load(model_dir: Path, allow_pickle: bool) -> tuple[Any, Any]:
    """(model, tokenizer) of an HF or MASS folder, refused on one line when its files are corrupt
    or a weight is NaN/Inf (scores of such a model would be silently meaningless)."""
    from safetensors import SafetensorError

    from evo_merge.errors import UserError, first_line
    from evo_merge.mass.model import MASS_JSON, load_mass
    from evo_merge.weights.dtypes import all_finite
    from evo_merge.weights.folder import load_model_folder

    mass = (model_dir / MASS_JSON).is_file()
    if model_dir.is_dir() and not mass and not (model_dir / "config.json").is_file():  # a run folder, say
        raise UserError(f"--model {model_dir}: not a model folder (no config.json)")
    if not (mass or allow_pickle) and model_dir.is_dir() and not any(model_dir.glob("*.safetensors")):
        raise UserError(f"--model {model_dir}: no .safetensors weights (pickle weights need --allow-pickle)")
    try:
        if mass:
            model, tokenizer = load_mass(model_dir)
        else:
            model, tokenizer = load_model_folder(model_dir, allow_pickle=allow_pickle)
    except UserError as exc:  # "PATH: no such folder" and the like: said as the option's, as the others here
        raise UserError(f"--model {exc}" if str(exc).startswith(str(model_dir)) else str(exc)) from None
    except (OSError, ValueError, SafetensorError) as exc:
        raise UserError(f"--model {model_dir}: cannot be loaded ({first_line(exc)})") from None
    for name, tensor in model.named_parameters():
        if tensor.is_floating_point() and not all_finite(tensor):
            raise UserError(f"--model {model_dir}: tensor {name} holds NaN or Inf")
    return model, tokenizer
