"""Shared synthetic benchmarks and fitted models (fitted once per session: fitting is the slow part)."""

from __future__ import annotations

import numpy as np
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


@pytest.fixture
def make_model():
    return _make_model


def _make_model(alpha, beta, responses=None, scenarios=None) -> IRTModel:
    """An IRT model with given item parameters (no fitting), for hand-checkable expectations."""
    alpha = np.asarray(alpha, dtype=float).reshape(len(beta), -1)
    n_items = len(beta)
    responses = np.zeros((4, n_items)) if responses is None else np.asarray(responses, dtype=float)
    scenarios = scenarios or ["all"] * n_items
    return IRTModel(
        item_ids=[f"q{j}" for j in range(n_items)], item_scenarios=scenarios,
        subject_ids=[f"s{j}" for j in range(responses.shape[0])], alpha=alpha, beta=np.asarray(beta, dtype=float),
        theta=np.zeros((responses.shape[0], alpha.shape[1])), responses=responses,
        thresholds={s: 0.5 for s in scenarios}, cv_alpha=alpha[None], cv_beta=np.asarray(beta, dtype=float)[None],
        cv_held=np.ones((1, responses.shape[0]), dtype=bool),
    )
