"""The file merge: a plan's tensors merged one at a time as they are read (`stream_merge`), each
combined on the device asked for, or on the host where the device has no memory left for it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import torch

from evo_merge.merge.apply import merge_tensor
from evo_merge.merge.plan import MergePlan, TensorJob
from evo_merge.merge.task_vectors import TaskVector, is_zero
from evo_merge.weights import Checkpoint

log = logging.getLogger(__name__)


def _run_job(plan: MergePlan, job: TensorJob, checkpoints: list[Checkpoint], device: torch.device,
             on_host: list[str]) -> torch.Tensor:
    """One output tensor, on the host. Its inputs are read (and their token rows permuted) on the
    host and combined on `device`; a job the device has no memory left for is combined on the
    host instead, so a long export never dies on its largest tensor (the embeddings), and its name
    goes in `on_host` (the card says which device each tensor was merged on)."""
    sources = ([job.reference] if job.reference else []) + job.inputs
    stored = checkpoints[sources[0][0]].dtype(sources[0][1])
    if not stored.is_floating_point:
        return checkpoints[sources[0][0]].tensor(sources[0][1])
    tensors = [checkpoints[m].tensor(n, plan.dtype) for m, n in sources]
    if plan.tokens is not None and plan.tokens.is_embedding(job.name, tuple(tensors[0].shape)):
        tensors = plan.tokens.permute(sources, tensors)
    try:
        merged = _combine(plan, job, [t.to(device) for t in tensors])
    except torch.OutOfMemoryError:
        if device.type == "cpu":
            raise
        merged = None
    if merged is None:  # out of the handler: the error's frames, and the device tensors they hold, are gone
        torch.cuda.empty_cache()  # a no-op without CUDA
        log.warning("tensor %s: out of memory on %s; merged on the CPU (equal to rounding; DARE and DELLA draw "
                    "other drops there)", job.name, device)
        merged = _combine(plan, job, tensors)
        on_host.append(job.name)
    return merged.to(device="cpu", dtype=plan.out_dtype or stored)


def _combine(plan: MergePlan, job: TensorJob, tensors: list[torch.Tensor]) -> torch.Tensor:
    narrow = tensors[0].dtype
    if plan.method.on_models and narrow.itemsize < 4:  # a 16-bit difference is exact in float32
        return _combine(plan, job, [t.float() for t in tensors]).to(narrow)
    reference = tensors[0] if job.reference else torch.zeros_like(tensors[0])
    inputs = tensors[1:] if job.reference else tensors
    # formed where they are read for a method that streams them: not T more copies beside the inputs
    deltas = [TaskVector(x, reference) if plan.method.streams else x - reference for x in inputs]
    if plan.method.keeps_unchanged and all(is_zero(d) for d in deltas):  # its result is the base
        return reference + 0.0  # as base + 0 is: -0.0 read as 0.0
    return merge_tensor(plan.method, reference, deltas, job.weights, job.params, job.name)


def output_bytes(plan: MergePlan, checkpoints: list[Checkpoint]) -> int:
    """The merged weights' bytes as written (from the headers: each output tensor's shape, in the
    output dtype or its stored one), a vocabulary change aside."""
    total = 0
    for job in plan.jobs:
        model, name = job.reference or job.inputs[0]
        stored = checkpoints[model].dtype(name)
        dtype = plan.out_dtype if plan.out_dtype is not None and stored.is_floating_point else stored
        total += math.prod(checkpoints[model].shape(name)) * dtype.itemsize
    return total


def stream_merge(plan: MergePlan, *, device: torch.device | str = "cpu", on_host: list[str] | None = None,
                 room: Callable[[int], None] | None = None) -> tuple[int, Iterator[tuple[str, torch.Tensor]]]:
    """Open the checkpoints, then yield merged tensors lazily (count, iterator), each combined on
    `device` and returned on the host. A GPU makes the singular-vector methods practical at 7B
    (TSV-M's SVDs take hours on a CPU); outputs agree with the CPU's to rounding, and DARE's and
    DELLA's drops are drawn by the device's own generator (on a GPU, its draws for a large tensor
    may depend on the GPU model), so a recipe rebuilds them bit for bit on the kind of device that
    built them. `on_host` receives the names of tensors the device had no memory for, merged on
    the host instead. `room` is told the output's bytes before any tensor is merged (and may refuse
    them: a full disk found after a merge of minutes, or hours with TSV-M on a CPU, lost them)."""
    device = torch.device(device)
    checkpoints = plan.open()
    on_host = [] if on_host is None else on_host
    if room is not None:
        try:
            room(output_bytes(plan, checkpoints))
        except BaseException:
            for ck in checkpoints:
                ck.close()
            raise

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        try:
            for job in plan.jobs:
                yield job.name, _run_job(plan, job, checkpoints, device, on_host)
        finally:
            for ck in checkpoints:
                ck.close()

    return len(plan.jobs), tensors()
