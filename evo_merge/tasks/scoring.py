"""Score a saved model folder on a task: the long-format table `subject,item,score[,scenario]`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from evo_merge.errors import UserError
from evo_merge.tasks.base import FitnessTask
from evo_merge.weights.folder import load_model_folder


def load_causal_lm(model_dir: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF folder; a folder without a tokenizer is a user error.

    Only `search/evaluator.py` still calls this; everything else opens folders with
    `evo_merge.weights.load_model_folder`, which this wraps (remove it once the evaluator does too)."""
    model, tokenizer = load_model_folder(model_dir)
    if tokenizer is None:
        raise UserError(f"model folder {model_dir} has no tokenizer")
    return model, tokenizer


def read_item_ids(path: str | Path) -> list[str]:
    """Item ids, one per line (a header line `item` and blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"items file {path} not found")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return ids[1:] if ids and ids[0] == "item" else ids


def score_table(
    task: FitnessTask, model: Any, tokenizer: Any, subject: str, item_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """Long format, one row per item: subject, item, score, and scenario when the task has them."""
    scores = task.evaluate(model, tokenizer, item_ids)
    table = pd.DataFrame({"subject": subject, "item": scores.index, "score": scores.to_numpy()})
    scenarios = task.scenarios
    if scenarios is not None:
        table["scenario"] = table["item"].map(scenarios)
    return table
