"""One merge method on one tensor: the core the file merge (`merge.stream`) and the in-place
merger share, with what either path needs said the same way (a corrupt input, a plugin's slip)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evo_merge.errors import UserError, described, first_line
from evo_merge.merge.registry import MergeMethod
from evo_merge.merge.task_vectors import Delta, TaskVector, formed
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
    versions = _versions(base, deltas)  # torch counts each in-place change of a tensor
    try:
        merged = method.fn(base, deltas, weights, params, name)
    except (UserError, torch.OutOfMemoryError):  # out of memory: the caller decides (another device, or failing)
        raise
    except RuntimeError as exc:  # e.g. SVD failing to converge on a degenerate matrix
        if not all(map(all_finite, (base, *formed(deltas)))):  # a corrupt input, not a bug
            raise NonFiniteTensor(name, f"tensor {name}: an input holds NaN or Inf, which {method.name} cannot "
                                        f"merge ({first_line(exc)})") from None
        raise MethodFailed(f"{method.name} failed on tensor {name}: {exc}") from exc
    except Exception as exc:  # a plugin method may raise anything
        raise MethodFailed(f"{method.name} failed on tensor {name}: {described(exc)}") from exc
    if _versions(base, deltas) != versions:  # the in-place merger's stored base and task vectors
        raise MethodFailed(f"{method.name} changed its inputs in place on tensor {name} (the base or a task vector, "
                           "which every later candidate is merged from): a method returns a new tensor")
    if not isinstance(merged, torch.Tensor) or merged.shape != base.shape:  # a plugin's slip, named here
        got = f"shape {list(merged.shape)}" if isinstance(merged, torch.Tensor) else type(merged).__name__
        raise MethodFailed(f"{method.name} returned {got} for tensor {name}, not a tensor of shape {list(base.shape)}")
    if not merged.is_floating_point():  # rounded to whole numbers when written: zeros for most weights
        raise MethodFailed(f"{method.name} returned {merged.dtype} values for tensor {name}, not floating point")
    return merged


def _versions(base: torch.Tensor, deltas: Sequence[Delta]) -> list[int]:
    """The version counters of what a method is handed: the base, the task vectors, and what a
    streamed one is formed from (`whole(delta)` may be its stored tensor itself). Tensors made under
    `torch.inference_mode()` keep none, and are left out."""
    tensors = [base, *(t for d in deltas for t in ((d.source, d.base) if isinstance(d, TaskVector) else (d,)))]
    return [t._version for t in tensors if isinstance(t, torch.Tensor) and not t.is_inference()]


class MethodFailed(RuntimeError):
    """A merge method that raised, or broke its contract (a tensor of the base's shape, floating, its
    inputs left as they were): one candidate failed in a campaign; `merge` and an export say it in one
    line (`merge.export`)."""
