"""How one recipe setting becomes one value for one tensor (mergekit's rules).

A setting is a scalar; a gradient (list of anchors, interpolated linearly at t in [0, 1], the
tensor's position among the layers of its slice: layer i of n has t = i / (n - 1), a one-layer
slice t = 1, tensors outside the layers t = 0); or a list of `{filter, value}` conditions, the
first whose filter is a substring of the tensor name (or absent, or "*") giving the value.
Lookups fall through levels (source or model, then slice, then the recipe) until one answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MISSING = object()


def evaluate(setting: Any, tensor: str, t: float) -> Any:
    """The setting's value for `tensor` at layer position `t`, or MISSING if no filter matches."""
    if not isinstance(setting, list):
        return setting
    if all(isinstance(v, dict) for v in setting):
        for cond in setting:
            pattern = cond.get("filter")
            if pattern is None or pattern == "*" or pattern in tensor:
                return evaluate(cond["value"], tensor, t)
        return MISSING
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    return setting[int(t * (len(setting) - 1))]  # non-numeric anchors: step, not interpolate


def lookup(key: str, levels: Sequence[Mapping[str, Any]], tensor: str, t: float) -> Any:
    """The first level that sets `key` for this tensor, or MISSING."""
    for level in levels:
        if key in level:
            value = evaluate(level[key], tensor, t)
            if value is not MISSING:
                return value
    return MISSING


def layer_position(index: int | None, n_layers: int) -> float:
    """t of a tensor: its layer's position in its slice (0 outside the layers)."""
    if index is None:
        return 0.0
    return index / (n_layers - 1) if n_layers > 1 else 1.0
