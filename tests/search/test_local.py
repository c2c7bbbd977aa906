"""The local evaluator's check for non-finite merged weights."""

import torch
from torch import nn

from evo_merge.search.local import first_non_finite


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).to(dtype)


def test_finite_weights_pass():
    assert first_non_finite(_model(torch.bfloat16)) is None


def test_the_first_parameter_with_a_nan_or_an_infinity_is_named():
    model = _model(torch.bfloat16)
    with torch.no_grad():
        model[1].weight[2, 3] = float("nan")
        model[1].bias[0] = float("inf")
    assert first_non_finite(model) == "1.weight"
    with torch.no_grad():
        model[1].weight[2, 3] = 0.0
    assert first_non_finite(model) == "1.bias"


def test_a_finite_tensor_whose_sum_overflows_is_not_flagged():
    model = _model(torch.float16)
    with torch.no_grad():
        model[0].weight.fill_(60000.0)  # float16 max is 65504: the sum overflows, no entry does
    assert not torch.isfinite(model[0].weight.sum()) and first_non_finite(model) is None
