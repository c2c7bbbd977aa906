"""Run a merge plan to an HF model folder with its model card and rebuilding recipe."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch

from evo_merge.merge.plan import MergePlan, stream_merge
from evo_merge.report.card import model_card
from evo_merge.weights import write_model_folder

RECIPE_FILE = "merge_recipe.yaml"
Tracker = Callable[[Iterable, int], Iterable]


def export_merge(
    plan: MergePlan,
    out: str | Path,
    *,
    tensors: Iterator[tuple[str, torch.Tensor]] | None = None,
    allow_pickle: bool = False,
    overwrite: bool = False,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    title: str | None = None,
    track: Tracker | None = None,
) -> Path:
    """Write the merged folder atomically. `tensors` (e.g. from the in-place merger) replaces the
    streaming merge when given; they must be the plan's tensors."""
    if tensors is None:
        total, tensors = stream_merge(plan, allow_pickle=allow_pickle)
        if track is not None:
            tensors = track(tensors, total)
    recipe = plan.recipe()
    folder = plan.tokenizer_source if plan.tokenizer_source.is_dir() else None  # a bare state dict has none
    config = dict(plan.config)
    extra: dict[str, str | bytes] = {}
    if plan.tokens is not None:
        config["vocab_size"] = plan.tokens.rows
        extra.update(plan.tokens.files)
    extra["README.md"] = model_card(recipe, title=title or Path(out).name, scores=scores)
    extra[RECIPE_FILE] = recipe.to_yaml()
    return write_model_folder(
        out,
        tensors,
        copy_from=folder,
        config=config or None,
        dtype=plan.out_dtype,
        extra_files=extra,
        copy_tokenizer=plan.tokens is None,
        overwrite=overwrite,
    )
