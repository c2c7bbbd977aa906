"""Per-entry selection merges from mergekit's set: Model Stock, NearSwap, Arcee Fusion, passthrough.

Each follows mergekit's formula; none of them uses the model weights except where noted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evo_merge.merge.registry import Hyperparameter as H
from evo_merge.merge.registry import Params, register_method


@register_method("model_stock", uses_weights=False, n_models=(2, None), on_models=True, keeps_unchanged=True,
                 hyperparameters=[
    H("filter_wise", False, searchable=False, help="one interpolation ratio per row, not per tensor"),
])
def model_stock(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Model Stock: move from the base towards the models' average by t = N cos / (1 + (N-1) cos),
    with cos the mean pairwise cosine of the task vectors (per row when filter_wise)."""
    shape = base.shape
    if params["filter_wise"]:
        offsets = [d.unsqueeze(0) if d.dim() == 1 else d for d in deltas]
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
    else:
        offsets = [d.reshape(-1) for d in deltas]
        w0 = base.reshape(-1)
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(offsets)
    denominator = 1 + (n - 1) * cos
    # opposed task vectors (cos -1 for two models, a mean of -1/2 for three) leave no finite ratio:
    # the base is kept there, as mergekit keeps it
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))
    average = sum(w0 + d for d in offsets) / n
    return (t * average + (1 - t) * w0).reshape(shape)


NEARSWAP_FLOOR = 1e-6  # mergekit's floor on an entry's distance (mergekit/merge_methods/nearswap.py)


@register_method("nearswap", uses_weights=False, n_models=(1, 1), on_models=True, keeps_unchanged=True,
                 hyperparameters=[
    H("t", 0.001, 0.0, None, required=True, search_range=(0.0001, 0.01),
      help="distance below which entries take the other model's value (required in recipes)"),
])
def nearswap(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """NearSwap: take the other model's entry where it is within t of the base's, and blend
    (weight t / |difference|) elsewhere."""
    other = base + deltas[0]
    # mergekit 0.1's weight, the distance floored at NEARSWAP_FLOOR (below a t of 1e-6 entries closer
    # than that blend); an entry the model left as the base stays the base's bits (`keeps_unchanged`)
    weight = (params["t"] / deltas[0].abs().clamp(min=NEARSWAP_FLOOR)).clamp(min=0, max=1)
    return torch.where(deltas[0] == 0, base, weight * other + (1 - weight) * base)


def fusion_quantiles(scores: torch.Tensor, qs: list[float]) -> list[torch.Tensor]:
    """Quantiles as mergekit's Arcee Fusion takes them: index floor(q (n - 1)) of the sorted values.

    mergekit subsamples 1e6 random entries of larger tensors; here every entry is used."""
    ordered = torch.sort(scores.reshape(-1)).values
    return [ordered[int(q * (ordered.numel() - 1))] for q in qs]


@register_method("arcee_fusion", uses_weights=False, n_models=(1, 1), on_models=True, keeps_unchanged=True)
def arcee_fusion(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Arcee Fusion: keep the changes whose importance (|delta| times the row's softmax KL
    divergence) exceeds median + 1.5 IQR; drop the rest."""
    other = base + deltas[0]
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    kl = torch.sum(p * torch.log(p / q), dim=-1)
    scores = deltas[0].abs() * kl.unsqueeze(-1)
    median, q1, q3 = fusion_quantiles(scores, [0.5, 0.25, 0.75])
    mask = (scores >= median + 1.5 * (q3 - q1)).float()
    return base + deltas[0] * mask


@register_method("passthrough", uses_weights=False, n_models=(0, 0), base="first", hyperparameters=[
    H("scale", 1.0, None, None, searchable=False, help="multiply the tensor by this"),
])
def passthrough(base, deltas, weights, params: Params, name: str) -> torch.Tensor:
    """Passthrough: one model's tensor, optionally scaled (used with slices to stack layers)."""
    return base * params["scale"] if params["scale"] != 1 else base
