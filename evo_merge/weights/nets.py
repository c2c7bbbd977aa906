"""Small reference networks whose permutation specs are built in (MLP, CNN, residual net).

They are plain torch modules described by a small JSON config (``{"arch": ..., **sizes}``),
so a saved state dict can always be rebuilt and run (activation matching, REPAIR, accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from evo_merge.errors import UserError
from evo_merge.weights.arch import CNN as CNN_TABLE
from evo_merge.weights.arch import MLP as MLP_TABLE
from evo_merge.weights.arch import RESNET as RESNET_TABLE


def _norm(kind: str | None, channels: int, groups: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class MLP(nn.Module):
    """Linear -> ReLU stack; `fcs[-1]` is the classifier head."""

    def __init__(self, in_dim: int = 784, hidden: list[int] = (512,), classes: int = 10) -> None:
        super().__init__()
        dims = [in_dim, *hidden, classes]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.ModuleList(nn.ReLU() for _ in hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for fc, act in zip(self.fcs[:-1], self.act):
            x = act(fc(x))
        return self.fcs[-1](x)


class CNN(nn.Module):
    """Conv3x3 -> norm -> ReLU blocks (2x2 max-pool after each but the last), global average
    pool, linear head. `norm` is "bn", "gn" (GroupNorm with `groups`) or None."""

    def __init__(
        self,
        in_ch: int = 1,
        channels: list[int] = (16, 32),
        classes: int = 10,
        norm: str | None = "bn",
        groups: int = 4,
        side: int = 28,
    ) -> None:
        super().__init__()
        self.side = side
        dims = [in_ch, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(_norm(norm, c, groups) for c in channels)
        self.head = nn.Linear(channels[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.view(len(x), 1, self.side, self.side)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = torch.relu(norm(conv(x)))
            if i < len(self.convs) - 1:
                x = nn.functional.max_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    """x -> relu(x + n2(c2(relu(n1(c1(x))))))."""

    def __init__(self, width: int, hidden: int, norm: str | None, groups: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(width, hidden, 3, padding=1)
        self.n1 = _norm(norm, hidden, groups)
        self.c2 = nn.Conv2d(hidden, width, 3, padding=1)
        self.n2 = _norm(norm, width, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.n2(self.c2(torch.relu(self.n1(self.c1(x))))))


class ResNet(nn.Module):
    """Stem conv, residual blocks on one stream of `width` channels, pooled linear head."""

    def __init__(
        self,
        in_ch: int = 1,
        width: int = 16,
        hidden: int = 16,
        blocks: int = 2,
        classes: int = 10,
        norm: str | None = "bn",
        groups: int = 4,
        side: int = 28,
    ) -> None:
        super().__init__()
        self.side = side
        self.stem = nn.Conv2d(in_ch, width, 3, padding=1)
        self.stem_norm = _norm(norm, width, groups)
        self.blocks = nn.ModuleList(Block(width, hidden, norm, groups) for _ in range(blocks))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.view(len(x), 1, self.side, self.side)
        x = torch.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


_CLASSES = {MLP_TABLE.name: MLP, CNN_TABLE.name: CNN, RESNET_TABLE.name: ResNet}  # the plain tables of weights.arch


def declared_layers(config: Mapping[str, Any]) -> int:
    """How many layers and blocks a config declares (each width its lists give, and `blocks`), each
    holding a weight of its own: a checkpoint of fewer tensors cannot be of this network, which
    `_load_plain` refuses before laying it out (100,000 blocks took 3 GB and over a minute on the
    meta device; audit 117)."""
    blocks = config.get("blocks")
    return sum(len(v) for v in config.values() if isinstance(v, list)) + (blocks if isinstance(blocks, int) else 0)


def build_net(config: Mapping[str, Any], source: str = "config.json") -> nn.Module:
    """Rebuild a reference network from its config (``{"arch": "mlp", "hidden": [...], ...}``);
    errors name `source`, the file the config was read from."""
    kwargs = dict(config)
    arch = kwargs.pop("arch", None)
    if arch not in _CLASSES:
        raise UserError(f"{source}: arch {arch!r} is not one of {tuple(_CLASSES)}")
    try:
        net = _CLASSES[arch](**kwargs).eval()
    except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: torch's "negative dimension"
        raise UserError(f"{source}: bad sizes for arch {arch}: {str(exc).splitlines()[0]}") from None
    net.net_config = dict(config)  # read by the spec builders and written next to the weights
    return net
