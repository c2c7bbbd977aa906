"""Estimates pooled over similar recipes, for choosing the final phase's finalists.

A candidate's estimate rests on its own few anchors, and with 2-5 anchors per scenario its error
is large enough that the front of the estimates is as much luck as merit. But a merge's scores
change smoothly with its recipe: candidates with nearby coefficients and hyperparameters (the
search breeds many of them, and the standard merges measured as warm-ups sit among them) answer
like one another, so each one's neighbours carry evidence about it that its own anchors lack.
Per task, a Gaussian process over the recipe's coordinates (`SearchSpace.coordinates`) is
fitted to every candidate's estimate, each weighted by its own standard error as noise (measured
candidates as exact), and the pooled estimate is its posterior mean there. The finalists are
chosen on those (`front.to_measure`); the stored estimates and the scores the picks are chosen
on are untouched.

The kernel's scale, a length per coordinate and an extra noise term for what the recipe does not
explain are fitted by scikit-learn's marginal likelihood from fixed starts, so the same store
gives the same pooled estimates.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from evo_merge.search.candidate import Candidate
from evo_merge.search.space import SearchSpace
from evo_merge.search.store import Evaluation

MEASURED_NOISE = 1e-6  # a measured score's variance: exact, up to the solver's tolerance
MIN_CANDIDATES = 8  # fewer: too few neighbours to learn a length scale from; the estimates stay as they are
FIT_AT_MOST = 500  # the kernel is fitted on at most this many candidates (the fit is cubic); all are pooled


def pooled(evaluations: Sequence[Evaluation], space: SearchSpace, names: Sequence[str]) -> list[Evaluation]:
    """`evaluations` with each estimated one's `estimates` replaced by the pooled estimate per task.
    Where a candidate has no finite standard error for a task (full evaluation, folders from before
    SEs), or there are fewer than `MIN_CANDIDATES`, the estimates stay as they are."""
    usable = all(e.measured is not None or (e.estimate_se is not None and
                                           all(np.isfinite(e.estimate_se.get(n, np.nan)) for n in names))
                 for e in evaluations)
    if len(evaluations) < MIN_CANDIDATES or not usable or all(e.measured is not None for e in evaluations):
        return list(evaluations)
    x = np.array([space.coordinates(Candidate.from_key(e.key)) for e in evaluations])
    means = {}
    for name in names:
        y = np.array([e.measured[name] if e.measured is not None else e.estimates[name] for e in evaluations])
        noise = np.array([MEASURED_NOISE if e.measured is not None else e.estimate_se[name] ** 2
                          for e in evaluations])
        means[name] = _posterior_mean(x, y, noise)
    return [e if e.measured is not None else
            replace(e, estimates={**e.estimates, **{n: float(np.clip(means[n][i], 0.0, 1.0)) for n in names}})
            for i, e in enumerate(evaluations)]


def _posterior_mean(x: np.ndarray, y: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The GP posterior mean at `x` of scores `y` observed with variances `noise`, on the scale of `y`."""
    # imported here: a second of sklearn that `plan`, `export` and `resume` of a finished run would pay for nothing
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    centre, scale = float(y.mean()), float(y.std()) or 1.0
    target, alpha = (y - centre) / scale, noise / scale**2 + 1e-10
    kernel = (ConstantKernel(1.0, (1e-3, 1e2)) * Matern(np.ones(x.shape[1]), (1e-2, 1e2), nu=2.5)
              + WhiteKernel(1e-2, (1e-8, 1.0)))
    fit_on = np.arange(len(y))
    if len(y) > FIT_AT_MOST:  # hyperparameters from an evenly spaced subset, then every candidate conditioned on
        fit_on = np.linspace(0, len(y) - 1, FIT_AT_MOST).round().astype(int)
    gp = GaussianProcessRegressor(kernel, alpha=alpha[fit_on], n_restarts_optimizer=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a length at its bound: that coordinate is flat
        gp.fit(x[fit_on], target[fit_on])
    if len(fit_on) < len(y):
        gp = GaussianProcessRegressor(gp.kernel_, alpha=alpha, optimizer=None).fit(x, target)
    return gp.predict(x) * scale + centre  # (the white noise is no part of the mean between points)
