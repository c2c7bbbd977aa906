"""MASS routing: which tasks' subspaces explain an input's hidden state best.

For the hidden state z entering block l*'s MLP, task t's score is the residual of projecting z
onto the span of V_t, the input-space singular vectors task t stores for that MLP's first
weight: s_t = ||z - V_t V_t^T z||. The scores -s are standardised across tasks and turned into
probabilities by a softmax; the tasks above `threshold` are kept (at most `max_tasks`, the
most probable first), and the most probable task alone when none is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, Field

from evo_merge.errors import UserError
from evo_merge.merge.kinds import MASS_SETTINGS, MASS_TOKENS
from evo_merge.weights.arch import HF_ARCHS, mlp_input_pattern

_THRESHOLD, _MAX_TASKS = MASS_SETTINGS["threshold"], MASS_SETTINGS["max_tasks"]


class RoutingConfig(BaseModel):
    """What the router looks at and how many tasks it keeps."""

    layer: int = Field(ge=0, description="block whose MLP input is routed on")
    weight: str = Field(description="that MLP's first weight (whose task subspaces are compared)")
    threshold: float = Field(_THRESHOLD.default, ge=_THRESHOLD.low, le=_THRESHOLD.high, description=_THRESHOLD.help)
    max_tasks: int = Field(_MAX_TASKS.default, ge=_MAX_TASKS.low, description=_MAX_TASKS.help)
    token: Literal[MASS_TOKENS] = Field(MASS_TOKENS[0], description="mean over the input's tokens, or its last token")
    cache_size: int = Field(8, ge=1, description="merged task sets kept in memory")


def routing_weights(names: Sequence[str]) -> dict[int, str]:
    """Block index -> the name of its MLP's first weight, for every block that has one (by the
    first architecture table whose MLP input names the tensors use)."""
    for arch in HF_ARCHS:
        pattern, found = mlp_input_pattern(arch), {}
        for name in names:
            match = pattern.match(name)
            if match:
                layer, rank = int(match["layer"]), arch.mlp_inputs.index(match["proj"])
                if layer not in found or rank < found[layer][0]:
                    found[layer] = (rank, name)
        if found:
            return {layer: name for layer, (_, name) in sorted(found.items())}
    return {}


def routing_config(names: Sequence[str], layer: int | None, **settings) -> RoutingConfig:
    """The routing config for a model with these tensor names; `layer` None: the middle block."""
    weights = routing_weights(names)
    if not weights:
        raise UserError("no MLP input weight (mlp.gate_proj / up_proj / c_fc / fc1 ...) found in the base to route on")
    layers = list(weights)
    if layer is None:
        layer = layers[len(layers) // 2]
    if layer not in weights:
        raise UserError(f"layer {layer} is out of range: the base has MLP blocks {layers[0]}..{layers[-1]}")
    return RoutingConfig(layer=layer, weight=weights[layer], **settings)


def residual_scores(z: torch.Tensor, bases: Sequence[torch.Tensor]) -> torch.Tensor:
    """(batch, tasks) residuals ||z - V V^T z|| for orthonormal-column bases V of shape (d, k)."""
    return torch.stack([torch.linalg.vector_norm(z - (z @ v) @ v.T, dim=-1) for v in bases], dim=-1)


def routing_probabilities(residuals: torch.Tensor) -> torch.Tensor:
    """Softmax over tasks of the standardised negative residuals (population std; equal
    residuals give equal probabilities). Standardised, they do not depend on the residuals' scale:
    two tasks always get 0.88 and 0.12, whether their residuals are 1% or 100x apart."""
    scores = -residuals
    centred = scores - scores.mean(dim=-1, keepdim=True)
    std = scores.std(dim=-1, correction=0, keepdim=True)
    return torch.softmax(torch.where(std > 0, centred / std.clamp_min(1e-12), 0.0), dim=-1)


def select_tasks(probs: torch.Tensor, threshold: float, max_tasks: int) -> list[tuple[int, ...]]:
    """Per row, the sorted indices of the kept tasks."""
    chosen = []
    for row in probs.tolist():
        order = sorted(range(len(row)), key=lambda t: -row[t])
        kept = [t for t in order[:max_tasks] if row[t] > threshold] or order[:1]
        chosen.append(tuple(sorted(kept)))
    return chosen
