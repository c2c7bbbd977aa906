"""`evo-merge eval`: score one saved model on one task, per item."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("eval")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model folder (HF, or a plain network with an `arch` config), or a MASS folder.")
@click.option("--task", "task_spec", required=True, help="Task: lm-eval name, YAML/folder, shipped benchmark, plugin.")
@click.option("--items", "items_file", type=click.Path(path_type=Path), help="File of item ids, one per line.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="torch device (default: where the model loads).")
@click.option("--metric", default=None, help="lm-eval metric[,filter], e.g. exact_match,strip.")
@click.option("--subject", default=None, help="Subject name in the table (default: the folder name).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output CSV.")
def eval_(model_dir, task_spec, items_file, batch_size, device, metric, subject, out) -> None:
    """Write long-format per-item scores `subject,item,score[,scenario]` to OUT."""
    from transformers.utils import logging as hf_logging

    from evo_merge.mass.model import MASS_JSON, load_mass
    from evo_merge.tasks.registry import resolve_task
    from evo_merge.tasks.scoring import read_item_ids, score_table
    from evo_merge.weights.folder import load_model_folder

    hf_logging.disable_progress_bar()  # keep errors on one line
    items = read_item_ids(items_file) if items_file else None
    if (model_dir / MASS_JSON).is_file():
        model, tokenizer = load_mass(model_dir)
    else:
        model, tokenizer = load_model_folder(model_dir)
    settings = {"batch_size": batch_size, "device": device, "metric": metric}
    task = resolve_task(task_spec, **{k: v for k, v in settings.items() if v is not None})
    table = score_table(task, model, tokenizer, subject or model_dir.resolve().name, items)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    click.echo(f"{task.name}: {len(table)} items, mean score {table['score'].mean():.4f} -> {out}")
