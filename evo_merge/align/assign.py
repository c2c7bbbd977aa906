"""Structured linear assignment: the one solver every matcher calls.

For a plain group it is `scipy.optimize.linear_sum_assignment`. For a block-structured unit
(attention heads, GroupNorm groups; tied groups share one block order) it is the two-level
assignment: solve every block pair inside, then assign blocks to blocks by their summed
matched score.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from evo_merge.align.spec import Perms, PermSpec


def lsa(score: np.ndarray) -> np.ndarray:
    """col[i]: the column matched to row i, maximising the total score."""
    _, col = linear_sum_assignment(score, maximize=True)
    return col


def score_of(score: np.ndarray, perm: np.ndarray) -> float:
    return float(score[np.arange(len(perm)), perm].sum())


def assign(spec: PermSpec, unit: list[str], scores: Mapping[str, np.ndarray]) -> Perms:
    """The structured permutation(s) of one unit maximising sum_g <scores[g], P_g>."""
    blocks = spec.groups[unit[0]].blocks
    if blocks == 1:
        return {g: lsa(scores[g]) for g in unit}
    block_score = np.zeros((blocks, blocks))
    inner: dict[tuple[str, int, int], np.ndarray] = {}
    for g in unit:
        size = len(scores[g]) // blocks
        for a in range(blocks):
            for b in range(blocks):
                sub = scores[g][a * size : (a + 1) * size, b * size : (b + 1) * size]
                col = lsa(sub) if spec.groups[g].within else np.arange(size)
                inner[g, a, b] = col
                block_score[a, b] += score_of(sub, col)
    order = lsa(block_score)
    out = {}
    for g in unit:
        size = len(scores[g]) // blocks
        out[g] = np.concatenate([order[a] * size + inner[g, a, order[a]] for a in range(blocks)])
    return out
