"""Synthetic multidimensional 2PL benchmarks with known parameters.

Ground truth for parameter-recovery checks, the validation demo and the benchmark script:
item parameters are drawn once, then any set of abilities can be answered (and scored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from evo_merge.irt.twopl import prob_2pl


@dataclass(frozen=True)
class SyntheticIRT:
    alpha: np.ndarray  # (items, D)
    beta: np.ndarray  # (items,)
    item_ids: list[str]
    item_scenarios: list[str]

    def prob(self, theta: np.ndarray) -> np.ndarray:
        return prob_2pl(theta, self.alpha, self.beta)

    def sample(self, theta: np.ndarray, subject_ids: list[str], seed: int = 0) -> pd.DataFrame:
        """Binary responses of subjects with abilities theta, as a long table."""
        rng = np.random.default_rng(seed)
        scores = (rng.random((theta.shape[0], self.beta.size)) < self.prob(theta)).astype(float)
        return pd.DataFrame({
            "subject": np.repeat(subject_ids, self.beta.size),
            "item": np.tile(self.item_ids, theta.shape[0]),
            "score": scores.ravel(),
            "scenario": np.tile(self.item_scenarios, theta.shape[0]),
        })


def make_synthetic_irt(
    n_items: int,
    dims: int = 2,
    n_scenarios: int = 1,
    heterogeneous: bool = False,
    clusters: int = 6,
    seed: int = 0,
) -> SyntheticIRT:
    """Item parameters; `heterogeneous` draws items in clusters of distinct difficulty and discrimination."""
    rng = np.random.default_rng(seed)
    scenarios = [f"s{j}" for j in range(n_scenarios)]
    item_scenarios = [scenarios[j * n_scenarios // n_items] for j in range(n_items)]
    if heterogeneous:
        cluster = rng.integers(0, clusters, n_items)
        centre_beta = rng.uniform(-3.0, 3.0, clusters)
        scale = rng.uniform(0.3, 3.0, clusters)
        direction = np.abs(rng.normal(size=(clusters, dims)))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        alpha = (scale[:, None] * direction)[cluster] * rng.uniform(0.8, 1.2, (n_items, 1))
        beta = centre_beta[cluster] + rng.normal(0, 0.3, n_items)
    else:
        alpha = np.abs(rng.normal(0.8, 0.5, (n_items, dims)))
        beta = rng.normal(0.0, 1.0, n_items)
    return SyntheticIRT(alpha, beta, [f"i{j:05d}" for j in range(n_items)], item_scenarios)


def synthetic_abilities(n_subjects: int, dims: int = 2, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_subjects, dims)), [f"m{j:04d}" for j in range(n_subjects)]
