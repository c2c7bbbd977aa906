"""`evo-merge mass build|eval`: MASS models (per-input routing over task singular vectors)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("mass")
def mass() -> None:
    """Build and evaluate MASS models: per input, the TSV-M merge of the tasks it routes to."""


@mass.command("build")
@click.option("--base", required=True, type=click.Path(path_type=Path), help="Base model folder.")
@click.option("--models", "first", required=True, help="Fine-tuned model folders: --models A B [C ...].")
@click.argument("more", nargs=-1)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output MASS folder.")
@click.option("--layer", type=int, default=None, help="Block routed on (default: the middle block).")
@click.option("--threshold", type=float, default=0.2, show_default=True, help="Keep tasks above this probability.")
@click.option("--max-tasks", type=int, default=3, show_default=True, help="Keep at most this many tasks.")
@click.option("--token", type=click.Choice(["mean", "last"]), default="mean", show_default=True,
              help="Route on the mean over the input's tokens or on its last token.")
@click.option("--link-base", is_flag=True, help="Store the base's path instead of a copy of it.")
def build(base, first, more, out, layer, threshold, max_tasks, token, link_base) -> None:
    """Decompose each model's task vector (TSV-C factors) and write a MASS folder to OUT."""
    from transformers.utils import logging as hf_logging

    from evo_merge.cli.progress import track
    from evo_merge.mass import MassModel

    hf_logging.disable_progress_bar()
    model = MassModel.from_checkpoints(
        base, [first, *more], layer=layer, threshold=threshold, max_tasks=max_tasks, token=token,
        track=lambda items, total: track(items, total, "decomposing task vectors"),
    )
    model.save(out, copy_base=not link_base)
    click.echo(f"wrote {out}: MASS over {', '.join(model.tasks)}, routing at block {model.routing.layer}")


@mass.command("eval")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="MASS folder.")
@click.option("--task", "task_spec", required=True, help="Task: lm-eval name, YAML/folder, shipped benchmark, plugin.")
@click.option("--items", "items_file", type=click.Path(path_type=Path), help="File of item ids, one per line.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--metric", default=None, help="lm-eval metric[,filter], e.g. exact_match,strip.")
@click.option("--subject", default=None, help="Subject name in the table (default: the folder name).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output CSV.")
def eval_(model_dir, task_spec, items_file, batch_size, metric, subject, out) -> None:
    """Write per-item scores `subject,item,score[,scenario]` of a MASS model to OUT."""
    from transformers.utils import logging as hf_logging

    from evo_merge.mass import load_mass
    from evo_merge.tasks.registry import resolve_task
    from evo_merge.tasks.scoring import read_item_ids, score_table

    hf_logging.disable_progress_bar()
    items = read_item_ids(items_file) if items_file else None
    model, tokenizer = load_mass(model_dir)
    settings = {"batch_size": batch_size, "metric": metric}
    task = resolve_task(task_spec, **{k: v for k, v in settings.items() if v is not None})
    table = score_table(task, model, tokenizer, subject or model_dir.resolve().name, items)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    click.echo(f"{task.name}: {len(table)} items, mean score {table['score'].mean():.4f} -> {out}")
