"""Shared small models for the alignment tests (seeded, tiny)."""

from __future__ import annotations

import torch

from evo_merge.weights.nets import build_net

CONFIGS = {
    "mlp": {"arch": "mlp", "in_dim": 20, "hidden": [16, 12, 8], "classes": 5},
    "cnn_bn": {"arch": "cnn", "channels": [8, 8], "norm": "bn", "classes": 5, "side": 8},
    "cnn_gn": {"arch": "cnn", "channels": [8, 8], "norm": "gn", "groups": 4, "classes": 5, "side": 8},
    "resnet": {"arch": "resnet", "width": 8, "hidden": 8, "blocks": 2, "norm": "bn", "classes": 5, "side": 8},
}


def trained_like(config: dict, seed: int) -> torch.nn.Module:
    """A seeded net whose BatchNorm statistics are not the trivial defaults."""
    torch.manual_seed(seed)
    net = build_net(config)
    net.train()
    with torch.no_grad():
        net(torch.randn(32, config.get("in_dim", 64)))
    return net.eval()
