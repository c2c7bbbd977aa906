"""Where a campaign evaluates and whether its memory plan fits there: the campaign's side of the
plan. `merge.footprint` adds up what one setting (methods, storage, dtypes, batch) holds; this
module reads the campaign's evaluator, device and budgets, measures the machine (or takes the
budgets in its place), and, when the campaign's own setting does not fit, looks for the first
leaner one a user could write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from evo_merge.config import Campaign
from evo_merge.merge.footprint import (
    ACTIVATION_TOKENS,
    GIB,
    Plan,
    Setting,
    Shapes,
    describe_storage,
    gib,
    plan_lines,
    shapes_of,
)
from evo_merge.merge.host import AVAILABLE, available_memory, free_disk, memory_filesystem
from evo_merge.merge.storage import Storage
from evo_merge.weights.devices import cuda_count, resolve_device
from evo_merge.weights.dtypes import model_dtype


@dataclass(frozen=True)
class Target:
    """Where a campaign evaluates: its GPU (None: the CPU), workers on this machine, memory limits."""

    gpu: torch.device | None
    workers: int
    host: int | None
    device: int | None
    budgets: tuple[str, str] = field(default=(AVAILABLE, "free"))
    disk: int | None = None  # free space where `disk` placement would keep its files (None: not known)
    disk_in_memory: str | None = None  # the RAM-backed file system (tmpfs) that folder is on, if it is
    remote: bool = False  # a running cluster's machines: nothing measured here, only budgets given


def gpu_elsewhere(campaign: Campaign) -> bool:
    """Whether the campaign names a GPU this machine does not have and gives `storage.device_budget_gib`:
    `plan` then plans that GPU against the budget (on a laptop or a login node, before the GPU
    machine is rented); `run` refuses it."""
    if campaign.evaluator.remote or campaign.storage.device_budget_gib is None:
        return False
    try:
        wanted = torch.device(campaign.device)
    except RuntimeError:  # not a device name: `resolve_device` says so
        return False
    return wanted.type == "cuda" and (wanted.index or 0) >= cuda_count()


def gpu_note(campaign: Campaign) -> str | None:
    """What `plan` says first where the GPU it plans for is not this machine's (`gpu_elsewhere`), or
    where `device: auto` with `storage.device_budget_gib` finds none and plans the CPU."""
    spec, evaluator = campaign.storage, campaign.evaluator
    if gpu_elsewhere(campaign):
        host = ("storage.host_budget_gib" if spec.host_budget_gib is not None
                else "this machine's memory (give storage.host_budget_gib for the GPU machine's)")
        workers = (f", for {evaluator.n_workers} dask workers with a GPU each"
                   if evaluator.kind == "dask" and evaluator.n_workers and not campaign.device.startswith("cuda:")
                   else "")
        return (f"{campaign.device}: torch sees no such GPU here: planned against storage.device_budget_gib{workers}, "
                f"the host against {host}; `run` needs the GPU")
    if (campaign.device == "auto" and spec.device_budget_gib is not None and not evaluator.remote
            and not torch.cuda.is_available()):
        return ("device: auto finds no GPU here, so this is the CPU's plan (storage.device_budget_gib unused); "
                "name `device: cuda` to plan a GPU machine against it")
    return None


DECOMPOSED_SLOWLY = 100_000_000  # parameters from which a CPU's decompositions take minutes


def decomposition_note(campaign: Campaign, plan: Plan, n_models: int) -> str | None:
    """What `plan` says where a CPU is to decompose a large model: a method with pieces (TSV-M's
    SVD of every matrix of each task vector) computes them with its first candidate, which took
    10 minutes at 0.67B with 2 endpoints on one CPU thread under a progress line that said only
    "merging" (audit 126); a resume computes them again. None on a GPU, or for a small model."""
    from evo_merge.merge.kinds import MASS
    from evo_merge.merge.registry import get_method

    if plan.device != "cpu" or campaign.evaluator.remote:
        return None
    slow = [name for name in campaign.methods if name == MASS or (
        (method := get_method(name)).pieces is not None and not method.pieces_are_task_vectors)]
    if not slow:
        return None
    if plan.parameters < DECOMPOSED_SLOWLY:
        return None
    return (f"{', '.join(slow)} on a CPU: the first candidate decomposes every matrix of each of the "
            f"{n_models} task vectors ({plan.parameters / 1e9:.2f}B parameters), once per run and again after a "
            "resume (10 minutes at 0.67B with 2 endpoints on one thread, hours at 7B; on a GPU, 33 s at 0.5B and "
            "minutes at 7B); leave "
            f"{'it' if len(slow) == 1 else 'them'} out of `methods` where that is too long")


def target_of(campaign: Campaign, *, planning: bool = False) -> Target:
    """The campaign's evaluation target, with budgets taking the place of measured memory. A GPU
    asked for and not there stops here, before anything is loaded (a remote cluster's workers
    check their own), unless only `planning` and its budget is given (`gpu_elsewhere`)."""
    evaluator, spec = campaign.evaluator, campaign.storage
    remote = evaluator.remote  # its machines are not measured here
    elsewhere = planning and gpu_elsewhere(campaign)
    gpu = None
    if elsewhere:
        gpu = torch.device("cuda", torch.device(campaign.device).index or 0)
    elif not remote:
        device = resolve_device(campaign.device)
        gpu = torch.device("cuda", device.index or 0) if device.type == "cuda" else None
    elif campaign.device != "cpu" and torch.cuda.is_available():
        gpu = torch.device("cuda", 0) if campaign.device in ("auto", "cuda") else torch.device(campaign.device)
    workers = 1
    if evaluator.kind == "dask" and evaluator.n_workers is not None:
        # a local cluster pins a worker to each GPU it uses: the one `device: cuda:N` names, or all (a GPU
        # machine planned from elsewhere: as many as the workers asked for)
        gpus = 1 if campaign.device.startswith("cuda:") else (
            evaluator.n_workers if elsewhere else torch.cuda.device_count())
        workers = min(evaluator.n_workers, gpus) if gpu is not None else evaluator.n_workers
    host, host_label = available_memory() if not remote else (None, AVAILABLE)
    device = torch.cuda.mem_get_info(gpu)[0] if gpu is not None and not remote and not elsewhere else None
    labels = [host_label, "free"]
    if spec.host_budget_gib is not None:
        host, labels[0] = int(spec.host_budget_gib * GIB), "storage.host_budget_gib"
    if spec.device_budget_gib is not None:
        device, labels[1] = int(spec.device_budget_gib * GIB), "storage.device_budget_gib"
    here = spec.disk_dir is not None and not remote
    disk, in_memory = (free_disk(spec.disk_dir), memory_filesystem(spec.disk_dir)) if here else (None, None)
    return Target(gpu, workers, host, device, (labels[0], labels[1]), disk, in_memory, remote)


def plan_for(
    campaign: Campaign, shapes: Shapes, n_models: int, target: Target, storage: Storage, eval_dtype: torch.dtype,
    batch_size: int | None = None,
) -> Plan:
    setting = Setting(n_models, tuple(campaign.methods), storage, eval_dtype, target.gpu is not None,
                      batch_size or campaign.evaluator.batch_size, campaign.evaluator.sequence_tokens)
    return Plan(
        plan_lines(shapes, setting),
        target.workers,
        "cpu" if target.gpu is None else str(target.gpu),
        storage,
        target.host,
        target.device,
        target.budgets,
        available_disk=target.disk if storage.placement == "disk" else None,
        disk_in_memory=target.disk_in_memory if storage.placement == "disk" else None,
        remote=target.remote,
        parameters=sum(t.numel for t in shapes.floating),
    )


def campaign_plan(campaign: Campaign, base_path: str | Path, model_paths: Sequence[str | Path], *,
                  resuming: bool = False, planning: bool = False) -> Plan:
    """The campaign's plan; when it does not fit, `alternative` names the first setting that does:
    a smaller evaluation batch (the activations shrink, the weights stay as they are), then
    storage (bfloat16, then host placement), then a bfloat16 evaluation module, each of those
    with the campaign's batch and then smaller ones (neither bf16 storage nor a batch of 1 alone
    may fit where both together do, as in a 0.3B campaign under a 7.2 GiB budget); `disk`
    placement only after every setting that keeps the stored weights in memory. `resuming`:
    only what a run folder lets a resume change (placement, budgets); the rest is part of what it
    computes. `planning`: for `plan` alone, which may plan a GPU this machine lacks (`gpu_elsewhere`)."""
    shapes, target = shapes_of(base_path, model_paths), target_of(campaign, planning=planning)
    current, eval_dtype = Storage.of(campaign.storage), model_dtype(campaign.dtype, shapes)
    plan = plan_for(campaign, shapes, len(model_paths), target, current, eval_dtype)
    if plan.fits:
        return plan
    disk_short = plan.available_disk is not None and plan.need_disk > plan.available_disk
    plan.alternative, found = _leaner(campaign, shapes, len(model_paths), target, current, eval_dtype, resuming,
                                      disk_short)
    roomy = disk_short and plan_for(campaign, shapes, len(model_paths), replace(target, disk=None), current, eval_dtype)
    if roomy and roomy.fits:  # the settings fit where the files have room: said beside, or instead of, the leanest
        elsewhere = f"storage.disk_dir on a disk with {gib(plan.need_disk)} free"
        plan.alternative = (f"{plan.alternative}; so does {elsewhere} ({_needs(roomy)})" if found
                            else f"{elsewhere} fits ({_needs(roomy)})")
    largest = max(plan.lines, key=lambda line: line.host + line.device).what
    if largest.startswith("activations") and "sequence_tokens" not in campaign.evaluator.model_fields_set:
        plan.alternative += (f"; the activations are sized for {ACTIVATION_TOKENS}-token sequences, "
                             "evaluator.sequence_tokens' default: where the tasks' prompts and answers are "
                             "shorter, set it to their length for a closer plan")
    return plan


def _leaner(campaign: Campaign, shapes: Shapes, n_models: int, target: Target, current: Storage,
            eval_dtype: torch.dtype, resuming: bool, disk_short: bool = False) -> tuple[str, bool]:
    """(the first setting that fits, in words, True), or (why none is offered, False). `disk_short`:
    `disk` placement's folder lacks the room, so keeping the weights in memory is leaner there."""
    batch = campaign.evaluator.batch_size
    batches = [batch] if resuming else [batch >> k for k in range(batch.bit_length())]  # 32, 16, ..., 1
    # `disk` (on a CPU too: it keeps the stored weights out of RAM) is read back for every candidate; on a
    # CPU `device` and `host` are one memory, offered in place of `disk` where its folder is what is short
    in_memory = "device" if current.placement == "disk" and disk_short else current.placement
    kept_here = ("device", "host") if target.gpu is not None else (in_memory,)
    placements = tuple(dict.fromkeys((*kept_here, "disk")))
    options = [
        (Storage(dtype, placement, current.directory), ev)
        for ev in dict.fromkeys((eval_dtype, torch.bfloat16))
        for dtype in dict.fromkeys((current.dtype, torch.bfloat16))
        for placement in placements
        if not resuming or (dtype, ev) == (current.dtype, eval_dtype)
    ]
    options.sort(key=lambda option: option[0].placement == "disk")  # every way of keeping them in memory first
    ordered = [(current, eval_dtype), *(o for o in options if o != (current, eval_dtype))]
    settings = [(storage, ev, b) for storage, ev in ordered for b in batches][1:]  # the first is the campaign's own
    resume = ("a resume keeps this run's batch size and dtypes: start the campaign in a new run folder with a "
              "smaller evaluator.batch_size")
    if not settings:  # nothing leaner to offer: a resume on disk, or batch 1 with bf16 everywhere on disk
        return (resume if resuming else "no leaner storage setting or batch size exists"), False
    for storage, ev, b in settings:
        other = plan_for(campaign, shapes, n_models, target, storage, ev, b)
        if other.fits:
            return f"{_changes(current, eval_dtype, batch, storage, ev, b)} fits ({_needs(other)})", True
    storage, ev, b = settings[-1]
    lean = plan_for(campaign, shapes, n_models, target, storage, ev, b)
    leanest = (f"no storage setting or batch size fits; the leanest "
               f"({_changes(None, eval_dtype, batch, storage, ev, b)}) {lean.shortfall()}")
    return (f"{leanest}; {resume}" if resuming else leanest), False


def _changes(current: Storage | None, eval_dtype: torch.dtype, batch: int, storage: Storage, ev: torch.dtype,
             b: int) -> str:
    """The settings that differ from the campaign's, as a user would write them (`current` None:
    the storage always named)."""
    parts = []
    if (storage, ev) != (current, eval_dtype):
        parts.append(describe_storage(storage, None if ev == eval_dtype else str(ev).removeprefix("torch.")))
    if b != batch:
        parts.append(f"evaluator: {{batch_size: {b}}}")
    return " and ".join(parts)


def _needs(plan: Plan) -> str:
    """What a plan that fits needs, as the suggestion shows it."""
    return f"host {gib(plan.need_host)}" + ("" if plan.device == "cpu" else f", {plan.device} {gib(plan.device_bytes)}")


def check_fits(campaign: Campaign, base_path: str | Path, model_paths: Sequence[str | Path], *,
               resuming: bool = False, details: str = "evo-merge plan") -> Plan:
    """The campaign's plan; a UserError (exit 2) naming the need, the limit and the first setting
    that fits (that a resume may change, when `resuming`) when it does not fit, and `details`, the
    command printing the whole plan."""
    plan = campaign_plan(campaign, base_path, model_paths, resuming=resuming)
    if not plan.fits:
        raise plan.refusal(details)
    return plan
