"""The multidimensional 2PL, written once: P(correct | θ, item i) = σ(α_iᵀθ − β_i).

Fitting, ability estimation, prediction and synthetic data all call these, so a change of
parameterisation cannot make one of them disagree with the others.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from scipy.special import expit

Array = TypeVar("Array")  # numpy arrays, or torch tensors in the torch backend's loss


def logit_2pl(theta: Array, alpha: Array, beta: Array) -> Array:
    """α_iᵀθ_s − β_i for abilities theta (S, D) and items alpha (n, D), beta (n,): (S, n)."""
    return theta @ alpha.T - beta


def prob_2pl(theta: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """P(correct) (S, n), computed without overflow for large logits."""
    return expit(logit_2pl(theta, alpha, beta))
