"""Spherical merges from mergekit's set: NuSLERP, Multi-SLERP and the Karcher mean.

They follow mergekit's formulas step for step (same operation order) so that float32 results
agree to rounding. Without a base model NuSLERP and Multi-SLERP interpolate the whole weights
(the plan passes a zero reference); with one, they interpolate the task vectors.
"""

from __future__ import annotations

import torch

from evo_merge.errors import UserError
from evo_merge.merge.registry import Hyperparameter as H
from evo_merge.merge.registry import Params, divides_by_weight_sum, register_method


def nuslerp_pair(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool,
                 eps: float = 1e-8) -> torch.Tensor:
    """SLERP from v0 (t=0) to v1 (t=1) over the flattened tensors, or per row / per column."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = torch.sum(unit(v0) * unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    # colinear by the cosine, as mergekit tests it: opposed vectors have cos -1 exactly in float32,
    # where sin(acos(-1)) is -8.7e-8, not 0, and dividing by it gave entries of 1e5
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@register_method("nuslerp", n_models=(2, 2), base="optional", hyperparameters=[
    H("nuslerp_row_wise", False, searchable=False, help="interpolate each row (else each column)"),
    H("nuslerp_flatten", True, searchable=False, help="interpolate the flattened tensor"),
])
def nuslerp(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """NuSLERP: SLERP between two models at t = w1 / (w0 + w1), relative to the base if given."""
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    return base + nuslerp_pair(t, deltas[0], deltas[1], params["nuslerp_row_wise"], params["nuslerp_flatten"])


@register_method("multislerp", base="optional", check=divides_by_weight_sum("normalize_weights"), hyperparameters=[
    H("normalize_weights", True, searchable=False, help="divide the weights by their sum"),
    H("eps", 1e-8, 0.0, None, searchable=False, help="numerical guard"),
])
def multislerp(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Multi-SLERP: barycentric interpolation on the hypersphere via the tangent space at the
    weighted mean direction, rescaled to the weighted mean norm."""
    if len(deltas) == 1:
        return base + deltas[0]
    eps = params["eps"]
    stacked = torch.stack(list(deltas))
    flat = stacked.view(stacked.shape[0], -1)
    if not bool(flat.any()):
        # a tensor no model changed (LoRA-folded or frozen-layer fine-tunes leave most of them so):
        # there is no direction to interpolate, and the base is what every weighting gives
        return base.clone()
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    if params["normalize_weights"]:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if len(deltas) == 2:
            return base + (stacked[0] * w[0] + stacked[1] * w[1])
        raise UserError(f"tensor {name}: the weighted directions cancel out; multislerp needs other weights")
    mean = mean / mean_norm
    tangent = units - (units * mean).sum(-1, keepdim=True) * mean
    step = (tangent * w.view(-1, 1)).sum(0)
    step_norm = torch.norm(step) + eps
    out = mean * torch.cos(step_norm) + step * (torch.sin(step_norm) / step_norm)
    return base + (out * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])


def karcher_mean(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """The equally weighted Riemannian mean of the directions, scaled by the mean norm."""
    alpha = 1.0 / len(tensors)
    norms = [torch.linalg.norm(t.float()).item() for t in tensors]
    units = [t / torch.linalg.norm(t.float()) if n != 0 else torch.zeros_like(t) for t, n in zip(tensors, norms)]
    valid = [u for u, n in zip(units, norms) if n > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    a = 1.0 / len(valid)
    u = torch.zeros_like(valid[0])
    for v in valid:
        u += a * v
    norm_u = torch.linalg.norm(u.float()).item()
    u = valid[0].clone() if norm_u < tol else u / norm_u
    for _ in range(max_iter):
        step = torch.zeros_like(u)
        for v in valid:
            dot = torch.clamp(torch.dot(u.flatten(), v.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() >= tol:
                step += a * (theta / torch.sin(theta)) * (v - dot * u)
        norm_step = torch.linalg.norm(step.float())
        if norm_step.item() < tol:
            break
        u = torch.cos(norm_step) * u + torch.sin(norm_step) * (step / norm_step)
        u_norm = torch.linalg.norm(u.float())
        if u_norm.item() > tol:
            u = u / u_norm
    return sum(alpha * n for n in norms) * u


@register_method("karcher", uses_weights=False, base="first", on_models=True, threaded=True, hyperparameters=[
    H("max_iter", 10, 1, None, searchable=False, help="iterations of the Karcher mean"),
    H("tol", 1e-5, 0.0, None, searchable=False, help="convergence tolerance"),
])
def karcher(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Karcher mean of the base and the models, equally weighted (mergekit ignores weights)."""
    return karcher_mean([base, *(base + d for d in deltas)], params["max_iter"], params["tol"])
