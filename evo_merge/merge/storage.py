"""Where and in which dtype the in-place merger keeps the base, the task vectors and the pieces.

A search holds the base and T task vectors for its whole run. Kept in float32 on the evaluation
device they cost 4 (T + 1) bytes per parameter there, which no single GPU has for a 7B model.
The storage dtype (default: the checkpoints' own, e.g. bfloat16) halves that without changing
how a candidate is computed: every stored tensor is read back and combined in float32, one
tensor at a time. Placement `host` keeps the stored tensors in (pinned) host memory and streams
each one to the device when a candidate is built, so the evaluation module is the only full
model on the device. Placement `disk` keeps them in files instead, mapped into memory: the
operating system's page cache holds what RAM allows and reads the rest back for each candidate,
so the plan of a 7B campaign over 3 endpoints (50 GiB stored) fits a 24 GiB GPU and 32 GiB of RAM.
"""

from __future__ import annotations

import bisect
import functools
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy
import torch

from evo_merge.errors import UserError
from evo_merge.merge.registry import get_method
from evo_merge.weights import Checkpoint, parse_dtype
from evo_merge.weights.devices import indexed
from evo_merge.weights.dtypes import AUTO

Placement = Literal["device", "host", "disk"]
SLAB_MIN, SLAB_MAX = 2**26, 2**30  # bytes of the first and the largest slab
ALIGN = 512  # bytes: where each kept tensor starts in a slab (any dtype's view, aligned copies)


@dataclass(frozen=True)
class Storage:
    """Storage dtype (None: each tensor's own floating dtype in the checkpoints), placement, and the
    folder of `disk` placement's files (None: the system's temporary folder, which is often held in
    RAM, the very thing `disk` spares; a campaign passes its run folder)."""

    dtype: torch.dtype | None = None
    placement: Placement = "device"
    directory: str | None = None

    @classmethod
    def parse(cls, dtype: str = AUTO, placement: Placement = "device", directory: str | None = None) -> Storage:
        return cls(None if dtype == AUTO else parse_dtype(dtype), placement, directory)

    @classmethod
    def of(cls, spec) -> Storage:
        """From a campaign's `storage` settings (config.StorageSpec)."""
        return cls.parse(spec.dtype, spec.placement, spec.disk_dir)

    def uses_slabs(self, on_gpu: bool) -> bool:
        """Whether the stored tensors are packed into `Slabs`: files for `disk`, pinned memory for
        `host` on a GPU (on a CPU `host` tensors are plain ones, as `device` ones are)."""
        return self.placement == "disk" or (self.placement == "host" and on_gpu)

    def stored_dtype(self, checkpoints: Sequence[Checkpoint], names: Sequence[str]) -> torch.dtype:
        """The dtype a tensor is kept in, read as `names[i]` from checkpoint i: the chosen one, or
        the widest of the checkpoints'."""
        if self.dtype is not None:
            return self.dtype
        return functools.reduce(torch.promote_types, (c.dtype(n) for c, n in zip(checkpoints, names)))


def keeps_task_vectors_exactly(storage: Storage, checkpoints: Sequence[Checkpoint], adapters: bool) -> bool:
    """Whether `InPlaceMerger` keeps every task vector of these checkpoints exactly: `auto` keeps
    each tensor in its widest input dtype, which holds the endpoints (kept as such below float32);
    a chosen dtype must hold every input's. A LoRA adapter's endpoint is its sum with the model,
    formed in float32: only float32 holds it (`adapters`: some endpoint is one)."""
    dtypes = {c.dtype(n) for c in checkpoints for n in c.names if c.dtype(n).is_floating_point}
    wanted = dtypes | ({torch.float32} if adapters else set())
    if storage.dtype is None:
        return not adapters or all(d.itemsize >= 4 for d in dtypes)
    return all(torch.promote_types(d, storage.dtype) == storage.dtype for d in wanted)


@dataclass(frozen=True)
class Keeping:
    """How a search keeps its tensors, as far as a candidate's exactness goes (`keeping`).

    dtype: the storage dtype as a run resolves it (the base's own for `auto`);
    task_vectors_exact: every task vector kept exactly (`keeps_task_vectors_exactly`);
    as_checkpoints: every tensor kept in the base checkpoint's own dtype, as a MASS folder keeps
    its base and factors (a wider `auto` dtype where an endpoint is wider, or a chosen one that
    differs, is not)."""

    dtype: torch.dtype
    task_vectors_exact: bool
    as_checkpoints: bool


def keeping(storage: Storage, checkpoints: Sequence[Checkpoint], adapters: bool, dtype: torch.dtype) -> Keeping:
    """The `Keeping` of these checkpoints (the base first) under `storage`, resolved to `dtype`."""
    base, endpoints = checkpoints[0], checkpoints[1:]
    as_checkpoints = all(
        storage.stored_dtype(checkpoints, [name] * len(checkpoints)) == base.dtype(name)
        for name in base.names
        if base.dtype(name).is_floating_point and all(name in c for c in endpoints)
    )
    return Keeping(dtype, keeps_task_vectors_exactly(storage, checkpoints, adapters), as_checkpoints)


def rounds(method: str, kept: Keeping) -> bool:
    """Whether a search's candidate of `method` can differ from the merge its recipe rebuilds, its
    tensors kept as `kept` says (`InPlaceMerger` keeps a task vector exactly in float32, and as its
    endpoint in the checkpoints' own narrower dtype; not where a dtype narrower than the checkpoints'
    was chosen, or an endpoint is a LoRA adapter's sum). Computed pieces (TSV's factors) are kept in
    the storage dtype, rounded below float32."""
    if not kept.task_vectors_exact:
        return True
    m = get_method(method)
    return kept.dtype.itemsize < 4 and m.pieces is not None and not m.pieces_are_task_vectors


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


class SlabPacker:
    """Where kept tensors go in the slabs, as arithmetic (`Slabs` places them, the memory plan
    counts them): into the slab whose unused end fits the tensor most tightly, else a new slab
    (64 MiB, doubling up to 1 GiB, or the tensor's own power of two); a tensor larger than a slab
    gets a buffer of its own.

    Each slab used to take only the next tensors, and its end was lost when one did not fit: a
    7B model's 50 GiB of stored tensors took 53.75 GiB of slabs (an H200 run peaked 3.5 GiB above
    the plan, which did not count them), a 70B one's 514 GiB 565. Filling the ends with later,
    smaller tensors (the attention matrices and norms after the MLP ones) leaves 1.5 and 1.6 GiB."""

    def __init__(self):
        self.lengths: list[int] = []
        self._ends: list[tuple[int, int]] = []  # (unused bytes past the last aligned start, slab), sorted

    def place(self, size: int) -> tuple[int, int] | None:
        """(slab, offset) for `size` bytes, appending to `lengths` when no slab has room; None for
        a tensor larger than a slab."""
        i = bisect.bisect_left(self._ends, (size, -1))
        if i < len(self._ends):
            free, slab = self._ends.pop(i)
            start = self.lengths[slab] - free
        elif size > SLAB_MAX:
            return None
        else:
            grown = 2 * self.lengths[-1] if self.lengths else SLAB_MIN
            self.lengths.append(min(SLAB_MAX, max(grown, 1 << max(size - 1, 0).bit_length())))
            slab, start = len(self.lengths) - 1, 0
        end = self.lengths[slab] - _aligned(start + size)
        if end > 0:
            bisect.insort(self._ends, (end, slab))
        return slab, start


def slab_bytes(sizes: Iterable[int], pinned: bool = False) -> int:
    """Bytes `Slabs` takes for tensors of these sizes (in bytes), kept in this order. A tensor over
    SLAB_MAX gets a buffer of its own, which torch's pinned-memory allocator (`pinned`) rounds up to
    a power of two like any other: a 7B model's 1.02 GiB embedding takes 2 GiB of pinned memory."""
    packer, own = SlabPacker(), 0
    for size in sizes:
        if packer.place(size) is None:
            own += 1 << (size - 1).bit_length() if pinned else size
    return sum(packer.lengths) + own


class Slabs:
    """Host memory for kept tensors, handed out from a few large buffers: pinned (`pin`), mapped
    from files in `directory`, or plain (`SlabPacker` says where each goes).

    Torch's pinned-memory allocator rounds every allocation up to a power of two. Pinned one by
    one, a 7B model's MLP matrices (90 MB in bfloat16) take 128 MB each: an H200 run kept 50 GiB
    of task vectors in 68 GiB of host RAM. The slabs are powers of two themselves. A file costs
    one memory map each, which the slabs keep to a few hundred for a 70B model."""

    def __init__(self, pin: bool = False, directory: str | None = None):
        self.pin, self.directory = pin, directory
        self.slabs: list[torch.Tensor] = []
        self._packer = SlabPacker()

    def _buffer(self, length: int) -> torch.Tensor:
        if self.directory is None:
            return torch.empty(length, dtype=torch.uint8, pin_memory=self.pin)
        return mapped_buffer(self.directory, length)

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` copied into a slab: a view of the slab's bytes in its dtype and shape."""
        size = tensor.numel() * tensor.element_size()
        placed = self._packer.place(size)
        if placed is None:  # a buffer of its own (a 70B model's embedding)
            return self._buffer(size).view(tensor.dtype).view(tensor.shape).copy_(tensor)
        slab, start = placed
        if slab == len(self.slabs):
            self.slabs.append(self._buffer(self._packer.lengths[slab]))
        return self.slabs[slab][start:start + size].view(tensor.dtype).view(tensor.shape).copy_(tensor)


def check_disk_dir(directory: str) -> None:
    """The folder `disk` placement keeps its files in: an existing folder a file can be made in.
    `plan` passed a missing folder or a file (and said "fits"), or planned /proc as a full disk that
    nothing fits; `run` refused them only as it kept the first tensor."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"storage.disk_dir: {directory} is {'a file' if path.exists() else 'not found'}; give an "
                        "existing folder on a local disk")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise UserError(f"storage.disk_dir: cannot write a file in {directory} ({exc.strerror})") from None


def mapped_buffer(directory: str, length: int) -> torch.Tensor:
    """`length` bytes of a new file in `directory`, unlinked at once and mapped into memory: the
    kernel frees its blocks when the process ends however it ends (kill -9 too), so no run leaves
    tens of GiB behind. The blocks are reserved first (posix_fallocate): a full disk is an error
    here, not a SIGBUS when a page of the map is first written."""
    try:
        fd, path = tempfile.mkstemp(prefix="evo-merge-stash-", dir=directory)
    except OSError as exc:
        raise UserError(f"storage.disk_dir: cannot write a file in {directory} ({exc.strerror})") from None
    os.unlink(path)  # before its blocks are taken: a kill from here on leaves no file behind
    with os.fdopen(fd, "r+b") as file:
        try:  # macOS has no posix_fallocate: a file of that length, its blocks taken as pages are written
            reserve = getattr(os, "posix_fallocate", lambda fd, offset, n: os.ftruncate(fd, offset + n))
            reserve(fd, 0, max(length, 1))
        except OSError as exc:
            raise UserError(f"storage.disk_dir: {directory} has no room for {length / 2**30:.2f} GiB more of the "
                            f"stored weights ({exc.strerror}); free some or choose another folder") from None
        try:  # a map of its own: the file may be closed
            return torch.from_numpy(numpy.memmap(file, dtype=numpy.uint8, mode="r+", shape=(length,)))
        except (OSError, ValueError) as exc:  # a file system that cannot map files (some network ones)
            raise UserError(f"storage.disk_dir: files in {directory} cannot be mapped into memory ({exc}); "
                            "choose a folder on a local disk") from None


class Stash:
    """Puts tensors into storage and brings them back to the device for a candidate."""

    def __init__(self, storage: Storage, device: torch.device, compute: torch.dtype = torch.float32):
        # indexed: a bare cuda never equals a tensor's device (cuda:0), and a MASS model compared
        # the two to decide whether its factors must follow it: each was kept a second time
        self.storage, self.device, self.compute = storage, indexed(device), compute
        # pinned host memory for `host` on a GPU, so the copies to it run asynchronously; files for `disk`
        self._slabs: Slabs | None = None
        if storage.placement == "disk":
            self._slabs = Slabs(directory=storage.directory or tempfile.gettempdir())
        elif storage.uses_slabs(device.type == "cuda"):
            self._slabs = Slabs(pin=True)

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
