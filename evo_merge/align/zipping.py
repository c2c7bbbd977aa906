"""ZipIt-style zipping of two aligned models (MuDSC's "zip" solver).

Instead of a one-to-one match, the 2n units of a group (both models) are greedily paired by
similarity, pairs inside one model allowed, until n merged units remain. Each merged unit
averages its pair (M, n x 2n); layers reading the group get the merged unit copied back to both
positions (U, 2n x n). Merged tensor = sum over models of the tensor with M on its output axes
and U on its input axis; tensors with no permuted output axis are averaged. This is the
simultaneous (not layer-by-layer) variant: the weight similarity is computed in the aligned
basis, which is why the models must be aligned first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from evo_merge.align.features import activation_correlations, group_rows, pearson_rows
from evo_merge.align.spec import PermSpec, State
from evo_merge.errors import UserError


def greedy_zip(similarity: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair 2n units greedily by decreasing similarity; return M (n x 2n) and U (2n x n)."""
    size = len(similarity)
    upper = np.triu_indices(size, 1)
    used = np.zeros(size, dtype=bool)
    merge = torch.zeros(size // 2, size, dtype=torch.float64)
    k = 0
    for idx in np.argsort(-similarity[upper], kind="stable"):
        i, j = upper[0][idx], upper[1][idx]
        if used[i] or used[j]:
            continue
        used[i] = used[j] = True
        merge[k, i] = merge[k, j] = 0.5
        k += 1
        if k == size // 2:
            break
    return merge, (merge > 0).double().T


def zip_merge(spec: PermSpec, ref: nn.Module, other: nn.Module, data: torch.Tensor, f: float = 0.5) -> State:
    """The zipped state dict of two models that are already aligned (same basis)."""
    states = [spec.split(ref.state_dict()), spec.split(other.state_dict())]
    sizes = spec.sizes(states[0])
    for g in sizes:
        if spec.groups[g].blocks > 1:
            raise UserError(f"zip does not support block-structured group {g}; use MuDSC align")
    corr = activation_correlations([ref, other], spec, data) if f < 1 else {}
    maps = {}
    for g in sizes:
        sim = 0.0
        if f > 0:
            sim = f * pearson_rows(*(2 * [torch.cat([group_rows(spec, g, s) for s in states])]))
        if f < 1:
            sim = sim + (1 - f) * corr[g]
        maps[g] = greedy_zip(np.asarray(sim))
    merged: State = {}
    for name, tensor in states[0].items():
        if not tensor.is_floating_point():
            merged[name] = tensor.clone()
            continue
        in_axis = spec.input_axis(name, tensor.ndim)
        axes = spec.axes[name]
        has_output = any(g is not None and a != in_axis for a, g in enumerate(axes))
        total = 0
        for m, state in enumerate(states):
            out = state[name].double()
            for axis, g in enumerate(axes):
                if g is None:
                    continue
                n = sizes[g]
                merge, unmerge = maps[g]
                mat = unmerge[m * n : (m + 1) * n].T if axis == in_axis else merge[:, m * n : (m + 1) * n]
                moved = out.movedim(axis, 0)
                out = (mat @ moved.reshape(n, -1)).reshape(moved.shape).movedim(0, axis)
            total = total + out
        merged[name] = (total if has_output else total / len(states)).to(tensor.dtype)
    return spec.fuse(merged)
