"""Merge methods with mergekit's semantics: linear, task arithmetic, TIES, DARE, SLERP.

Defaults follow mergekit so a mergekit recipe gives the same tensors: `normalize` is on for
linear and TIES and off for task arithmetic and DARE; TIES and DARE trim each tensor on its own
(mergekit's per-tensor trimming, not the TIES paper's whole-model trimming); weights are applied
before sign election; an entry whose weighted deltas sum to exactly zero elects the positive sign
and an entry whose delta is zero never votes.

DARE is the exception: its drop masks come from a generator seeded per (recipe seed, tensor,
model), so a recipe rebuilds the same weights in any order, and survivors are divided by the
density (unbiased); mergekit draws from torch's global generator and rescales to the L1 norm.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from evo_merge.merge.registry import Hyperparameter as H
from evo_merge.merge.registry import Params, divides_by_weight_sum, register_method
from evo_merge.merge.task_vectors import Delta, TaskVector, vector, zeros

# any real number, as in mergekit (a negative one subtracts the task vectors: forgetting a skill)
LAMBDA = H("lambda", 1.0, help="global scale of the merged task vector", search_range=(0.5, 1.5))
WEIGHT_NORMALIZE = H("normalize", False, searchable=False, help="divide by the sum of weights")
DENSITY = H("density", 1.0, 0.0, 1.0, per_model=True, help="fraction of each task vector kept",
            search_range=(0.1, 1.0))
RESCALE = H("rescale", True, searchable=False, help="DARE: divide survivors by the density")
SEED = H("seed", 0, 0, 2**31 - 1, searchable=False, help="DARE: seed of the random drops")
INT8_MASK = H("int8_mask", False, searchable=False,
              help="mergekit's int8 sign masks (a memory saving): accepted, same tensors either way")
RESCALE_L1 = H("rescale", False, searchable=False, help="scale trimmed task vectors back to their L1 norm")
IGNORED_RESCALE = H("rescale", False, searchable=False,
                    help="accepted for mergekit recipes: nothing is trimmed, so nothing is rescaled")


def _normalize_divisor(weights: Sequence[float]) -> float:
    total = float(sum(weights))
    return 1.0 if abs(total) < 1e-8 else total


@register_method("linear", hyperparameters=[H("normalize", True, searchable=False)], base="averaged",
                 check=divides_by_weight_sum("normalize"), on_models=True)
def linear(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Weighted average of the models (model soup)."""
    total = sum(weights)
    out = base * total
    for delta, weight in zip(deltas, weights):
        out.add_(delta, alpha=weight)
    return out / total if params["normalize"] else out


def _task_arithmetic_in_steps(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Task arithmetic in mergekit's steps (weighted task vectors, their sum, normalised, scaled,
    added), each rounded to the compute dtype: a bfloat16 recipe, as mergekit-evolve saves them,
    gets mergekit's bits. In float32 the fused sum of the pieces is kept, so a campaign candidate
    and its recipe stay bit-identical."""
    return generalized_task_arithmetic(base, deltas, weights, params, sparsify=None, consensus=False)


@register_method(
    "task_arithmetic",
    keeps_unchanged=True,
    hyperparameters=[LAMBDA, WEIGHT_NORMALIZE, IGNORED_RESCALE, INT8_MASK],
    scale=lambda w, p: p["lambda"] / (_normalize_divisor(w) if p["normalize"] else 1.0),
    narrow=_task_arithmetic_in_steps,
    pieces_are_task_vectors=True,
)
def task_arithmetic(base, deltas, params: Params, name: str) -> list[torch.Tensor]:
    """theta_0 + lambda * sum_t c_t tau_t."""
    return list(deltas)


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top `density` fraction of entries by magnitude: none at density 0 (the TIES
    paper's top 0%), at least one above it (mergekit 0.1 stops with an assertion wherever density
    x entries rounds down to 0, a tensor's worth of merge lost to a small one). Of the entries tied
    with the last one kept (many, in bfloat16), the first by position are kept: the same entries
    on every device and torch version, so a candidate built on a GPU and its recipe rebuilt on a
    CPU agree (topk, like mergekit's unstable argsort, picks among ties in no set order)."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    return top_mask(delta.abs().flatten(), max(1, int(density * delta.numel()))).view_as(delta)


def top_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of flat non-negative `values` (a temporary of the caller's: its NaNs are made
    +inf in place, one copy fewer), as a boolean mask (a NaN ranks first, as in topk); of the
    entries tied with the k-th, the first by position: the same entries on every device and torch
    version. Where every entry tied with the k-th is kept (most cuts of continuous values), the
    mask is one comparison; otherwise the ties are kept by position (`_keep_first`)."""
    values = values.nan_to_num_(nan=torch.inf)
    cut, above, tied = _cut(values, k)
    if above + tied == k:
        return values >= cut
    mask = values > cut
    _keep_first(mask, values == cut, k - above)
    return mask


TIE_BLOCK = 2**20  # entries per block when the first tied entries are found by position


def _keep_first(mask: torch.Tensor, tied: torch.Tensor, wanted: int) -> None:
    """Set in `mask` the first `wanted` entries of boolean `tied` by position, a block at a time: the
    int64 positions of every tied entry were two float32 copies of a task vector an endpoint left
    unchanged (all of it tied at 0; audit 94), and a count per block over the whole tensor casts
    it to int64 too; one block's are 8 MiB."""
    for start in range(0, tied.numel(), TIE_BLOCK):
        block = tied[start:start + TIE_BLOCK]
        count = int(block.sum())
        if count < wanted:
            mask[start:start + TIE_BLOCK].logical_or_(block)
            wanted -= count
        else:
            mask[torch.nonzero(block).squeeze(1)[:wanted] + start] = True
            return


TOP_BITS = 16  # a non-negative float32 bucketed by its exponent and top 8 mantissa bits: 65,281 buckets up to +inf
SHARED_BUCKET = 64  # a cut's bucket holding over 1/64 of the entries is first checked for holding one value


def _cut(values: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    """(the k-th largest of a flat tensor of non-negative values, exactly as `topk(values,
    k).values.min()` gives it; how many are larger; how many equal it). NaN excluded, and no -0.0,
    whose sign bit reads as a negative int32: `abs` and variances give none.

    A non-negative float32 orders as its bits do read as an int32: a count of each bucket of the
    top TOP_BITS bits finds the bucket that holds the k-th largest, and only that bucket's values
    are then ranked, and counted. On a CPU a TIES merge spent 60% of its time trimming, mostly in
    `topk` (1.1B parameters: 175 s a candidate); this finds the cut 2.8-4.0x faster on 11.5M
    entries (`scripts/bench_trim.py`), and its counts spare the mask two more passes. A GPU keeps
    `topk`, a radix selection there already, where a count of 32k buckets would contend on its
    atomics (unmeasured), and counts over the whole tensor."""
    if values.device.type != "cpu" or values.dtype != torch.float32 or not values.is_contiguous():
        cut = torch.topk(values, k, sorted=False).values.min()
        return cut, int(torch.count_nonzero(values > cut)), int(torch.count_nonzero(values == cut))
    buckets = torch.bitwise_right_shift(values.view(torch.int32), 32 - TOP_BITS - 1)  # the sign bit is 0
    at_least = torch.bincount(buckets, minlength=(0x7F800000 >> (32 - TOP_BITS - 1)) + 1).flip(0).cumsum(0)
    top = int(torch.searchsorted(at_least, torch.tensor(k)))  # buckets counted from the top
    bucket = at_least.numel() - 1 - top
    higher = int(at_least[top - 1]) if top else 0  # in the buckets above the cut's
    held = int(at_least[top]) - higher
    if held > values.numel() // SHARED_BUCKET:  # one value may fill it: an endpoint's unchanged zeros, bf16 values
        low = torch.tensor(bucket << (32 - TOP_BITS - 1), dtype=torch.int32).view(torch.float32)
        if int(torch.count_nonzero(values == low)) == held:  # nothing to rank (ranking it took 3 copies of it)
            return low, higher, held
    inside = values[buckets == bucket]
    cut = torch.kthvalue(inside, inside.numel() - (k - higher) + 1).values  # k - higher-th largest inside
    return cut, higher + int(torch.count_nonzero(inside > cut)), int(torch.count_nonzero(inside == cut))


def random_mask(delta: Delta, density: float, seed: int) -> torch.Tensor:
    """Keep each entry with probability `density`, from a generator seeded by `seed` (the task
    vector's shape and device are all it reads)."""
    gen = torch.Generator(device=delta.device).manual_seed(seed)
    return torch.rand(delta.shape, generator=gen, device=delta.device) < density


def tensor_seed(seed: int, name: str, model: int) -> int:
    """A stable per-(tensor, model) seed: the same recipe always drops the same entries."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 101 + model) % (2**63 - 1)


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """TIES sign election over the stacked, already-weighted deltas: +1 where the sum is >= 0."""
    return torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)


@dataclass(frozen=True)
class Trimmed:
    """A trimmed task vector kept as its mask: `delta` × `mask`, times `scale` (an L1 rescale) or
    over `divisor` (DARE's density), formed a chunk at a time where the chunks are summed
    (`generalized_task_arithmetic`). Materialised, the T trimmed copies were T float32 copies of the
    largest tensor alive at once (a 128k-row embedding: 2 GiB each at 7B); their masks are a
    quarter of one each. The same operations in the same order, entry by entry: the same bits."""

    delta: TaskVector
    mask: torch.Tensor  # flat, boolean
    scale: torch.Tensor | None = None
    divisor: float | None = None

    def write(self, part: slice, row: torch.Tensor) -> None:
        """Entries `part` of the trimmed vector into `row`."""
        self.delta.write(part, row)
        row.mul_(self.mask[part])
        if self.scale is not None:
            row.mul_(self.scale)
        if self.divisor is not None:
            row.div_(self.divisor)


def l1_scale(delta: torch.Tensor, mask: torch.Tensor, eps: float = 1e-7) -> torch.Tensor | None:
    """The factor that brings `delta` × `mask` back to the L1 norm of `delta` (mergekit's `rescale`
    for magnitude trimming); None where either norm is below `eps`, where mergekit leaves it as is."""
    before, after = delta.abs().sum(), (delta * mask).abs_().sum()
    if before < eps or after < eps:
        return None
    return before / after


def masked(delta: TaskVector, formed: torch.Tensor, mask: torch.Tensor, rescale: bool) -> Trimmed:
    """`delta` (as `formed`, its whole tensor) trimmed to `mask` (same shape), L1-rescaled where
    `rescale` is set; kept as it is, to be formed again a chunk at a time."""
    return Trimmed(delta, mask.reshape(-1), l1_scale(formed, mask) if rescale else None)


# (task vector, model index) -> trimmed: a tensor, the task vector as it came, or its mask
Sparsifier = Callable[[TaskVector, int], "Delta | Trimmed"]


def magnitude_trim(params: Params) -> Sparsifier:
    """TIES trimming: the top `density` by magnitude, L1-rescaled when `rescale` is set."""
    def trim(delta: TaskVector, t: int) -> Delta | Trimmed:
        density = params["density"][t]
        if density >= 1:
            return delta
        full = delta.whole()
        return masked(delta, full, magnitude_mask(full, density), params["rescale"])
    return trim


def dare_drop(params: Params, name: str) -> Sparsifier:
    """DARE: keep each entry with probability `density` (seeded per tensor and model), then divide
    the survivors by `density` when `rescale` is set, so the expected task vector is unchanged."""
    def drop(delta: TaskVector, t: int) -> Delta | Trimmed:
        density = params["density"][t]
        if density >= 1:
            return delta
        if density <= 0:  # nothing kept (and nothing to rescale)
            return zeros(delta)
        mask = random_mask(delta, density, tensor_seed(params["seed"], name, t))
        return Trimmed(delta, mask.reshape(-1), divisor=density if params["rescale"] else None)
    return drop


# Entries per chunk: on a CPU, T float32 rows and their temporaries stay in cache; on a GPU, few kernel
# launches a tensor. Multiples of 64, so that torch's sum over the rows takes each entry's terms in the
# order it takes them over the whole tensor (its vectorised loop over the entries starts at the same
# ones; an unaligned chunk of 5+ rows can differ in the last bit). A tail shorter than a vector (4 entries
# of a 3277 x 20 embedding) is summed otherwise on its own than at the end of a row: the last
# MIN_TAIL entries or fewer go with the chunk before them
CONSENSUS_CHUNK = 2**16
DEVICE_CONSENSUS_CHUNK = 2**24
MIN_TAIL = 256


def generalized_task_arithmetic(
    base: torch.Tensor,
    deltas: Sequence[Delta],
    weights: Sequence[float],
    params: Params,
    *,
    sparsify: Sparsifier | None,
    consensus: bool,
) -> torch.Tensor:
    """Trim each task vector, optionally elect signs, then sum or average the survivors. A task
    vector may come as a `TaskVector`, formed whole only while it is trimmed, and a chunk at a time.

    Trimming sees each whole task vector (a magnitude cut, an L1 norm, a seeded draw over its
    shape); everything after it is per entry, so it runs a chunk at a time (`_combine_chunk`):
    mergekit's steps on each entry in its order, the same bits, without the stacked, sign and
    agreement copies of every task vector that a whole-tensor pass makes: on a CPU those passes
    were half of a TIES candidate's time (SmolLM2-135M, 3 endpoints), and chunked take 2.8x less."""
    kept = [sparsify(vector(delta), t) if sparsify else delta for t, delta in enumerate(deltas)]
    flat_base = base.reshape(-1)
    flat = [k if isinstance(k, Trimmed) else vector(k) for k in kept]  # each writes a chunk of itself
    out = torch.empty_like(flat_base)
    w = torch.tensor(list(weights), dtype=base.dtype, device=base.device).view(-1, 1)
    divisor = None if consensus else _weight_sum(w)
    chunk = CONSENSUS_CHUNK if base.device.type == "cpu" else DEVICE_CONSENSUS_CHUNK
    bounds = [*range(0, flat_base.numel(), chunk), flat_base.numel()]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_TAIL:
        del bounds[-2]
    stacked = base.new_empty((len(kept), max((b - a for a, b in zip(bounds, bounds[1:])), default=0)))
    for start, stop in zip(bounds, bounds[1:]):
        part = slice(start, stop)
        weighted = stacked[:, : stop - start]
        for row, task in zip(weighted, flat):
            task.write(part, row)
        torch.add(flat_base[part], _combine_chunk(weighted.mul_(w), w, params, divisor), out=out[part])
    return out.view_as(base)


def _weight_sum(w: torch.Tensor) -> torch.Tensor:
    """mergekit's divisor where no sign is elected: the weights summed in the compute dtype, 1 where
    they cancel. Their sum as Python floats is another number: 0.7 - 0.4 is 0.29999998 in float32
    and 0.2988 in bfloat16, against 0.3 (the last bit of every entry, or 0.4% in a bf16 recipe)."""
    total = w.sum(dim=0)
    total[total.abs() < 1e-8] = 1
    return total


def _combine_chunk(weighted: torch.Tensor, w: torch.Tensor, params: Params,
                   divisor: torch.Tensor | None) -> torch.Tensor:
    """The merged task vector of a chunk of entries from its weighted task vectors (one row each,
    overwritten): with TIES' consensus (`divisor` None) the rows that agree with the elected sign,
    averaged over their weights where `normalize` is set; else their sum, over `divisor`."""
    if divisor is None:
        agree = weighted.sign().eq_(elect_sign(weighted))  # 1.0 where an entry has the elected sign
        mixed = weighted.mul_(agree).sum(dim=0)
        divisor = agree.mul_(w).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
    if params["normalize"]:
        mixed = mixed / divisor
    if params["lambda"] != 1:
        mixed = mixed * params["lambda"]
    return mixed


# The sparsifiers' `work_copies`, float32 copies of the largest tensor alive while they merge it, as
# (a, b) for a·T + b with T endpoints, beyond the stored task vectors: each task vector formed whole only
# while it is trimmed (`task_vectors.TaskVector`), then a chunk at a time; the trims' masks (TIES, DARE and
# breadcrumbs keep a boolean mask per task vector, a quarter of a copy: `Trimmed`); the trim's temporaries;
# the base and the output. The sign election and the weighted sums run a chunk at a time and add little.
# Breadcrumbs ranks each task vector's magnitudes (a copy more); DELLA keeps its dropped and rescaled copies
# (divided by per-entry probabilities); SCE takes its task vectors formed and keeps its stack, per-entry
# variance and selection. Peaks measured on a 4096 × 2048 tensor with 2, 3, 4, 6 and 8 endpoints (density
# 0.4; the base's float32 copy included, the stored bf16 task vectors not), at most: ties 4.7 / 5.0 / 5.2 /
# 5.7 / 6.2, dare_ties 2.5 / 2.8 / 3.1 / 3.6 / 4.1, breadcrumbs 6.8 / 7.0 / 7.3 / 7.8 / 8.3, della 8.0 / 9.0 /
# 10.0 / 12.0 / 14.0, sce 12.0 / 17.0 / 22.0 / 32.0 / 42.0 (TIES with formed task vectors and trimmed
# copies, as it kept them before: 6.5 / 8.5 / 10.5 / 14.5 / 18.5)
TRIMMED_COPIES = (0.25, 4.5)


@register_method("ties", streams=True, keeps_unchanged=True, work_copies=TRIMMED_COPIES,
                 hyperparameters=[DENSITY, LAMBDA, H("normalize", True, searchable=False), RESCALE_L1, INT8_MASK])
def ties(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """TIES: trim by magnitude per tensor, elect signs, average the agreeing entries."""
    return generalized_task_arithmetic(base, deltas, weights, params, sparsify=magnitude_trim(params), consensus=True)


_DARE_PARAMS = [DENSITY, LAMBDA, WEIGHT_NORMALIZE, RESCALE, SEED, INT8_MASK]
DROPPED_COPIES = (0.25, 2.25)


@register_method("dare_linear", streams=True, hyperparameters=_DARE_PARAMS, keeps_unchanged=True,
                 work_copies=DROPPED_COPIES)
def dare_linear(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """DARE: drop entries at random, rescale survivors, then task arithmetic."""
    return generalized_task_arithmetic(base, deltas, weights, params, sparsify=dare_drop(params, name),
                                       consensus=False)


@register_method("dare_ties", streams=True, hyperparameters=_DARE_PARAMS, keeps_unchanged=True,
                 work_copies=DROPPED_COPIES)
def dare_ties(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """DARE drops and rescaling, then TIES sign election."""
    return generalized_task_arithmetic(base, deltas, weights, params, sparsify=dare_drop(params, name),
                                       consensus=True)


SLERP_DOT_THRESHOLD = 0.9995


@register_method("slerp", hyperparameters=[H("t", 0.5, 0.0, 1.0, required=True)], n_models=(1, 1),
                 on_models=True)
def slerp(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Spherical interpolation from the base (t=0) to the other model (t=1), per tensor."""
    t = params["t"]
    v0, v1 = base, base + deltas[0]
    dot = float((v0 / (v0.norm() + 1e-8) * (v1 / (v1.norm() + 1e-8))).sum())
    if abs(dot) > SLERP_DOT_THRESHOLD:  # nearly colinear: the sine formula is unstable
        return (1 - t) * v0 + t * v1
    theta = math.acos(dot)
    s0 = math.sin((1 - t) * theta) / math.sin(theta)
    s1 = math.sin(t * theta) / math.sin(theta)
    return s0 * v0 + s1 * v1
