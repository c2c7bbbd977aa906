"""Fitting backends for the multidimensional 2PL P = σ(α_iᵀθ_l − β_i).

Each backend takes a binary matrix (subjects × items, NaN = not evaluated) and returns the same
parameters, so the stored model does not depend on how it was fitted.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from evo_merge.errors import UserError, first_line
from evo_merge.irt.twopl import logit_2pl

log = logging.getLogger(__name__)

# Gaussian priors of the torch MAP fit (standard deviations) with many subjects; with fewer than
# PRIOR_FULL_SUBJECTS the α and β priors tighten by sqrt(n / PRIOR_FULL_SUBJECTS): ten subjects
# cannot tell a sharp item (|α| ~ 9, β ~ ±17) from an ordinary one, and near-deterministic items
# pull held-out abilities to the middle
THETA_SD, ALPHA_SD, BETA_SD = 1.0, 2.0, 3.0
PRIOR_FULL_SUBJECTS = 40
FLOAT32_CELLS = 4_000_000  # subjects x items from which the torch fit runs in float32 (`fit_dtype`)
PYIRT_LR, PYIRT_EPOCHS = 0.02, 1000  # py-irt's own defaults (lr 0.1) diverge on many matrices
PYIRT_RETRIES, PYIRT_LR_FACTOR = 2, 0.2  # on divergence: retry at lr x 0.2, twice


def prior_sds(n_subjects: int) -> tuple[float, float]:
    """(α, β) prior standard deviations: tighter as subjects shrink."""
    scale = min(1.0, np.sqrt(n_subjects / PRIOR_FULL_SUBJECTS))
    return ALPHA_SD * scale, BETA_SD * scale


@dataclass(frozen=True)
class FittedParams:
    alpha: np.ndarray  # (items, D)
    beta: np.ndarray  # (items,)
    theta: np.ndarray  # (subjects, D)
    lr: float | None = None  # py-irt's rate after divergence retries (None: L-BFGS has none)
    epochs: int | None = None  # py-irt's epochs at that rate (more after a retry)


def canonical(alpha: np.ndarray, beta: np.ndarray, theta: np.ndarray) -> FittedParams:
    """The same predictions with the training abilities whitened (mean 0, identity covariance).

    Backends scale θ differently (a fixed N(0, 1) prior here, learned hierarchical scales in
    py-irt); whitening makes the prior used for new subjects' abilities mean the same thing for
    both. θ = θ'C^{1/2} + μ gives α' = αC^{1/2}, β' = β − αμ. Each dimension is then flipped so
    that discriminations are positive on average (θ up = more able).
    """
    mean = theta.mean(axis=0)
    cov = np.atleast_2d(np.cov(theta, rowvar=False, bias=True)) + 1e-9 * np.eye(theta.shape[1])
    vals, vecs = np.linalg.eigh(cov)
    root, inv_root = (vecs * np.sqrt(vals)) @ vecs.T, (vecs / np.sqrt(vals)) @ vecs.T
    alpha, beta, theta = alpha @ root, beta - alpha @ mean, (theta - mean) @ inv_root
    sign = np.where(alpha.sum(axis=0) < 0, -1.0, 1.0)
    return FittedParams(alpha * sign, beta, theta * sign)


def fit_dtype(binary: np.ndarray) -> np.dtype:
    """The float type of a torch fit: float64, or float32 for a matrix of FLOAT32_CELLS or more."""
    return np.dtype(np.float32 if binary.size >= FLOAT32_CELLS else np.float64)


def matrix_options(backend: str, binary: np.ndarray) -> dict[str, Any]:
    """What a backend takes from the model's whole matrix, so that every fit of the model (each
    fold's on part of the subjects too) gets the same: the torch fit's precision; py-irt's rate and
    epochs, its defaults unless given (recorded in the model's settings either way)."""
    if backend == "torch":
        return {"dtype": fit_dtype(binary).name}
    return {"epochs": PYIRT_EPOCHS, "lr": PYIRT_LR}  # py-irt's defaults, written out: the model records them


def fit_torch(binary: np.ndarray, dims: int, seed: int = 0, max_iter: int = 300,
              dtype: str | None = None) -> FittedParams:
    """MAP fit with L-BFGS, initialised from a truncated SVD of the centred responses.

    `dtype` (default: `fit_dtype` of this matrix; `IRTModel.fit` passes its whole matrix's to the
    fits of its folds too): a large matrix (a leaderboard of hundreds of models by tens of
    thousands of items) is fitted in float32, four times faster, its fitted probabilities within
    1e-4 of float64's on average and its scenario means within 3e-4 (300 x 20,000 at D=1 and D=3).
    Smaller ones, a campaign's among them, stay in float64. The parameters come back as float64.
    Nothing here draws random numbers (the start is an SVD, L-BFGS is deterministic): `seed` is
    taken for the backends' common signature, and the caller's torch generator is left alone.
    """
    observed = ~np.isnan(binary)
    y = np.where(observed, binary, 0.0)
    item_mean = np.clip((y.sum(0) + 0.5) / (observed.sum(0) + 1.0), 0.02, 0.98)
    resid = np.where(observed, binary - item_mean, 0.0)
    u, s, vt = np.linalg.svd(resid, full_matrices=False)
    n_subj = binary.shape[0]
    k = min(dims, s.size)
    theta0 = np.zeros((n_subj, dims))
    alpha0 = np.zeros((binary.shape[1], dims))
    theta0[:, :k] = u[:, :k] * np.sqrt(n_subj)
    alpha0[:, :k] = 4.0 * vt[:k].T * s[:k] / np.sqrt(n_subj)  # logit slope ≈ 4 × probability slope

    dtype = fit_dtype(binary) if dtype is None else np.dtype(dtype)
    with _one_thread() if dtype == np.float64 else contextlib.nullcontext():
        return _lbfgs(y, observed, theta0, alpha0, item_mean, dtype, max_iter)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread for the fit: its reductions add in an order set by the thread count,
    and L-BFGS on a flat optimum carries the last bits far (a 60 x 3,000 fit on 1 and 2 threads
    differed by 0.008 in α, and every stratified-irt anchor with it; audit 133), so the same
    responses gave another model, anchors and estimates on another machine. The float64 fits
    (a campaign's, up to FLOAT32_CELLS) take seconds on one thread; the large float32 ones keep
    every thread and vary in their last digits with the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _lbfgs(y: np.ndarray, observed: np.ndarray, theta0: np.ndarray, alpha0: np.ndarray, item_mean: np.ndarray,
           dtype: np.dtype, max_iter: int) -> FittedParams:
    """The MAP fit itself, from `fit_torch`'s start."""
    n_subj = y.shape[0]
    y_t = torch.from_numpy(y.astype(dtype, copy=False))
    # a dense matrix (every subject scored on every item, as leaderboards are) needs no mask: one
    # pass fewer over the subjects x items cells, a fifth of a large fit's time
    mask = None if observed.all() else torch.from_numpy(observed.astype(dtype))
    theta = torch.tensor(theta0.astype(dtype), requires_grad=True)
    alpha = torch.tensor(alpha0.astype(dtype), requires_grad=True)
    beta = torch.tensor(-np.log(item_mean / (1 - item_mean)).astype(dtype), requires_grad=True)
    n_obs = float(observed.sum())
    alpha_sd, beta_sd = prior_sds(n_subj)
    optimiser = torch.optim.LBFGS(
        [theta, alpha, beta], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-7, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = logit_2pl(theta, alpha, beta)
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_t, weight=mask, reduction="sum")
        prior = (theta**2).sum() / THETA_SD**2 + (alpha**2).sum() / alpha_sd**2 + (beta**2).sum() / beta_sd**2
        loss = (nll + 0.5 * prior) / n_obs
        loss.backward()
        return loss

    optimiser.step(closure)
    return canonical(*(p.detach().numpy().astype(np.float64) for p in (alpha, beta, theta)))


PYIRT_SEEDS = 2**32  # py-irt draws from numpy's legacy global generator, seeded with 32 bits


def fit_pyirt(binary: np.ndarray, dims: int, seed: int = 0, epochs: int = PYIRT_EPOCHS,
              lr: float = PYIRT_LR) -> FittedParams:
    """py-irt's multidim_2pl (variational, seeded); σ(Σ_d a_d(θ_d − b_d)) gives β_i = Σ_d a_id b_id.

    Its stochastic optimiser can reach NaN (pyro then rejects a distribution): the fit is retried
    at a lower learning rate, saying so in one line (pyro's own NaN warnings are silenced), before
    giving up. A retry runs as many more epochs as its rate is lower (rate × epochs kept): at the
    same epochs a fifth of the rate left the parameters shrunk 4-5x towards 0, far from converged,
    and that fit was stored. Each fit's rate, epochs and time are logged, and the rate and epochs
    are returned with the parameters.
    """
    try:
        import py_irt.anchor_utils
    except ImportError as exc:  # py-irt needs Python < 3.12
        raise UserError(f"backend 'pyirt' is unavailable ({exc}); use --backend torch") from None
    py_irt.anchor_utils.console.quiet = True  # its own console, not silenced by verbose=False
    if not 0 <= seed < PYIRT_SEEDS:  # numpy's legacy generator's seeds: a larger one was retried as "diverged"
        raise UserError(f"seed {seed}: py-irt takes a seed below {PYIRT_SEEDS:,} (the torch backend takes any)")
    rate, steps = lr, epochs
    for attempt in range(PYIRT_RETRIES + 1):
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # the retry line says it: two lines per NaN only repeat it
                warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                params = _train_pyirt(binary, dims, seed, steps, rate)
            log.info("py-irt fit %d x %d, D=%d, %d epochs, lr=%g: %.1f s", *binary.shape, dims, steps, rate,
                     time.perf_counter() - start)
            return replace(params, lr=rate, epochs=steps)
        except ValueError as exc:  # pyro's distribution checks fail once the parameters reach NaN
            reason = first_line(exc)[:120]
            if attempt == PYIRT_RETRIES:
                raise UserError(f"py-irt training diverged (lr={rate:g}, after retries from lr={lr:g}): {reason}; "
                                "try a lower --lr or --backend torch") from None
            rate, steps = rate * PYIRT_LR_FACTOR, round(steps / PYIRT_LR_FACTOR)
            log.warning("py-irt diverged at lr=%g (%s); retrying at lr=%g for %d epochs (as many more as the rate "
                        "is lower)", rate / PYIRT_LR_FACTOR, reason[:60], rate, steps)


@contextlib.contextmanager
def _own_global_rngs() -> Iterator[None]:
    """Restore torch's, numpy's and `random`'s global generators on the way out.

    py-irt draws from the global generators, so its fit seeds all three (as `pyro.set_rng_seed`
    does): without this a caller who fitted a model (every campaign does) got the same "random"
    stream after it whatever they had seeded before. Only torch's CPU generator is seeded and
    forked: py-irt trains on the CPU, and `torch.manual_seed` would also queue a reseed of every
    CUDA generator that no fork could undo before CUDA starts.
    """
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _train_pyirt(binary: np.ndarray, dims: int, seed: int, epochs: int, lr: float) -> FittedParams:
    with _own_global_rngs():
        return _train_pyirt_seeded(binary, dims, seed, epochs, lr)


def _train_pyirt_seeded(binary: np.ndarray, dims: int, seed: int, epochs: int, lr: float) -> FittedParams:
    import pandas as pd
    import pyro
    from py_irt.config import IrtConfig
    from py_irt.dataset import Dataset
    from py_irt.training import IrtModelTrainer

    torch.random.default_generator.manual_seed(seed)  # pyro.set_rng_seed's, less the CUDA generators
    np.random.seed(seed)
    random.seed(seed)
    pyro.clear_param_store()
    wide = pd.DataFrame(binary, columns=[str(j) for j in range(binary.shape[1])])
    dataset = Dataset.from_pandas(wide)  # subjects = rows in order, item ix j = column j
    config = IrtConfig(model_type="multidim_2pl", dims=dims, epochs=epochs, lr=lr, seed=seed, log_every=epochs)
    trainer = IrtModelTrainer(data_path=None, config=config, dataset=dataset, verbose=False)
    trainer.train(device="cpu")
    params = trainer.last_params
    disc = np.asarray(params["disc"], dtype=float).reshape(binary.shape[1], dims)
    diff = np.asarray(params["diff"], dtype=float).reshape(binary.shape[1], dims)
    theta = np.asarray(params["ability"], dtype=float).reshape(binary.shape[0], dims)
    if not (np.isfinite(disc).all() and np.isfinite(diff).all() and np.isfinite(theta).all()):
        raise ValueError("parameters are not finite")
    return canonical(disc, (disc * diff).sum(axis=1), theta)


BACKENDS: dict[str, Callable[..., FittedParams]] = {"torch": fit_torch, "pyirt": fit_pyirt}
