"""REPAIR and BatchNorm reset: undo the variance collapse of averaged networks.

Averaging two aligned networks shrinks the spread of hidden activations. With BatchNorm, the
fix is to recompute its running statistics on data. Without it, REPAIR rescales each hidden
layer's output channels so their mean and standard deviation equal the (weighted) average of
the endpoints' statistics, folding the correction into that layer's weight and bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evo_merge.align.features import forward


@torch.no_grad()
def reset_batchnorm(model: nn.Module, data: torch.Tensor, batch: int = 256) -> bool:
    """Recompute every BatchNorm's running statistics on `data`, the whole sample's: each norm's
    inputs (as the model in train mode gives them, batch by batch) summed over every row, so a
    short last batch weighs by its rows and the spread between batches counts (torch's cumulative
    average, `momentum=None`, averaged each batch's mean and variance alike). The model is left in
    eval mode, as the statistics are meant to be used. False if it has no BatchNorm."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        model.eval()
        return False
    sums: dict[nn.Module, list] = {}

    def count(norm: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1).double()  # channels x every other entry
        acc = sums.setdefault(norm, [0, 0, 0])
        acc[0], acc[1], acc[2] = acc[0] + x.sum(1), acc[1] + (x * x).sum(1), acc[2] + x.shape[1]

    handles = [norm.register_forward_pre_hook(count) for norm in norms]
    model.train()
    try:
        for start in range(0, len(data), batch):
            forward(model, data[start : start + batch])
    finally:
        for handle in handles:
            handle.remove()
    for norm in norms:
        total, squares, n = sums[norm]
        mean = total / n
        variance = (squares / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))  # unbiased, as torch keeps it
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance)
    model.eval()
    return True


@torch.no_grad()
def _channel_stats(model: nn.Module, names: Sequence[str], data: torch.Tensor, batch: int = 256) -> dict:
    sums: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def fn(_m, _inputs, output):
            z = output.movedim(1, -1).reshape(-1, output.shape[1]).double() if output.ndim == 4 else output.double()
            z = z.reshape(-1, z.shape[-1])
            acc = sums.setdefault(name, [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + z.sum(0), acc[1] + (z * z).sum(0), acc[2] + len(z)

        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for start in range(0, len(data), batch):
            forward(model, data[start : start + batch])
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (s, sq, n) in sums.items():
        mean = s / n
        out[name] = (mean, (sq / n - mean * mean).clamp_min(0).sqrt())
    return out


@torch.no_grad()
def repair(
    merged: nn.Module,
    endpoints: Sequence[nn.Module],
    data: torch.Tensor,
    weights: Sequence[float] | None = None,
    modules: Sequence[str] | None = None,
) -> nn.Module:
    """Reset BatchNorm statistics, or REPAIR `modules` (default: every Linear/Conv2d but the
    last, i.e. the hidden layers) towards the endpoints' weighted statistics. In place."""
    if reset_batchnorm(merged, data):
        return merged
    if modules is None:
        layers = [n for n, m in merged.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        modules = layers[:-1]
    weights = list(weights) if weights is not None else [1.0 / len(endpoints)] * len(endpoints)
    stats = [_channel_stats(model, modules, data) for model in endpoints]
    for name in modules:
        target_mean = sum(w * s[name][0] for w, s in zip(weights, stats))
        target_std = sum(w * s[name][1] for w, s in zip(weights, stats))
        mean, std = _channel_stats(merged, [name], data)[name]
        scale = target_std / std.clamp_min(1e-8)
        layer = merged.get_submodule(name)
        shape = (-1,) + (1,) * (layer.weight.ndim - 1)
        layer.weight.mul_(scale.view(shape).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(((layer.bias.double() - mean) * scale + target_mean).to(layer.bias.dtype))
    return merged
