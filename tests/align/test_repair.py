"""REPAIR and the BatchNorm reset (`align.repair`): the library's answer to the variance collapse
of averaged networks, measured by scripts/bench_align.py and checked here against statistics
computed by hand."""

import pytest
import torch
from torch import nn

from evo_merge.align.repair import repair, reset_batchnorm


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def hidden_stats(model: nn.Sequential, data: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each hidden Linear's output: per-channel mean and (population) standard deviation."""
    stats, x = [], data
    for layer in model:
        x = layer(x)
        if isinstance(layer, nn.Linear) and layer is not model[-1]:
            stats.append((x.double().mean(0), x.double().std(0, unbiased=False)))
    return stats


@pytest.mark.parametrize("given", [[0.25, 0.75], None])  # None: the endpoints weighed equally
def test_repair_gives_each_hidden_layer_the_endpoints_weighted_statistics(given):
    """...and leaves the output layer as merged (its outputs are the logits, not a hidden layer)."""
    torch.manual_seed(3)
    data = torch.randn(512, 6)
    endpoints = [mlp(1), mlp(2)]
    weights = given or [0.5, 0.5]
    merged = mlp(0)
    with torch.no_grad():
        for name, p in merged.named_parameters():
            p.copy_(sum(w * dict(e.named_parameters())[name] for w, e in zip(weights, endpoints)))
    before = hidden_stats(merged, data)
    head = [p.clone() for p in merged[-1].parameters()]
    repair(merged, endpoints, data, given)
    assert all(torch.equal(p, q) for p, q in zip(merged[-1].parameters(), head))
    targets = [[sum(w * s[i][k] for w, s in zip(weights, (hidden_stats(e, data) for e in endpoints)))
                for k in (0, 1)] for i in range(2)]
    after = hidden_stats(merged, data)
    for (mean, std), (target_mean, target_std) in zip(after, targets):
        assert torch.allclose(mean, target_mean, atol=1e-4) and torch.allclose(std, target_std, atol=1e-4)
    assert not torch.allclose(before[0][1], targets[0][1], atol=1e-2)  # the average had collapsed them


def test_a_network_with_batchnorm_gets_its_statistics_recomputed_on_the_data():
    """The whole sample's statistics, with a short last batch unlike the others (audit 110: torch's
    cumulative average weighed it as much as a full one and left out the spread between batches;
    its running mean was -1.90 where the sample's is -0.98)."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    data = torch.randn(40, 3, 8, 8)
    data[30:] += 3.0  # the last batch of 10 (batches of 30) shifted
    net(data[:2])  # materialise the lazy layer
    conv_out = net[0](data).detach().double()
    assert reset_batchnorm(net, data, batch=30)
    norm = net[1]
    assert torch.allclose(norm.running_mean.double(), conv_out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.running_var.double(), conv_out.var((0, 2, 3), unbiased=True), atol=1e-4)
    assert not net.training
    assert not reset_batchnorm(mlp(0), torch.randn(8, 6))  # no BatchNorm: nothing to reset
