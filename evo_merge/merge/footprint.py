"""The memory plan of a campaign, from checkpoint headers only: what a search holds, where, and
whether it fits, before anything heavy is loaded.

An out-of-memory error half-way through calibration wastes the time spent loading and tells
the user little. The plan adds up, per evaluation process (each dask worker holds its own copy),
the bytes of: the evaluation module; the base and the T task vectors as stored (storage dtype
and placement); the factored TSV pieces (rank r/T per task); MASS's module, factors and merge
cache; the per-tensor merge work; activations for one batch; and the Python runtime. A `Plan`
compares them with the memory a target has; `search.capacity` measures the campaign's target (the
free GPU memory, the host's available RAM, or the campaign's `storage` budgets) and, when the
campaign's setting does not fit, names the first storage setting that does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from evo_merge.config import EvaluatorSpec
from evo_merge.errors import UserError
from evo_merge.merge.kinds import MASS
from evo_merge.merge.methods import DEVICE_CONSENSUS_CHUNK
from evo_merge.merge.registry import get_method
from evo_merge.merge.storage import Storage, slab_bytes
from evo_merge.merge.subspace import decomposes, tsv_rank
from evo_merge.weights import Checkpoint, check_compatible, heads
from evo_merge.weights.export import DEFAULT_MAX_SHARD_BYTES

GIB = 2**30
RUNTIME_BYTES = int(0.75 * GIB)  # python, torch, transformers, a tokenizer: the process before any model
ACTIVATION_TOKENS = EvaluatorSpec.model_fields["sequence_tokens"].default  # tokens per sequence, unless set
ACTIVATION_FLOATS = 24  # float32 values per token and hidden unit alive in a forward pass (estimate)
MASS_CACHE = 8  # merged task sets MASS keeps (its routing cache_size default)
# Methods that keep more than a weighted sum's copies of the tensor they merge say so at registration
# (`MergeMethod.work_copies`: the sparsifiers, whose counts were measured on a 4096 x 2048 tensor with 2 to
# 8 endpoints: the comment above `merge.methods.ties`). Those are a CPU's, whose consensus runs 2^16
# entries at a time. A GPU's chunk is 2^24 entries, and the weighted rows, their signs and the agreement
# of one chunk are about 2T + 1 float32 copies of it, which those counts miss for a largest tensor of up to
# a few chunks (an audit, the GPU's chunk on a CPU: TIES on a 2^21-entry tensor peaked at 16.0 copies with 3
# endpoints and 36.0 with 8, against 11 and 21): counted on a GPU beside them (`_chunk_bytes`), for every
# method registered with `streams=True` (the built-in sparsifiers, and a method of your own running through
# `generalized_task_arithmetic`)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's header: its shape and the widest dtype it has in the checkpoints."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return torch.Size(self.shape).numel()


@dataclass(frozen=True)
class Line:
    what: str
    host: int
    device: int
    disk: int = 0  # `disk` placement's files: the page cache holds what RAM allows, the rest is read back


@dataclass
class Plan:
    """Bytes per evaluation process, host and device, and what is available for them."""

    lines: list[Line]
    workers: int  # processes on this machine, each holding its own copy
    device: str  # "cpu", or the GPU the device column is for
    storage: Storage
    available_host: int | None = None  # None: unknown (a remote cluster, or a machine that does not say)
    available_device: int | None = None
    budgets: tuple[str, str] = ("available", "available")  # where each limit came from
    alternative: str | None = None  # the first setting that fits, when this one does not
    available_disk: int | None = None  # free space in `storage.directory` (None: not known yet)
    disk_in_memory: str | None = None  # the RAM-backed file system `storage.directory` is on (tmpfs), if it is
    remote: bool = False  # evaluated on a running cluster's machines, which are not measured here
    parameters: int = 0  # the floating parameters of the model merged (what a decomposition's time goes by)

    @property
    def host(self) -> int:
        return sum(line.host for line in self.lines)

    @property
    def device_bytes(self) -> int:
        return sum(line.device for line in self.lines)

    @property
    def need_host(self) -> int:
        """Host memory for every worker, with `disk` placement's files where the folder keeps them in RAM."""
        return self.host * self.workers + (self.need_disk if self.disk_in_memory else 0)

    @property
    def need_disk(self) -> int:
        return sum(line.disk for line in self.lines) * self.workers

    def shortfall(self) -> str | None:
        """What does not fit, in words, or None."""
        if self.available_disk is not None and self.need_disk > self.available_disk:
            return (f"needs {gib(self.need_disk)} of files in {self.storage.directory} for storage placement disk but "
                    f"only {gib(self.available_disk)} is free there")
        if self.available_host is not None and self.need_host > self.available_host:
            per = f" ({self.workers} workers x {gib(self.host)})" if self.workers > 1 else ""
            if self.disk_in_memory:
                per += (f" with the {gib(self.need_disk)} of disk placement's files, which {self.storage.directory} "
                        f"keeps in memory ({self.disk_in_memory})")
            host = limit(self.budgets[0], self.available_host, short=True)
            return f"needs {gib(self.need_host)} of host memory{per} but {host}"
        if self.device != "cpu" and self.available_device is not None and self.device_bytes > self.available_device:
            return (
                f"needs {gib(self.device_bytes)} on {self.device} but "
                f"{limit(self.budgets[1], self.available_device, short=True)}"
            )
        return None

    @property
    def fits(self) -> bool:
        return self.shortfall() is None

    def refusal(self, details: str | None = None) -> UserError:
        """The error a plan that does not fit stops with: the need, the limit, the first setting that
        fits, and `details`, the command printing the whole plan (none from that command itself)."""
        where = f" (details: {details})" if details else ""
        return UserError(f"memory plan: the run {self.shortfall()}; {self.alternative}{where}")

    def _free_disk(self) -> str:
        """The free space for `disk` placement's files, or why it is not known: the folder is the
        run folder, which a plan without one (`evo-merge plan` with no --out) does not know."""
        if self.available_disk is not None:
            return f"{gib(self.available_disk)} is free there"
        if self.storage.directory is None:
            return "the run folder's free space is checked when the run starts (or by plan --out RUN)"
        return f"the free space in {self.storage.directory} could not be read"

    def table(self) -> str:
        """The plan as a text table, per worker, with the totals (and `fits` when it does)."""
        gpu = self.device != "cpu"
        labels = [line.what for line in self.lines] + [f"total for {self.workers} workers on this machine"]
        width = max(48, *(len(label) + 2 for label in labels))  # a long label does not push its figures out of line

        on_disk = self.need_disk > 0

        def row(what: str, host: int, device: int | None = None, disk: int | None = None) -> str:
            return (f"{what:<{width}}{gib(host):>12}" + (f"{gib(device):>12}" if gpu and device is not None else "")
                    + (f"{gib(disk):>12}" if on_disk and disk is not None else ""))

        rows = [f"{'bytes per worker':<{width}}{'host':>12}" + (f"{self.device:>12}" if gpu else "")
                + (f"{'disk':>12}" if on_disk else "")]
        rows += [row(line.what, line.host, line.device, line.disk) for line in self.lines]
        rows.append(row("total per worker", self.host, self.device_bytes, self.need_disk // self.workers))
        if self.workers > 1 or self.disk_in_memory:  # the files in memory: counted in this total's host column
            what = f"total for {self.workers} workers on this machine" if self.workers > 1 else "total on this machine"
            rows.append(row(what, self.need_host, disk=self.need_disk))
        rows.append(describe_storage(self.storage))
        if self.disk_in_memory:
            rows.append(f"disk: files in {self.storage.directory}, a {self.disk_in_memory} folder: they take host "
                        "memory as the other placements do (counted in the host total); choose a folder on a disk "
                        "(storage.disk_dir) to keep them out of RAM")
        elif on_disk:  # the page cache is not counted: the more RAM is free, the less each candidate reads
            rows.append(f"disk: files in {self.storage.directory or 'the run folder'}, read back for each "
                        "candidate (from the page cache as far as the host's RAM holds them)")
        if self.remote and self.available_host is None and self.available_device is None:  # no budget given either
            rows.append("limit: not checked: the machines that evaluate are a remote cluster's, not this one")
            return "\n".join(rows)
        rows.append(
            f"limit: host: {limit(self.budgets[0], self.available_host)}"
            + (f"; {self.device}: {limit(self.budgets[1], self.available_device)}" if gpu else "")
            + (f"; disk: {self._free_disk()}" if on_disk else "")
        )
        if self.fits:  # otherwise the command's error gives the shortfall and the setting that fits
            rows.append("fits")
        return "\n".join(rows)


def gib(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / GIB:.2f} GiB" if n >= GIB // 8 else f"{n / 2**20:.1f} MiB"


def limit(label: str, n: int | None, short: bool = False) -> str:
    """ "only 3.00 GiB is available" (`short`: beside a need it exceeds) or "storage.host_budget_gib is
    3.00 GiB"; the plan's own line says "22.17 GiB is available" of a run that fits."""
    if label.startswith("storage."):
        return f"{label} is {gib(n)}"
    return f"{'only ' if short else ''}{gib(n)} is {label}"


def describe_storage(storage: Storage, eval_dtype: str | None = None) -> str:
    dtype = "auto" if storage.dtype is None else str(storage.dtype).removeprefix("torch.")
    text = f"storage: {{dtype: {dtype}, placement: {storage.placement}}}"
    return text if eval_dtype is None else f"{text} with dtype: {eval_dtype}"


def describe(base: Checkpoint, endpoints: Sequence[Checkpoint]) -> tuple[list[TensorInfo], tuple[int, ...]]:
    """The tensors the merges write (the base's, and a head to untie), with, for floating ones,
    the widest dtype across all checkpoints; and the endpoints (their indices) that widen some
    tensor beyond the base's own dtype for it."""
    out, widening = [], set()
    for name in heads.merge_targets(base, endpoints):
        sources = [heads.source_name(c, name) for c in (base, *endpoints)]
        dtype = own = base.dtype(sources[0])
        if dtype.is_floating_point:
            dtypes = [c.dtype(n) for c, n in zip(endpoints, sources[1:])]
            dtype = functools.reduce(torch.promote_types, dtypes, dtype)
            widening |= {i for i, other in enumerate(dtypes) if torch.promote_types(own, other) != own}
        out.append(TensorInfo(name, tuple(base.shape(sources[0])), dtype))
    return out, tuple(sorted(widening))


@dataclass(frozen=True)
class Shapes:
    """What the plan reads from the headers and config.json."""

    tensors: list[TensorInfo]
    vocab: int = 0  # 0: not a language model (no logits)
    hidden: int = 0
    floating_dtype: torch.dtype = torch.float32  # the base's own (`Checkpoint.floating_dtype`): what "auto" is
    widened_by: tuple[int, ...] = ()  # the endpoints (indices) whose dtype is wider than the base's for some tensor

    @property
    def floating(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.dtype.is_floating_point]

    def nbytes(self, dtype: torch.dtype | None, tensors: Sequence[TensorInfo] | None = None) -> int:
        """Bytes of `tensors` (default: all) with floating ones in `dtype` (None: their own)."""
        tensors = self.tensors if tensors is None else tensors
        return sum(
            t.numel * (dtype or t.dtype).itemsize if t.dtype.is_floating_point else t.numel * t.dtype.itemsize
            for t in tensors
        )


@dataclass(frozen=True)
class Setting:
    """The settings the plan depends on."""

    n_models: int
    methods: tuple[str, ...]
    storage: Storage
    eval_dtype: torch.dtype
    on_gpu: bool
    batch_size: int = 32
    seq_len: int = ACTIVATION_TOKENS


def lowrank_sizes(shapes: Shapes, n_models: int, tasks: int, dtype: torch.dtype | None) -> list[int]:
    """Bytes of each factor of `tasks` tasks' TSV pieces, in the order the in-place merger keeps them
    (tensor by tensor, task by task: u (m, k), sigma (k), v (n, k), k = r/T)."""
    sizes = []
    for t in shapes.floating:
        if decomposes(t.shape, t.name):
            k, itemsize = tsv_rank(t.shape, n_models), (dtype or t.dtype).itemsize
            sizes += [k * n * itemsize for n in (t.shape[0], 1, t.shape[1])] * tasks
    return sizes


def lowrank_bytes(shapes: Shapes, n_models: int, tasks: int, dtype: torch.dtype | None) -> int:
    """Factored TSV pieces of `tasks` tasks: (m + n + 1) k per decomposed matrix and task, k = r/T."""
    return sum(lowrank_sizes(shapes, n_models, tasks, dtype))


def work_bytes(shapes: Shapes, setting: Setting) -> int:
    """Float32 copies of the largest tensor alive while one tensor is merged (the worst method)."""
    largest = max(shapes.floating, key=lambda t: t.numel, default=None)
    if largest is None:
        return 0
    # task arithmetic and TSV: setup's float32 base tensor and one endpoint's; a candidate's output
    # (plain pieces are added as stored, factored ones accumulated by matrix products)
    copies = max(2, _stacked(setting))
    for name in setting.methods:
        if name != MASS and get_method(name).work_copies is None and get_method(name).pieces is None:
            copies = max(copies, setting.n_models + 4)
        elif name in ("tsv", "tsv_c") and (setting.storage.dtype or largest.dtype).itemsize < 4:
            # its pieces are computed from the task vectors in float32: formed from endpoints kept in
            # the checkpoints' narrower dtype, and the base they are taken from (`InPlaceMerger`)
            copies = max(copies, setting.n_models + 1)
    # with `host` or `disk` on a GPU, the largest tensor's stored base and task vectors are on the device
    # while it is merged; on a CPU they are read where they are kept, nothing is staged
    staging = setting.n_models + 1 if setting.storage.placement != "device" and setting.on_gpu else 0
    return largest.numel * (4 * copies + staging * (setting.storage.dtype or largest.dtype).itemsize) + _chunk_bytes(
        largest, setting)


def _chunk_bytes(largest: TensorInfo, setting: Setting) -> int:
    """A GPU's consensus chunk of the chunked sparsifiers (`streams=True`), beyond their counts."""
    if not setting.on_gpu or not any(name != MASS and get_method(name).streams for name in setting.methods):
        return 0
    return 4 * (2 * setting.n_models + 1) * min(largest.numel, DEVICE_CONSENSUS_CHUNK)


def _stored_dtype_label(shapes: Shapes) -> str:
    """What `storage.dtype: auto` keeps: each tensor in the widest dtype of the base and endpoints
    (their task vectors exact), so one float32 endpoint among bfloat16 ones doubles it, which the
    plan's "(auto)" did not say (audit 126); the endpoints that widened it are named by key (a base
    of its own mixed dtypes, float32 norms among bfloat16 matrices, is no endpoint's doing)."""
    kinds = sorted({str(t.dtype).removeprefix("torch.") for t in shapes.floating})
    by = ", ".join(f"models.{i}" for i in shapes.widened_by)
    return "auto: " + " and ".join(kinds) + (f", widened by {by}" if by else "")


def plan_lines(shapes: Shapes, setting: Setting) -> list[Line]:
    """Bytes per evaluation process, by what holds them."""
    storage, T = setting.storage, setting.n_models
    stored = shapes.nbytes(storage.dtype, shapes.floating)
    module = shapes.nbytes(setting.eval_dtype)

    def line(what: str, nbytes: int, where: str) -> Line:
        if where == "disk":
            return Line(what, 0, 0, nbytes)
        on_device = setting.on_gpu and where == "device"
        return Line(what, 0 if on_device else nbytes, nbytes if on_device else 0)

    kept = storage.placement
    dtype = _stored_dtype_label(shapes) if storage.dtype is None else str(storage.dtype).removeprefix("torch.")
    lines = [
        line("runtime (python, torch, tokenizer)", RUNTIME_BYTES, "host"),
        line(f"evaluation module ({str(setting.eval_dtype).removeprefix('torch.')})", module, "device"),
        line(f"base, stored ({dtype})", stored, kept),
        line(f"task vectors, stored ({T} x {dtype})", T * stored, kept),
    ]
    if storage.uses_slabs(setting.on_gpu):
        # the base and the task vectors as setup keeps them, then TSV's factors as its candidates do
        sizes = [shapes.nbytes(storage.dtype, [t]) for t in shapes.floating for _ in range(T + 1)]
        sizes += [size for name, tasks in (("tsv", T), ("tsv_c", 1)) if name in setting.methods
                  for size in lowrank_sizes(shapes, T, tasks, storage.dtype)]
        unused = slab_bytes(sizes, pinned=kept == "host") - sum(sizes)  # pinned: `host` on a GPU
        lines.append(line("stored tensors' slabs: ends left unused", unused, kept))
    if "tsv" in setting.methods:
        lines.append(line("TSV-M pieces (rank r/T factors per task)", lowrank_bytes(shapes, T, T, storage.dtype), kept))
    if "tsv_c" in setting.methods:
        lines.append(
            line("TSV-C pieces (rank r/T factors, one task)", lowrank_bytes(shapes, T, 1, storage.dtype), kept)
        )
    if MASS in setting.methods:
        dense = [t for t in shapes.floating if not decomposes(t.shape, t.name)]
        factors = stored + lowrank_bytes(shapes, T, T, storage.dtype) + T * shapes.nbytes(storage.dtype, dense)
        lines += [
            line("MASS module", module, "device"),
            line("MASS factors", factors, kept),
            line(f"MASS merge cache ({MASS_CACHE} task sets)", MASS_CACHE * module, "device"),
        ]
    work = work_bytes(shapes, setting)
    lines.append(line("merge work (one tensor at a time)", work, "device"))
    tokens = setting.batch_size * setting.seq_len
    activations = tokens * (2 * shapes.vocab + ACTIVATION_FLOATS * shapes.hidden) * 4 if shapes.vocab else 64 * 2**20
    lines.append(line(f"activations ({setting.batch_size} x {setting.seq_len} tokens: batch_size x sequence_tokens)",
                      activations, "device"))
    # a pick is merged on the device (`stream_merge`) once the search's work and activations are gone
    merging, host = export_bytes(shapes, setting)
    if setting.on_gpu:
        lines.append(line("exporting a pick: inputs read, shard written", host, "host"))
    beyond = merging + (0 if setting.on_gpu else host) - work - activations
    if beyond > 0:
        lines.append(line("exporting a pick, beyond the search's work", beyond, "device"))
    if setting.on_gpu:
        # the base is read into a module on the host, in its own dtype, and then moved to the GPU,
        # before anything is stored: a 7B run with `device` placement peaked at 13.5 GiB of host RAM
        loading = RUNTIME_BYTES + shapes.nbytes(None) - sum(each.host for each in lines)
        if loading > 0:
            lines.append(line("loading the base on the host first, beyond the rest", loading, "host"))
    return lines


def export_bytes(shapes: Shapes, setting: Setting) -> tuple[int, int]:
    """(device, host) bytes of exporting one pick, while the search's state stays resident. The file
    merge streams one tensor at a time: its T + 1 inputs are read in float32 and the output buffered
    up to one shard on the host, in the pick's dtype (the evaluation module's; not the inputs' widest,
    which a float32 endpoint among bf16 ones doubled: audit 126); on the device, T + 1 inputs, T
    deltas, the method's temporaries and the result (a CPU holds both). Measured on a CPU: 9 float32
    copies of the largest tensor for task arithmetic with 3 endpoints, the plan's count."""
    largest = max(shapes.floating, key=lambda t: t.numel, default=None)
    if largest is None:
        return 0, 0
    T = setting.n_models
    copies = max(2 * T + 3, T + 1 + _stacked(setting))
    read = (T + 1) * largest.numel * 4 + min(shapes.nbytes(setting.eval_dtype), DEFAULT_MAX_SHARD_BYTES)
    return largest.numel * 4 * (copies - (0 if setting.on_gpu else T + 1)) + _chunk_bytes(largest, setting), read


def _stacked(setting: Setting) -> int:
    """Float32 copies of the largest tensor the methods that declare their `work_copies` keep alive
    while they merge it (0: none of them is searched)."""
    declared = [get_method(name).work_copies for name in setting.methods if name != MASS]
    return max((math.ceil(a * setting.n_models + b) for a, b in filter(None, declared)), default=0)


def shapes_of(base_path: str | Path, model_paths: Sequence[str | Path]) -> Shapes:
    """Headers of the base and the endpoints (no tensor is read), and the base's config sizes.
    Checked for compatibility first, as the merger will check them: an endpoint of another
    architecture or vocabulary is named by what differs, here before the run starts, rather than
    by the first tensor it lacks (or, with the same tensors, only once calibration has begun)."""
    with ExitStack() as stack:
        base = stack.enter_context(Checkpoint.open(base_path))
        endpoints = [stack.enter_context(Checkpoint.open(m)) for m in model_paths]
        check_compatible([base, *endpoints])
        config = base.config or {}
        tensors, widened_by = describe(base, endpoints)
        return Shapes(
            tensors,
            int(config.get("vocab_size") or 0),
            int(config.get("hidden_size") or config.get("n_embd") or 0),
            base.floating_dtype,
            widened_by,
        )
