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
SLAB_MIN, SLAB_MAX = 2**26, 2**30  # bytes of the first and the largest pinned slab
ALIGN = 512  # bytes: where each kept tensor starts in a slab (any dtype's view, aligned copies)


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


class Slabs:
    """Host memory for kept tensors, handed out from a few large buffers.

    Torch's pinned-memory allocator rounds every allocation up to a power of two. Pinned one by
    one, a 7B model's MLP matrices (90 MB in bfloat16) take 128 MB each: an H200 run kept 50 GiB
    of task vectors in 68 GiB of host RAM. The slabs are powers of two themselves (64 MiB, doubling
    up to 1 GiB), so the store wastes only the tail of each slab it leaves for the next one."""

    def __init__(self, pin: bool):
        self.pin = pin
        self.slabs: list[torch.Tensor] = []
        self._used = 0

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` copied into a slab: a view of the slab's bytes in its dtype and shape."""
        size = tensor.numel() * tensor.element_size()
        start = -(-self._used // ALIGN) * ALIGN
        if not self.slabs or start + size > self.slabs[-1].numel():
            if size > SLAB_MAX:  # a buffer of its own (a 70B model's embedding), rounded like any allocation
                return tensor.pin_memory() if self.pin else tensor.clone()
            grown = 2 * self.slabs[-1].numel() if self.slabs else SLAB_MIN
            length = min(SLAB_MAX, max(grown, 1 << max(size - 1, 0).bit_length()))
            self.slabs.append(torch.empty(length, dtype=torch.uint8, pin_memory=self.pin))
            start = 0
        self._used = start + size
        return self.slabs[-1][start:start + size].view(tensor.dtype).view(tensor.shape).copy_(tensor)


class Stash:
    """Puts tensors into storage and brings them back to the device for a candidate."""

    def __init__(self, storage: Storage, device: torch.device, compute: torch.dtype = torch.float32):
        self.storage, self.device, self.compute = storage, device, compute
        # pinned host memory for `host` on a GPU, so the copies to it run asynchronously
        self._slabs = Slabs(pin=True) if storage.placement == "host" and device.type == "cuda" else None

    def keep(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`tensor` in the storage dtype and place; the same tensor when it already is."""
        tensor = tensor.to(dtype)
        if self.storage.placement == "device":
            return tensor.to(self.device)
        tensor = tensor.to("cpu")
        return self._slabs.copy(tensor) if self._slabs is not None else tensor

    def move(self, tensor: torch.Tensor) -> torch.Tensor:
        """A stored tensor on the device, still in its storage dtype (read once by the consumer)."""
        return tensor.to(self.device, non_blocking=True)

    def upcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """A stored tensor on the device in the compute dtype (no copy when it already is)."""
        return tensor.to(self.device, non_blocking=True).to(self.compute)
