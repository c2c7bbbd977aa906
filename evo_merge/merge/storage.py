"""Where and in which dtype the in-place merger keeps the base, the task vectors and the pieces.

A search holds the base and T task vectors for its whole run. Kept in float32 on the evaluation
device they cost 4 (T + 1) bytes per parameter there, which no single GPU has for a 7B model.
The storage dtype (default: the checkpoints' own, e.g. bfloat16) halves that without changing
how a candidate is computed: every stored tensor is read back and combined in float32, one
tensor at a time. Placement `host` keeps the stored tensors in (pinned) host memory and streams
each one to the device when a candidate is built, so the evaluation module is the only full
model on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from evo_merge.weights import Checkpoint, parse_dtype

Placement = Literal["device", "host"]
AUTO = "auto"


@dataclass(frozen=True)
class Storage:
    """Storage dtype (None: each tensor's own floating dtype in the checkpoints) and placement."""

    dtype: torch.dtype | None = None
    placement: Placement = "device"

    @classmethod
    def parse(cls, dtype: str = AUTO, placement: Placement = "device") -> Storage:
        return cls(None if dtype == AUTO else parse_dtype(dtype), placement)

    @classmethod
    def of(cls, spec) -> Storage:
        """From a campaign's `storage` settings (config.StorageSpec)."""
        return cls.parse(spec.dtype, spec.placement)

    def stored_dtype(self, checkpoints: Sequence[Checkpoint], names: Sequence[str]) -> torch.dtype:
        """The dtype a tensor is kept in, read as `names[i]` from checkpoint i: the chosen one, or
        the widest of the checkpoints'."""
        if self.dtype is not None:
            return self.dtype
        return functools.reduce(torch.promote_types, (c.dtype(n) for c, n in zip(checkpoints, names)))


class Stash:
    """Puts tensors into storage and brings them back to the device for a candidate."""

    def __init__(self, storage: Storage, device: torch.device, compute: torch.dtype = torch.float32):
        self.storage, self.device, self.compute = storage, device, compute
        self._pin = storage.placement == "host" and device.type == "cuda"

    def keep(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`tensor` in the storage dtype and place; the same tensor when it already is."""
        tensor = tensor.to(dtype)
        if self.storage.placement == "device":
            return tensor.to(self.device)
        tensor = tensor.to("cpu")
        return tensor.pin_memory() if self._pin else tensor  # pinned: copies to the GPU run asynchronously

    def move(self, tensor: torch.Tensor) -> torch.Tensor:
        """A stored tensor on the device, still in its storage dtype (read once by the consumer)."""
        return tensor.to(self.device, non_blocking=True)

    def upcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """A stored tensor on the device in the compute dtype (no copy when it already is)."""
        return tensor.to(self.device, non_blocking=True).to(self.compute)
