"""Pairwise matchers: weight matching, activation matching and MuDSC.

All three are the same coordinate descent over permutation units with a different similarity:
raw weight products (Git Re-Basin), activation correlations (fixed, so one sweep), or MuDSC's
S = f * S_weight + (1 - f) * S_activation (Pearson in both spaces). A unit's permutation is
replaced only when it strictly raises the objective, so models that are already aligned come
back with identity permutations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from evo_merge.align.assign import assign, score_of
from evo_merge.align.features import activation_correlations, group_rows, pearson_rows, weight_products
from evo_merge.align.spec import Perms, PermSpec, State, identity

Similarity = Callable[[str, Perms], np.ndarray]


def coordinate_descent(
    spec: PermSpec,
    sizes: dict[str, int],
    similarity: Similarity,
    *,
    seed: int = 0,
    max_sweeps: int = 100,
    tol: float = 1e-6,
) -> Perms:
    """The permutations of the second model: units in random order, each set to its best structured
    assignment, until no unit improves its score by more than `tol` (relative)."""
    perms = identity(sizes)
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        improved = False
        for u in rng.permutation(len(spec.units)):
            unit = spec.units[u]
            scores = {g: similarity(g, perms) for g in unit}
            new = assign(spec, unit, scores)
            old_value = sum(score_of(scores[g], perms[g]) for g in unit)
            new_value = sum(score_of(scores[g], new[g]) for g in unit)
            if new_value > old_value + tol * max(1.0, abs(old_value)):
                perms.update(new)
                improved = True
        if not improved:
            break
    return perms


def weight_matching(spec: PermSpec, ref: State, other: State, *, seed: int = 0) -> Perms:
    """Git Re-Basin weight matching of split state `other` onto split state `ref`."""
    sizes = spec.sizes(ref)
    ref_rows = {g: group_rows(spec, g, ref) for g in sizes}
    return coordinate_descent(spec, sizes, lambda g, p: weight_products(spec, g, ref_rows[g], other, p), seed=seed)


def _cross(corr: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    return {g: corr[g][: sizes[g], sizes[g] :] for g in sizes}


def activation_matching(
    spec: PermSpec, ref: nn.Module, other: nn.Module, data: torch.Tensor, *, seed: int = 0
) -> Perms:
    """Match units by the correlation of their activations on `data`."""
    sizes = spec.sizes(spec.split(ref.state_dict()))
    cross = _cross(activation_correlations([ref, other], spec, data), sizes)
    return coordinate_descent(spec, sizes, lambda g, p: cross[g], seed=seed)


def mudsc_similarity(
    spec: PermSpec, ref: nn.Module, other: nn.Module, data: torch.Tensor, f: float
) -> tuple[dict[str, int], Similarity]:
    """MuDSC's dual-space similarity for `other` onto `ref` (weight part depends on perms)."""
    ref_state, other_state = spec.split(ref.state_dict()), spec.split(other.state_dict())
    sizes = spec.sizes(ref_state)
    cross = _cross(activation_correlations([ref, other], spec, data), sizes) if f < 1 else {}
    ref_rows = {g: group_rows(spec, g, ref_state) for g in sizes} if f > 0 else {}

    def similarity(g: str, perms: Perms) -> np.ndarray:
        s_w = pearson_rows(ref_rows[g], group_rows(spec, g, other_state, perms)) if f > 0 else 0.0
        return f * s_w + (1 - f) * cross[g] if f < 1 else s_w

    return sizes, similarity


def mudsc_matching(
    spec: PermSpec, ref: nn.Module, other: nn.Module, data: torch.Tensor, f: float = 0.5, *, seed: int = 0
) -> Perms:
    """MuDSC alignment (assignment form) for balance factor `f` in [0, 1]."""
    sizes, similarity = mudsc_similarity(spec, ref, other, data, f)
    return coordinate_descent(spec, sizes, similarity, seed=seed)
