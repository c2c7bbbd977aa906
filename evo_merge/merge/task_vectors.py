"""Task vectors formed where they are read, a chunk at a time, for the methods that stream them.

TIES, DARE, breadcrumbs and DELLA need each whole task vector once (a magnitude cut, an L1 norm, a
rank) and then only a chunk of it at a time (`methods.generalized_task_arithmetic`). Handed as
float32 tensors, the T task vectors of the tensor being merged were T float32 copies of it alive at
once: formed from bfloat16 endpoints or stored task vectors, each is twice their size. A
`TaskVector` keeps what it is formed from (a stored task vector, or an endpoint and the base) and
forms the whole vector only for the moment a trim needs it, one endpoint at a time, and a chunk
where the chunks are summed: the same operations on every entry, so the same bits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TaskVector:
    """`source` − `base` in `base`'s dtype (an endpoint's tensor and the base it is taken from), or
    `source` widened to `dtype` (a stored task vector) where `base` is None."""

    source: torch.Tensor
    base: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32

    @property
    def shape(self) -> torch.Size:
        return self.source.shape

    @property
    def device(self) -> torch.device:
        return self.source.device

    @property
    def wide(self) -> torch.dtype:
        """The dtype it is formed in."""
        return self.dtype if self.base is None else self.base.dtype

    def whole(self) -> torch.Tensor:
        """The task vector as one tensor: a new one, or `source` itself where it is already wide
        (callers never write into it)."""
        wide = self.source.to(self.wide)
        if self.base is None:
            return wide
        return wide - self.base if wide is self.source else wide.sub_(self.base)

    @functools.cached_property
    def _flat(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`source` and `base` flat, made once: a non-contiguous one (a .bin checkpoint's transposed
        views) is copied by each `reshape`, and a copy per chunk made its merge 15x slower."""
        return self.source.reshape(-1), None if self.base is None else self.base.reshape(-1)

    def write(self, part: slice, row: torch.Tensor) -> None:
        """Entries `part` of the flat task vector into `row`."""
        source, base = self._flat
        row.copy_(source[part])
        if base is not None:
            row.sub_(base[part])


Delta = torch.Tensor | TaskVector


def vector(delta: Delta) -> TaskVector:
    """A task vector as a `TaskVector`: a tensor stands for itself (formed in its own dtype)."""
    return delta if isinstance(delta, TaskVector) else TaskVector(delta, dtype=delta.dtype)


def whole(delta: Delta) -> torch.Tensor:
    """A task vector as a tensor, formed if it is a `TaskVector`."""
    return delta.whole() if isinstance(delta, TaskVector) else delta


def zeros(delta: Delta) -> torch.Tensor:
    """A task vector's zeros, in the dtype it is formed in, without forming it."""
    if isinstance(delta, TaskVector):
        return torch.zeros(delta.shape, dtype=delta.wide, device=delta.device)
    return torch.zeros_like(delta)


ZERO_CHECK_CHUNK = 2**18  # entries formed at a time to find a change: no whole float32 copy of an embedding


def is_zero(delta: Delta) -> bool:
    """Whether a task vector is zero everywhere (its endpoint left the tensor as the base has it:
    `MergeMethod.keeps_unchanged`), formed a chunk at a time and stopping at the first change. An
    inf in both endpoint and base is a NaN in their difference: changed."""
    if not isinstance(delta, TaskVector):
        return not bool(delta.any())
    n = delta.shape.numel()
    row = torch.empty(min(n, ZERO_CHECK_CHUNK), dtype=delta.wide, device=delta.device)
    for start in range(0, n, ZERO_CHECK_CHUNK):
        part = slice(start, min(n, start + ZERO_CHECK_CHUNK))
        chunk = row[: part.stop - part.start]
        delta.write(part, chunk)
        if bool(chunk.any()):
            return False
    return True


def formed(deltas: Sequence[Delta]) -> list[torch.Tensor]:
    """Every task vector as a tensor: for the methods that take tensors (`MergeMethod.streams` False)."""
    return [whole(d) for d in deltas]
