"""Sparsifying task-vector methods from mergekit's set: Model Breadcrumbs, DELLA and SCE.

Breadcrumbs and SCE are deterministic and give mergekit's tensors. DELLA drops entries at random
like DARE and, like DARE here, draws from a generator seeded per (recipe seed, tensor, model), so
a recipe always rebuilds the same weights whatever the tensor order; mergekit draws from torch's
global generator instead, so its DELLA and DARE outputs are one sample among many, not ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evo_merge.errors import UserError
from evo_merge.merge.methods import (
    DENSITY,
    INT8_MASK,
    LAMBDA,
    RESCALE_L1,
    SEED,
    WEIGHT_NORMALIZE,
    Sparsifier,
    Trimmed,
    elect_sign,
    generalized_task_arithmetic,
    masked,
    tensor_seed,
    top_mask,
)
from evo_merge.merge.registry import Hyperparameter as H
from evo_merge.merge.registry import Params, register_method
from evo_merge.merge.task_vectors import Delta, TaskVector, zeros

GAMMA = H("gamma", 0.01, 0.0, 1.0, per_model=True, search_range=(0.0, 0.05),
          help="Breadcrumbs: fraction of the largest-magnitude entries dropped as outliers")
EPSILON = H("epsilon", 0.15, 0.0, 1.0, per_model=True, searchable=False,
            help="DELLA: keep probabilities range over density +/- epsilon by magnitude rank")
DELLA_DENSITY = H("density", 1.0, 0.0, 1.0, per_model=True, search_range=(0.2, 0.8),
                  help="expected fraction of each task vector kept")
DELLA_RESCALE = H("rescale", True, searchable=False, help="divide each survivor by its keep probability")


def outlier_trim(params: Params) -> Sparsifier:
    """Breadcrumbs: drop the `gamma` largest and then the smallest entries to keep `density`
    (fewer outliers when both together would leave less than `density`), as mergekit 0.1.5."""
    def trim(delta: TaskVector, t: int) -> Delta | Trimmed:
        density = params["density"][t]
        if density >= 1:
            return delta
        full = delta.whole()
        n = full.numel()
        n_top = int(params["gamma"][t] * n)
        n_bot = n - int(density * n) - n_top
        if n_bot < 0:
            n_top, n_bot = n_top + n_bot, 0
        return masked(delta, full, _ranked_between(full.abs().flatten().float(), n_bot, n - n_top).view_as(full),
                      params["rescale"])
    return trim


def _ranked_between(magnitudes: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Boolean mask of the entries at ranks start to stop - 1 of a stable ascending sort of flat
    `magnitudes`: tied magnitudes (many, in bfloat16) are ranked by position, the same entries on
    every device (an unstable sort breaks ties one way on a CPU and another on a GPU). Those are
    the n - start largest less the n - stop largest, where of tied entries the later ones rank
    higher: `top_mask` of the reversed tensor. Two cuts instead of the sort: 0.29 s against 1.70 s
    for 11.5M entries on one CPU thread."""
    n = magnitudes.numel()
    if start >= n:
        return torch.zeros_like(magnitudes, dtype=torch.bool)
    reversed_ = magnitudes.flip(0)
    mask = top_mask(reversed_, n - start)
    if stop < n:
        mask &= ~top_mask(reversed_, n - stop)
    return mask.flip(0)


def della_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """Per row, keep probabilities rising linearly with magnitude rank from density - epsilon to
    density + epsilon (mergekit's MagPrune: ranks within each row; a vector is one row). Tied
    magnitudes are ranked by position, as on every device (`outlier_trim`)."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    order = rows.abs().argsort(dim=1, stable=True)  # each entry's rank scattered back: one sort, not two
    positions = torch.arange(rows.shape[1], dtype=torch.float32, device=rows.device).expand(rows.shape[0], -1)
    ranks = torch.empty(rows.shape, dtype=torch.float32, device=rows.device).scatter_(1, order, positions)
    span = max(rows.shape[1] - 1, 1)
    return ((density - epsilon) + ranks / span * 2 * epsilon).reshape(delta.shape)


def della_band(weights: Sequence[float], params: Params) -> str | None:
    """DELLA's keep probabilities, density - epsilon to density + epsilon, must lie in (0, 1) for
    every endpoint it drops from (0 < density < 1): the method's refusal (`MergeMethod.check`), so
    that a recipe's plan and a campaign file name it before any merge work."""
    return next(filter(None, map(_band_refusal, params["density"], params["epsilon"])), None)


def _band_refusal(density: float, epsilon: float) -> str | None:
    """Why density +/- epsilon leaves (0, 1), for an endpoint DELLA drops from; None where it does not."""
    if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
        return (f"epsilon {epsilon:g} must keep density {density:g} +/- epsilon in (0, 1) "
                "(0 < density - epsilon and density + epsilon < 1)")
    return None


def della_drop(params: Params, name: str) -> Sparsifier:
    """DELLA: keep each entry with its rank-based probability p (seeded like DARE), then divide
    survivors by p when `rescale` is set, so each entry's expectation is its undropped value."""
    def drop(vector: TaskVector, t: int) -> Delta:
        density, epsilon = params["density"][t], params["epsilon"][t]
        if density >= 1:
            return vector
        if density <= 0:
            return zeros(vector)
        delta = vector.whole()  # its drops and rescaling are kept as a copy: divided by per-entry probabilities
        if why := _band_refusal(density, epsilon):  # (the method's check refuses it first, in a plan or a merger)
            raise UserError(f"tensor {name}: {why}")
        probs = della_probabilities(delta, density, epsilon)
        gen = torch.Generator(device=delta.device).manual_seed(tensor_seed(params["seed"], name, t))
        keep = torch.rand(delta.shape, generator=gen, device=delta.device) < probs
        kept = delta * keep
        return kept / probs.to(delta.dtype) if params["rescale"] else kept
    return drop


_BREADCRUMBS = [DENSITY, GAMMA, LAMBDA, WEIGHT_NORMALIZE, RESCALE_L1, INT8_MASK]
# float32 copies kept while merging a tensor (`register_method`'s work_copies; measured: the comment above
# `methods.ties`): breadcrumbs ranks each task vector's magnitudes, DELLA keeps its dropped and rescaled copies
RANKED_COPIES = (0.25, 6.5)
DELLA_COPIES = (1, 6.5)


@register_method("breadcrumbs", streams=True, hyperparameters=_BREADCRUMBS, keeps_unchanged=True,
                 work_copies=RANKED_COPIES)
def breadcrumbs(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Model Breadcrumbs: drop outliers and small entries of each task vector, then add them."""
    return generalized_task_arithmetic(base, deltas, weights, params, sparsify=outlier_trim(params), consensus=False)


@register_method("breadcrumbs_ties", streams=True, hyperparameters=_BREADCRUMBS, keeps_unchanged=True,
                 work_copies=RANKED_COPIES)
def breadcrumbs_ties(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Breadcrumbs trimming followed by TIES sign election."""
    return generalized_task_arithmetic(base, deltas, weights, params, sparsify=outlier_trim(params), consensus=True)


_DELLA = [DELLA_DENSITY, EPSILON, LAMBDA, DELLA_RESCALE, SEED, INT8_MASK]


@register_method("della", streams=True, keeps_unchanged=True, work_copies=DELLA_COPIES,
                 hyperparameters=[*_DELLA, H("normalize", True, searchable=False)], check=della_band)
def della(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """DELLA: magnitude-ranked random drops (MagPrune), rescaling, then TIES sign election."""
    return generalized_task_arithmetic(base, deltas, weights, params, sparsify=della_drop(params, name),
                                       consensus=True)


@register_method("della_linear", streams=True, keeps_unchanged=True, hyperparameters=[*_DELLA, WEIGHT_NORMALIZE],
                 check=della_band, work_copies=DELLA_COPIES)
def della_linear(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """DELLA's drops and rescaling, then task arithmetic."""
    return generalized_task_arithmetic(base, deltas, weights, params, sparsify=della_drop(params, name),
                                       consensus=False)


def sce_mask(stacked: torch.Tensor, topk: float) -> torch.Tensor:
    """SCE select: keep the `topk` fraction of entries (of those that vary) with the largest
    variance across the task vectors; of those tied at the cut (thousands, from bfloat16
    checkpoints), the first by position, on every device (topk picks among them in no set order,
    so a candidate scored on a GPU and its recipe rebuilt on a CPU could differ)."""
    variance = torch.var(stacked, dim=0, unbiased=False)
    k = int(torch.count_nonzero(variance) * topk)
    if k == 0:
        return torch.zeros_like(variance)
    return top_mask(variance.abs().flatten().float(), k).view_as(variance).to(variance.dtype)


@register_method("sce", uses_weights=False, keeps_unchanged=True, work_copies=(5, 2), hyperparameters=[
    H("select_topk", 1.0, 0.0, 1.0, search_range=(0.1, 1.0), help="fraction of high-variance entries kept"),
    INT8_MASK,
])
def sce(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """SCE: select high-variance entries, weight each task by its mean squared delta, erase
    minority signs. The model weights are not used (as in mergekit)."""
    stacked = torch.stack(list(deltas))
    topk = params["select_topk"]
    if topk < 1:
        stacked = stacked * (sce_mask(stacked, topk) if topk > 0 else torch.zeros_like(stacked[0]))
    agree = (stacked.sign() == elect_sign(stacked)).to(stacked.dtype)
    energy = (stacked ** 2).reshape(len(stacked), -1).mean(dim=1)  # per task, as mergekit: a 0-d tensor's too
    total = energy.sum().item()
    task_weights = torch.full_like(energy, 1 / len(energy)) if abs(total) < 1e-6 else energy / total
    erased = task_weights.view(-1, *([1] * (stacked.dim() - 1))) * agree
    return base + (stacked * erased).sum(dim=0) / erased.sum(dim=0).clamp(min=1e-6)
