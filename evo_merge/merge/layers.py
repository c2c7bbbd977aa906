"""Which block a tensor belongs to, read from its name (`model.layers.3.mlp...`, `transformer.h.3...`).

Slices and gradients need layer indices without an architecture table: every transformers
decoder names its blocks `<stem>.<index>.<rest>` under one of a few stems.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from evo_merge.weights.arch import BEFORE_BLOCKS, POSITION_EMBEDDINGS, TOKEN_EMBEDDINGS, module_named

_LAYER = re.compile(r"^(?P<stem>(?:.*\.)?(?:layers|h|blocks|block|layer))\.(?P<index>\d+)\.(?P<rest>.+)$")
_PRE = module_named(TOKEN_EMBEDDINGS | POSITION_EMBEDDINGS | BEFORE_BLOCKS)


@dataclass(frozen=True)
class LayerName:
    stem: str
    index: int
    rest: str

    def at(self, index: int) -> str:
        return f"{self.stem}.{index}.{self.rest}"


def parse(name: str) -> LayerName | None:
    match = _LAYER.match(name)
    return LayerName(match["stem"], int(match["index"]), match["rest"]) if match else None


def count_layers(names: Iterable[str]) -> int:
    """Blocks of the longest stack (one stack in a decoder-only model)."""
    return max(stack_sizes(names).values(), default=0)


def stack_sizes(names: Iterable[str]) -> dict[str, int]:
    """Blocks per stack, by stem: a vision-language checkpoint has two (`model.layers` and
    `visual.blocks`), and a layer's position is taken within its own."""
    sizes: dict[str, int] = {}
    for p in map(parse, names):
        if p is not None:
            sizes[p.stem] = max(sizes.get(p.stem, 0), p.index + 1)
    return sizes


def layer_tensors(names: Iterable[str], index: int) -> list[LayerName]:
    """The tensors of block `index`, in checkpoint order."""
    return [p for p in map(parse, names) if p is not None and p.index == index]


def is_pre_layer(name: str) -> bool:
    """Input embeddings, token and position ones alike, and what they feed before block 0 (BLOOM's
    embedding norm) come before the blocks (mergekit takes them from the first slice: one model's
    position table or embedding norm beside another's tokens would be no model's)."""
    return bool(_PRE.search(name))
