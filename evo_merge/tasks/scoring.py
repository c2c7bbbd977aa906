"""Score a saved model folder on a task: the long-format table `subject,item,score[,scenario]`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from evo_merge.errors import UserError
from evo_merge.tasks.base import FitnessTask, item_positions, scores_in_parts


def read_item_ids(path: str | Path) -> list[str]:
    """Item ids, one per line (a header line `item` and blank lines are skipped), each once."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"items file {path} is a folder; give the file of item ids (one per line)")
    if not path.exists():
        raise UserError(f"items file {path} not found")
    if not path.is_file():  # a device or a pipe (/dev/null): there, but no list to read
        raise UserError(f"items file {path} is not a regular file; give the file of item ids (one per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"items file {path}: not a UTF-8 text file") from None
    ids = [line.strip() for line in lines if line.strip()]
    ids = ids[1:] if ids and ids[0] == "item" else ids
    if twice := next((i for i, n in Counter(ids).items() if n > 1), None):
        raise UserError(f"items file {path}: item {twice!r} is listed twice")
    return ids


def score_table(
    task: FitnessTask, model: Any, tokenizer: Any, subject: str, item_ids: Sequence[str] | None = None,
    scored: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Long format, one row per item: subject, item, score, and scenario when the task has them;
    `scored(done, total)` is told as scoring starts, then as the items are scored (`scores_in_parts`):
    a stage's clock starts at its first report, and told only after each call of up to 512 items a
    7B model's scoring showed nothing for minutes and then "80/80 in 0:00:00"."""
    item_positions(task.name, {i: k for k, i in enumerate(task.item_ids)}, item_ids)  # before any scoring
    if scored is not None:
        scored(0, len(task.item_ids) if item_ids is None else len(item_ids))
    scores = scores_in_parts(task, model, tokenizer, item_ids, scored)
    table = pd.DataFrame({"subject": subject, "item": scores.index, "score": scores.to_numpy()})
    scenarios = task.scenarios
    if scenarios is not None:
        table["scenario"] = table["item"].map(scenarios)
    return table
