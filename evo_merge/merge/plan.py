"""From a recipe to merged tensors, streamed one tensor at a time.

Memory stays near one tensor per endpoint: each tensor is read from every checkpoint, merged,
handed to the writer and dropped before the next one is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evo_merge.config import Recipe
from evo_merge.errors import UserError
from evo_merge.merge.registry import MergeMethod, get_method
from evo_merge.weights import Checkpoint, check_compatible, open_checkpoints, parse_dtype
from evo_merge.weights.dtypes import dtype_name

WEIGHT = "weight"


@dataclass
class MergePlan:
    """A validated recipe: paths resolved, parameters complete, ready to run or to write back."""

    method: MergeMethod
    base: Path  # the reference the task vectors are taken against
    models: list[Path]  # endpoints; for linear without a base, the reference is the first of them
    weights: list[float]
    params: dict[str, Any]
    dtype: torch.dtype  # computation
    out_dtype: torch.dtype | None  # None: keep each tensor's dtype in the base
    tokenizer_source: Path
    base_given: bool = True

    def recipe(self) -> Recipe:
        """The fully explicit recipe (absolute paths, every default) that rebuilds this merge."""
        per_model = sorted(h.name for h in self.method.hyperparameters if h.per_model)
        models = [
            {"model": str(path), "parameters": {WEIGHT: w, **{k: self.params[k][i] for k in per_model}}}
            for i, (path, w) in enumerate(zip(self.models, self.weights))
        ]
        return Recipe.model_validate({
            "merge_method": self.method.name,
            "base_model": str(self.base) if self.base_given else None,
            "models": models,
            "parameters": {k: v for k, v in self.params.items() if k not in per_model},
            "dtype": dtype_name(self.dtype),
            "out_dtype": dtype_name(self.out_dtype) if self.out_dtype else None,
            "tokenizer_source": str(self.tokenizer_source),
        })


def _resolve_path(value: str, root: Path, key: str) -> Path:
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [root / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise UserError(f"{key}: model path {value!r} does not exist (looked in {', '.join(map(str, candidates))})")


def plan_from_recipe(
    recipe: Recipe, root: Path = Path("."), dtype: str | None = None, source: str | Path | None = None
) -> MergePlan:
    """Resolve a recipe. Relative paths are taken against `root` (the recipe's folder), then the CWD.

    `source` (the recipe file) prefixes error messages."""
    try:
        return _plan(recipe, root, dtype)
    except UserError as exc:
        raise UserError(f"{source}: {exc}" if source else str(exc)) from None


def _plan(recipe: Recipe, root: Path, dtype: str | None) -> MergePlan:
    method = get_method(recipe.merge_method)
    entries = [(_resolve_path(e.model, root, f"models.{i}.model"), e, i) for i, e in enumerate(recipe.models)]
    base_given = recipe.base_model is not None
    if base_given:
        base = _resolve_path(recipe.base_model, root, "base_model")
        entries = [e for e in entries if e[0] != base]  # mergekit: a listed base is not an endpoint
    elif method.name == "linear":  # a soup needs no base: deltas are taken against the first model
        base = entries[0][0]
    else:
        raise UserError(f"base_model: required by method {method.name}")

    per_model = {h.name for h in method.hyperparameters if h.per_model}
    top = dict(recipe.parameters)
    weights, per_model_values = [], {k: [] for k in per_model}
    for _, entry, i in entries:
        params = dict(entry.parameters)
        weight = params.pop(WEIGHT, top.get(WEIGHT, 1.0))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise UserError(f"models.{i}.parameters.weight: expected a number, got {weight!r}")
        weights.append(float(weight))
        for key, value in params.items():
            if key not in per_model:
                raise UserError(f"models.{i}.parameters.{key}: not a per-model parameter of method {method.name}"
                                f" (per-model: {', '.join(sorted(per_model | {WEIGHT}))})")
        for key in per_model:
            per_model_values[key].append(params.get(key, top.get(key, method.hyperparameter(key).default)))
    top.pop(WEIGHT, None)
    for key in per_model:
        top[key] = per_model_values[key]
    resolved = method.resolve(top, len(entries))

    # as in mergekit, `dtype` is the computation dtype and, unless out_dtype says otherwise, the output's
    compute = parse_dtype(dtype or recipe.dtype)
    out = parse_dtype(recipe.out_dtype) or compute
    compute = compute or torch.float32
    if recipe.tokenizer_source in (None, "base"):
        tokenizer = base
    else:
        tokenizer = _resolve_path(recipe.tokenizer_source, root, "tokenizer_source")
    return MergePlan(method, base, [p for p, _, _ in entries], weights, resolved, compute, out, tokenizer,
                     base_given=base_given)


def merge_tensor(
    method: MergeMethod,
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    params: dict[str, Any],
    name: str,
) -> torch.Tensor:
    try:
        return method.fn(base, deltas, weights, params, name)
    except UserError:
        raise
    except RuntimeError as exc:  # e.g. SVD failing to converge on a degenerate matrix
        raise RuntimeError(f"{method.name} failed on tensor {name}: {exc}") from exc


def stream_merge(plan: MergePlan, *, allow_pickle: bool = False) -> tuple[int, Iterator[tuple[str, torch.Tensor]]]:
    """Open and check the checkpoints, then yield merged tensors lazily (count, iterator)."""
    checkpoints = open_checkpoints([plan.base, *plan.models], allow_pickle=allow_pickle)
    check_compatible(checkpoints)
    base, others = checkpoints[0], checkpoints[1:]

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        try:
            for name in base.names:
                out_dtype = plan.out_dtype or base.dtype(name)
                if not base.dtype(name).is_floating_point:
                    yield name, base.tensor(name)
                    continue
                theta0 = base.tensor(name, plan.dtype)
                deltas = [ck.tensor(name, plan.dtype) - theta0 for ck in others]
                merged = merge_tensor(plan.method, theta0, deltas, plan.weights, plan.params, name)
                yield name, merged.to(out_dtype)
        finally:
            for ck in checkpoints:
                ck.close()

    return len(base.names), tensors()

