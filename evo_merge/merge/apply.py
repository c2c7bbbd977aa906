"""One merge method on one tensor: the core the file merge (`merge.stream`) and the in-place
merger share, with what either path needs said the same way (a corrupt input, a plugin's slip)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evo_merge.errors import UserError, first_line
from evo_merge.merge.registry import MergeMethod
from evo_merge.merge.task_vectors import Delta, formed
from evo_merge.weights.dtypes import all_finite
from evo_merge.weights.export import NonFiniteTensor


def merge_tensor(
    method: MergeMethod,
    base: torch.Tensor,
    deltas: Sequence[Delta],
    weights: Sequence[float],
    params: dict[str, Any],
    name: str,
) -> torch.Tensor:
    """`method` on one tensor: task vectors formed where they are read (`TaskVector`) go as they are
    to a method that streams them (`MergeMethod.streams`), formed first for any other."""
    if not method.streams:
        deltas = formed(deltas)
    try:
        merged = method.fn(base, deltas, weights, params, name)
    except (UserError, torch.OutOfMemoryError):  # out of memory: the caller decides (another device, or failing)
        raise
    except RuntimeError as exc:  # e.g. SVD failing to converge on a degenerate matrix
        if not all(map(all_finite, (base, *formed(deltas)))):  # a corrupt input, not a bug
            raise NonFiniteTensor(name, f"tensor {name}: an input holds NaN or Inf, which {method.name} cannot "
                                        f"merge ({first_line(exc)})") from None
        raise RuntimeError(f"{method.name} failed on tensor {name}: {exc}") from exc
    if not isinstance(merged, torch.Tensor) or merged.shape != base.shape:  # a plugin's slip, named here
        got = f"shape {list(merged.shape)}" if isinstance(merged, torch.Tensor) else type(merged).__name__
        raise RuntimeError(f"{method.name} returned {got} for tensor {name}, not a tensor of shape {list(base.shape)}")
    return merged
