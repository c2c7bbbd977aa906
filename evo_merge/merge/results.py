"""lm-eval-style results beside exported weights: `results.json` and `item_scores.parquet`.

A score on a card is only checkable with how it was produced: lm-eval users expect its results
file (metric with `,filter` suffix, stderr, n-samples, task config and version, limit, n-shot) and
the per-item scores behind it. Both are written from the per-item scores the campaign stored,
so the mean in `results.json` is exactly the measured score on the card.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from evo_merge.errors import naming_file
from evo_merge.files import atomic_write
from evo_merge.tasks.base import score_series
from evo_merge.tasks.meta import TaskMeta

RESULTS_FILE = "results.json"
ITEM_SCORES_FILE = "item_scores.parquet"
ItemScores = Mapping[str, Mapping[str, float]]  # task -> item id -> score


def mean_and_stderr(scores: Mapping[str, float]) -> tuple[float, float | None]:
    """Mean and its standard error as lm-eval reports it (sample std, ddof 1, over sqrt n)."""
    values = [float(v) for v in scores.values()]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _version(version: str | None) -> float | str | None:
    """A task version as lm-eval writes it: a number where it is one (1.0), else as given."""
    try:
        return float(version) if version is not None else None
    except ValueError:
        return version


def results_json(item_scores: ItemScores, tasks: Mapping[str, TaskMeta]) -> dict:
    """The results document, keyed like lm-eval's `results_*.json`."""
    out: dict = {key: {} for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples")}
    for name, scores in item_scores.items():
        meta = tasks.get(name) or TaskMeta(name=name, dataset=name, n_items=len(scores))
        mean, stderr = mean_and_stderr(scores)
        key = f"{meta.metric},{meta.filter}"
        out["results"][name] = {
            "alias": name,
            key: mean,
            f"{meta.metric}_stderr,{meta.filter}": stderr if stderr is not None else "N/A",
        }
        out["configs"][name] = {
            **meta.config,
            "task": name,
            "dataset": meta.dataset,
            "dataset_name": meta.dataset_config,
            "split": meta.split,
            "metric": meta.metric,
            "filter": meta.filter,
        }
        out["versions"][name] = _version(meta.version)
        out["n-shot"][name] = meta.num_fewshot
        out["higher_is_better"][name] = {meta.metric: meta.higher_is_better}
        # lm-eval's: the data's items, and those scored (a limit's first ones, or the held-out ones)
        out["n-samples"][name] = {"original": meta.dataset_items or meta.n_items or len(scores),
                                  "effective": len(scores)}
    limits = {n: (tasks[n].limit if n in tasks else None) for n in item_scores}
    out["config"] = {
        "model": "evo-merge",
        # lm-eval's: one number or null; tasks limited differently keep a number each
        "limit": next(iter(limits.values())) if len(set(limits.values())) == 1 else limits,
        "bootstrap_iters": 0,
    }
    out.update(
        date=time.time(),
        evo_merge_version=_package_version("evo-merge"),
        lm_eval_version=_package_version("lm_eval"),
        transformers_version=_package_version("transformers"),
    )
    return out


def item_scores_table(item_scores: ItemScores) -> pd.DataFrame:
    """Long format, one row per (task, item): the scores every aggregate above is computed from."""
    rows = [(task, str(item), float(score)) for task, scores in item_scores.items() for item, score in scores.items()]
    return pd.DataFrame(rows, columns=["task", "item", "score"])


def check_item_scores(item_scores: ItemScores, where: str = RESULTS_FILE) -> None:
    """Every score a number in [0, 1], as a task's per-item scores are held to (`score_series`; lm-eval
    metrics not averaged over items, perplexity's among them, are refused as fitnesses): a NaN was
    written into results.json, which JSON cannot hold, and a 5.0 made a mean no task can score."""
    with naming_file(where):
        for task, scores in item_scores.items():
            score_series(task, list(scores), list(scores.values()))


def results_files(item_scores: ItemScores, tasks: Mapping[str, TaskMeta],
                  where: str = RESULTS_FILE) -> dict[str, bytes]:
    """{file name: content} of both results files, for an atomic folder write (`where`: what a
    score refused is said to be for)."""
    check_item_scores(item_scores, where)
    buffer = io.BytesIO()
    item_scores_table(item_scores).to_parquet(buffer, index=False)
    text = json.dumps(results_json(item_scores, tasks), indent=2, default=str) + "\n"
    return {RESULTS_FILE: text.encode(), ITEM_SCORES_FILE: buffer.getvalue()}


def write_results(
    folder: str | Path, per_task_item_scores: ItemScores, task_meta: Mapping[str, TaskMeta]
) -> list[Path]:
    """Write `results.json` and `item_scores.parquet` into an exported model folder, each atomically
    (a reader sees the old file or the new one, never half), after checking every score."""
    folder = Path(folder)
    written = []
    for name, content in results_files(per_task_item_scores, task_meta, str(folder / RESULTS_FILE)).items():
        atomic_write(folder / name, content)
        written.append(folder / name)
    return written
