"""What a results file and a model card say about a task: dataset, split, metric, version.

Hub users and leaderboards identify a score by dataset (name/config/split) and metric, and lm-eval
users by task version, few-shot count and limit. These facts live in the lm-eval task config for
lm-eval tasks; a plugin task may declare them as attributes, else only its name is known.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from evo_merge.user_paths import expand_home

# loaders that read local files: the dataset is then named after the task, never by a file path
_FILE_LOADERS = {"json", "csv", "parquet", "text", "arrow"}
_ABSOLUTE = re.compile(r"^(~|/|[A-Za-z]:[\\/])")


@dataclass(frozen=True)
class TaskMeta:
    """Where one objective's scores come from, as the Hub's model-index and lm-eval's results name it."""

    name: str
    dataset: str
    dataset_config: str | None = None
    split: str | None = None
    metric: str = "score"
    filter: str = "none"
    version: str | None = None
    num_fewshot: int | None = None
    limit: int | None = None
    n_items: int | None = None  # the task's items (the first `limit` of its data where one is set)
    dataset_items: int | None = None  # its data's items, before a limit
    held_out: int | None = None  # the scores are on this many held-out items of them, not on every one
    higher_is_better: bool = True
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def portable(value: Any) -> Any:
    """`value` with absolute file paths cut to their last component, recursively: a results file
    or card travels to other machines and must not reveal (or depend on) this one's folders. A path
    is a string naming a file or folder that exists here: a stop sequence `//`, a regex `/(\\d+)/`
    or a `/no_think` prompt prefix start with a slash too, and were cut."""
    if isinstance(value, dict):
        return {str(k): portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and _is_local_path(value):
        return re.split(r"[\\/]", value.rstrip("/\\"))[-1]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _is_local_path(value: str) -> bool:
    if not _ABSOLUTE.match(value) or "\n" in value:
        return False
    try:
        path = expand_home(value)
        return path.name != "" and path.exists()
    except (OSError, ValueError):  # a name too long, a NUL
        return False


def task_meta(label: str, task: Any, *, direction: str = "maximize") -> TaskMeta:
    """The metadata of a resolved task under its campaign label (lm-eval adapter or plugin)."""
    n_items = len(task.item_ids)
    higher = direction == "maximize"
    raw = getattr(task, "lm_eval_config", None)
    if raw is None:  # a plugin: what it declares, else its name
        return TaskMeta(name=label, dataset=str(getattr(task, "dataset", label)),
                        metric=str(getattr(task, "metric", "score")), n_items=n_items, higher_is_better=higher)
    path = raw.get("dataset_path") or label
    version = (raw.get("metadata") or {}).get("version")
    return TaskMeta(
        name=label,
        dataset=raw.get("task", label) if path in _FILE_LOADERS else path,
        dataset_config=raw.get("dataset_name"),
        split=raw.get("test_split") or raw.get("validation_split"),
        metric=str(getattr(task, "metric", "acc")),
        filter=str(getattr(task, "filter", "none")),
        version=None if version is None else str(version),
        num_fewshot=raw.get("num_fewshot") or 0,
        limit=getattr(task, "limit", None),
        n_items=n_items,
        dataset_items=getattr(task, "dataset_items", None),
        higher_is_better=higher,
        config=portable(raw),
    )
