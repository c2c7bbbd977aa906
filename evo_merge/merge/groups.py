"""Endpoint weights that vary by group of blocks, written as recipe settings mergekit reads.

A `blocks:N` genome holds, per endpoint, one weight for the tensors outside any block
(embeddings, final norm, LM head) and one per group of N consecutive blocks. It is exported as
`{filter, value}` conditions, one per block, then an unfiltered catch-all for the rest. A filter
selects a value with no arithmetic, so the file merge gets exactly the weight the search used.
A gradient (anchors interpolated over the layers) would not do: tensors outside the blocks sit
at t = 0 and would share the first block's weight, and an anchor is read back as
`(1 - f) * a + f * b`, which is not always `b` bit for bit once `f` is rounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from evo_merge.merge import layers
from evo_merge.merge.settings import evaluate


def n_groups(n_layers: int, block_size: int) -> int:
    """Weights per endpoint: one outside the blocks, one per started group of `block_size` blocks."""
    return 1 + -(-n_layers // block_size)


def group_setting(names: Iterable[str], block_size: int, values: Sequence[float]) -> list[dict[str, Any]]:
    """One endpoint's `weight` setting: `values[0]` outside the blocks, `values[1 + g]` in group g.

    Each block is named by its own prefix (`model.layers.3.`): a filter is a substring, and the
    trailing dot keeps block 1 from matching block 11."""
    names = list(names)
    blocks = sorted({(p.index, p.stem) for p in map(layers.parse, names) if p is not None})
    expected = n_groups(layers.count_layers(names), block_size)
    if len(values) != expected:
        raise ValueError(f"expected {expected} group weights for blocks:{block_size}, got {len(values)}")
    conditions = [{"filter": f"{stem}.{index}.", "value": values[1 + index // block_size]} for index, stem in blocks]
    return [*conditions, {"value": values[0]}]


def tensor_weights(settings: Sequence[Any], names: Iterable[str]) -> Mapping[str, tuple[float, ...]]:
    """Each tensor's endpoint weights under per-endpoint `weight` settings, read by the recipe's
    own rule (`settings.evaluate`): the in-place merge then uses the weights the file merge of the
    exported recipe will use, by construction. The settings are filters over plain values, so the
    layer position (0 here) plays no part."""
    return {name: tuple(float(evaluate(setting, name, 0.0)) for setting in settings) for name in names}
