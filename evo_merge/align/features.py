"""What the matchers compare: weight rows of a group's units, and activations on data.

Weight features of unit i of group g: row i of every tensor the group permutes, with that axis
moved first and the rest flattened (other groups' current permutations applied). Activations
are read through forward hooks named in the spec and correlated over a data sample.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from evo_merge.align.spec import Perms, PermSpec, State, permute_tensor
from evo_merge.errors import UserError
from evo_merge.weights.arch import hf_model_type

_HOOK = re.compile(r"^(?P<module>[^:\[]+)(?::(?P<port>in|out))?(?:\[(?P<start>\d+):(?P<stop>\d+)\])?$")


def rows(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """`tensor` as (units along `axis`, everything else), in float32 (fast enough, and the
    assignment only needs the order of scores)."""
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1).float()


def group_rows(
    spec: PermSpec, group: str, state: Mapping[str, torch.Tensor], perms: Perms | None = None
) -> torch.Tensor:
    """The weight features of every unit of `group` (n x D), other groups permuted by `perms`."""
    parts = []
    for param, axis in spec.index[group]:
        tensor = state[param]
        if perms is not None:
            tensor = permute_tensor(spec, param, tensor, perms, skip_axis=axis)
        parts.append(rows(tensor, axis))
    return torch.cat(parts, dim=1)


def weight_products(spec: PermSpec, group: str, ref_rows: torch.Tensor, other: State, perms: Perms) -> np.ndarray:
    """Git Re-Basin's C = sum_(param, axis) A(axis->0) . pi(B)(axis->0)^T for one group
    (`ref_rows`: the reference model's `group_rows`, computed once)."""
    return (ref_rows @ group_rows(spec, group, other, perms).T).double().numpy()


def pearson_rows(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Pearson correlation between every row of x and every row of y."""
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (x @ y.T).double().numpy()


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of a plain net on inputs, or of an HF causal LM on token ids."""
    if hf_model_type(model) is not None:
        return model(input_ids=x).logits
    return model(x)


def _channels(tensor: torch.Tensor, start: int | None, stop: int | None) -> torch.Tensor:
    if isinstance(tensor, (tuple, list)):
        tensor = tensor[0]
    axis = 1 if tensor.ndim == 4 else tensor.ndim - 1
    if start is not None:
        tensor = tensor.narrow(axis, start, stop - start)
    return tensor.movedim(axis, -1).reshape(-1, tensor.shape[axis]).double()


def _register(model: nn.Module, spec: PermSpec, store: dict[str, list[torch.Tensor]]) -> list:
    handles = []
    for group, opts in spec.groups.items():
        if group not in spec.index:
            continue
        if not opts.hooks:
            raise UserError(f"group {group} has no activation hooks in the permutation spec")
        for hook in opts.hooks:
            match = _HOOK.match(hook)
            if match is None:
                raise UserError(f"group {group}: bad hook {hook!r} (want module, module:in or module[a:b])")
            try:
                module = model.get_submodule(match["module"])
            except AttributeError:
                raise UserError(f"group {group}: hook module {match['module']} is not in the model") from None
            start = int(match["start"]) if match["start"] else None
            stop = int(match["stop"]) if match["stop"] else None

            def fn(_m, inputs, output, group=group, port=match["port"], start=start, stop=stop):
                store.setdefault(group, []).append(_channels(inputs[0] if port == "in" else output, start, stop))

            handles.append(module.register_forward_hook(fn))
    return handles


@torch.no_grad()
def activation_correlations(
    models: Sequence[nn.Module], spec: PermSpec, data: torch.Tensor, batch: int = 256
) -> dict[str, np.ndarray]:
    """Per group, the Pearson correlation of all units of all models ((M n) x (M n)), the models
    run in eval mode (`evaluated`)."""
    with evaluated(models):
        return _correlations(models, spec, data, batch)


@contextmanager
def evaluated(models: Sequence[nn.Module]) -> Iterator[None]:
    """The models in eval mode while inside, each given back in its own mode: in train mode the
    matching read batch statistics and dropped units, and every forward moved the caller's
    BatchNorm running statistics (which a state dict taken without a copy then carried)."""
    # each part's own mode: a model in train mode with a frozen (eval-mode) norm is given back so
    modes = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _correlations(models: Sequence[nn.Module], spec: PermSpec, data: torch.Tensor, batch: int) -> dict[str, np.ndarray]:
    sums: dict[str, torch.Tensor] = {}
    outer: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    for start in range(0, len(data), batch):
        x = data[start : start + batch]
        per_model = []
        for model in models:
            store: dict[str, list[torch.Tensor]] = {}
            handles = _register(model, spec, store)
            try:
                forward(model, x)
            finally:
                for h in handles:
                    h.remove()
            per_model.append({g: torch.cat(v) for g, v in store.items()})
        for g in per_model[0]:
            z = torch.cat([acts[g] for acts in per_model], dim=1)
            sums[g] = sums.get(g, 0) + z.sum(0)
            outer[g] = outer.get(g, 0) + z.T @ z
            count[g] = count.get(g, 0) + len(z)
    return {g: moments_correlation(sums[g], outer[g], count[g]) for g in sums}


def moments_correlation(total: torch.Tensor, outer: torch.Tensor, count: int) -> np.ndarray:
    """Pearson correlation between the columns of rows known only by their sum `total`, the sum of
    their outer products `outer` and their `count` (activations gathered a batch at a time)."""
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    std = cov.diagonal().clamp_min(1e-12).sqrt()
    return (cov / torch.outer(std, std)).numpy()
