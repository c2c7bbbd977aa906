"""MAP fit of a linear logistic model with a Gaussian prior, batched over subjects (damped Newton).

Used for every ability fit with item parameters fixed: θ of a new subject from its anchors
(p-IRT), the merge coefficients of mp-IRT, the endpoints' θ on all items. The prior keeps the
estimate finite when every observed response is correct (or every one wrong).
"""

from __future__ import annotations

import numpy as np

from evo_merge.irt.twopl import logit_2pl, prob_2pl

MAX_STEP = 3.0  # cap on one Newton step (in parameter norm): keeps far starts from overshooting
HALVINGS = 30  # backtracking: a step is halved until the objective does not decrease


def map_logistic(
    design: np.ndarray,
    offset: np.ndarray,
    responses: np.ndarray,
    prior_mean: np.ndarray,
    prior_precision: np.ndarray,
    max_iter: int = 50,
    tol: float = 1e-8,
) -> np.ndarray:
    """Maximise Σ_i log Bernoulli(y_si | σ(x_i·z_s − c_i)) − ½(z_s − m)ᵀP(z_s − m) for each row s.

    design (n, p), offset (n,), responses (S, n) in [0, 1] with NaN for unobserved,
    prior_mean (p,), prior_precision (p, p). Returns z (S, p).
    """
    responses = np.atleast_2d(responses)
    observed = ~np.isnan(responses)
    kept = observed.any(0)
    if not kept.all():  # an item no row observed adds nothing: drop it (a held-out loss hides half the items)
        design, offset, responses, observed = design[kept], offset[kept], responses[:, kept], observed[:, kept]
    y = np.where(observed, responses, 0.0)
    # each item's xxᵀ, flattened: the Hessians of all rows are then one matrix product
    outer = (design[:, :, None] * design[:, None, :]).reshape(len(design), design.shape[1] ** 2)

    def objective(z: np.ndarray) -> np.ndarray:
        eta = logit_2pl(z, design, offset)
        d = z - prior_mean
        return ((y * eta - np.logaddexp(0.0, eta)) * observed).sum(1) - 0.5 * np.einsum(
            "sp,pq,sq->s", d, prior_precision, d
        )

    z = np.tile(prior_mean.astype(float), (responses.shape[0], 1))
    current = objective(z)
    for _ in range(max_iter):
        prob = prob_2pl(z, design, offset)
        grad = ((y - prob) * observed) @ design - (z - prior_mean) @ prior_precision
        weight = prob * (1.0 - prob) * observed
        hess = (weight @ outer).reshape(-1, *prior_precision.shape) + prior_precision
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, MAX_STEP / np.maximum(norm, 1e-300))
        # Newton alone overshoots where sharp items (large alpha) saturate the curvature:
        # halve each row's step until its objective does not decrease (it is concave)
        for _ in range(HALVINGS):
            trial = objective(z + step)
            todo = trial < current - 1e-12 * np.abs(current)
            if not todo.any():
                break
            step[todo] *= 0.5
        step[todo] = 0.0
        z += step
        current = np.where(todo, current, trial)  # a row's last trial is its new objective, or it did not move
        if np.abs(step).max() < tol:
            break
    return z
