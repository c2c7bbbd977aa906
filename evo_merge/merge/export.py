"""Run a merge plan to an HF model folder with its model card and rebuilding recipe."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch

from evo_merge.merge.plan import MergePlan, stream_merge
from evo_merge.report.card import model_card
from evo_merge.weights import Checkpoint, write_model_folder

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
    with Checkpoint.open(plan.tokenizer_source, allow_pickle=allow_pickle) as source:
        folder = source.folder  # None for a bare state dict: no config or tokenizer to copy
    return write_model_folder(
        out,
        tensors,
        copy_from=folder,
        dtype=plan.out_dtype,
        extra_files={
            "README.md": model_card(recipe, title=title or Path(out).name, scores=scores),
            RECIPE_FILE: recipe.to_yaml(),
        },
        overwrite=overwrite,
    )
