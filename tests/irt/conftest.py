"""Shared synthetic benchmarks and fitted models (fitted once per session: fitting is the slow part)."""

from __future__ import annotations

import pytest

from evo_merge.irt import IRTModel, validate_responses
from evo_merge.irt.synthetic import make_synthetic_irt, synthetic_abilities



@pytest.fixture(scope="session")
def md2pl():
    """100 subjects x 500 items of a 2-dimensional 2PL: (generator, true theta, long responses)."""
    gen = make_synthetic_irt(500, dims=2, seed=1)
    theta, ids = synthetic_abilities(100, dims=2, seed=2)
    return gen, theta, validate_responses(gen.sample(theta, ids, seed=3))


@pytest.fixture(scope="session")
def torch_model(md2pl):
    return IRTModel.fit(md2pl[2], backend="torch", dims=2, seed=0)


@pytest.fixture(scope="session")
def two_scenarios():
    """80 subjects x 2 scenarios of 100 items, and a torch model fitted on it."""
    gen = make_synthetic_irt(200, dims=2, n_scenarios=2, heterogeneous=True, seed=5)
    theta, ids = synthetic_abilities(80, dims=2, seed=6)
    responses = validate_responses(gen.sample(theta, ids, seed=7))
    return gen, theta, responses, IRTModel.fit(responses, backend="torch", dims=2, seed=0)
