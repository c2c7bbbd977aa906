"""Estimate a subject's accuracy per scenario, with a standard error, from its anchor scores.

Built once per (model, anchors, kind), then `estimate` is called for every candidate of the
search, so everything that does not depend on the candidate's scores is precomputed here.

For a scenario with N items of which n were seen:
  anchor  Σ w_i y_i
  pirt    (n/N)·mean(seen) + (1 − n/N)·mean over unseen items of σ(α_iᵀθ̂ − β_i)
  gpirt   λ·anchor + (1 − λ)·pirt,  λ = b̂²/(σ̂² + b̂²)
  mpirt   pirt with θ̂ = Σ_j λ_j θ_j restricted to the span of the endpoints' abilities
  gmpirt  δ·anchor + (1 − δ)·mpirt
  adaptive  items chosen one step at a time by information at θ̂ (`AdaptiveEstimator`, `adaptive.py`)

σ̂² (the anchor mean's error) and b̂² (the IRT part's error) are measured, not assumed: each
fold of the model's cross-fit has item parameters fitted without its subjects; anchors are
chosen again from those parameters with the same method, and both parts are scored on the
fold's subjects against their true means. With few calibration subjects these measurements are
noisy, so each is pooled with PRIOR_SUBJECTS pseudo-subjects at the error of a random sample of
the anchors' effective size, v̂·(1 − n/N)/n_eff with n_eff = (Σw)²/Σw².

A subject unlike every calibration subject (stronger, weaker, another profile) is where both
calibration measurements can mislead, so with sampled anchors (random, stratified), whose mean is
an unbiased random sample for every subject, both are taken per subject:
  σ²  the measured anchor errors pooled with the random-sampling error at the subject's own
      accuracy p̃ = (n_eff·anchor + 1)/(n_eff + 2), not the calibration subjects' v̂ (which is 0
      where they all score 0 or 1);
  b²  b̂²·(1 + κ)/2, the mean of the calibration's measurement and the subject's own, with κ the
      excess disagreement max((anchor − pirt)² − σ², 0)/b̂² averaged over its scenarios, since
      E[(anchor − pirt)²] ≈ σ² + b²; then the same check once more on the task's overall scores,
      where the anchors of every scenario count together, raising b² by (1 + κ_T)/2 where that
      disagreement is the larger (`_task_disagreement`).
λ and the SE are then per subject. Clustered anchors are not a random sample of the subject's
items, so with them gp-IRT keeps the calibration's σ̂² and b̂² for λ; the anchor part's error in the
SE is still the subject's σ², so a scenario every calibration subject scored alike (v̂ = 0, measured
errors 0) does not give a candidate that scores otherwise an SE of 0.

The task's overall score is not simply the item-weighted mean M of these per-scenario mixes
for gp-IRT: one θ̂ drives every scenario's IRT part, so its errors move together across scenarios
(cross-fit correlation 0.85-0.99 for subjects outside the calibration population), while the
anchor means of different scenarios are independent samples that average out. M kept the IRT
part's whole bias and lost to random sampling at the task level on such subjects. So the overall
is μ·A + (1 − μ)·M, A the overall anchor mean, μ the weight minimising its error given each part's
measured correlation over scenarios (`_overall_shrink`): 0 when they are independent (each λ_k is
then already its scenario's best weight), towards 1 as the IRT errors move together.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from evo_merge.errors import UserError
from evo_merge.irt.ability import map_logistic
from evo_merge.irt.adaptive import AdaptiveTest, held_out_error
from evo_merge.irt.anchors import Anchors, select_anchors
from evo_merge.irt.kinds import (
    ADAPTIVE,
    ANCHOR_MEAN,
    DEFAULT_ESTIMATOR_KIND,
    ENDPOINT_ESTIMATORS,
    ESTIMATOR_KINDS,
    GMPIRT,
    GPIRT,
    MPIRT,
    PIRT,
    POSTERIOR_SE_CAVEAT,
    SELECTABLE_ANCHOR_METHODS,
)
from evo_merge.irt.model import ABILITY_PRIOR_SD, IRTModel
from evo_merge.irt.responses import (
    RESERVED_SCENARIO,
    ResponseMatrix,
    binarise,
    by_item_id,
    validate_responses,
)
from evo_merge.irt.result import Estimate
from evo_merge.irt.twopl import prob_2pl

log = logging.getLogger(__name__)

# prior on mp-IRT's coefficients λ: centred on the plain average 1/k, weak along the endpoints'
# affine hull (merges interpolate), tight on Σλ (a merge is not a rescaled endpoint)
MERGE_COEF_SD = 0.5
MERGE_SUM_SD = 0.05
SIMULATED_MERGES = 200  # merges drawn in the endpoints' span to measure mp-IRT's error for δ
PRIOR_SUBJECTS = 4.0  # weight, in subjects, of the random-sampling error pooled with measured ones
# raised whenever a change moves the estimates (or SEs) of a run's candidates: the formulas, or the
# anchors a run draws; a run folder records it (search/scoring.py), so one resumed across such a
# change says that its estimates mix the two. 1: the task-level check of each subject against its
# anchors; 2: Neyman allocation counting the spread of a scenario's items; 3: the IRT part's b̂²
# from the subject's own accuracy where the calibration subjects' spread is smaller (CHANGELOG, IRT
# standard errors); 4: the random-sampling error² with the finite-population variance's N − 1 (a
# scenario of 4 items had 3/4 of it), and an adaptive test's SE with the IRT model's own error,
# measured by cross-fitting (its posterior SE was half its error); folders from before record none.
ESTIMATOR_REVISION = 4


def _shrink_weight(error: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """b²/(σ² + b²): how much to trust the anchor mean over the IRT prediction."""
    return error / np.maximum(variance + error, 1e-12)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pooled correlation of two errors about 0 (their bias counts), in [0, 1], over the cells where
    both are known (a held-out subject with no item in a scenario has none there): a negative one
    measured on a few subjects is noise, and taking it would make SEs smaller than the errors."""
    known = np.isfinite(x) & np.isfinite(y)
    x, y = x[known], y[known]
    scale = np.sqrt((x**2).sum() * (y**2).sum())
    return float(np.clip((x * y).sum() / scale, 0.0, 1.0)) if scale > 0 else 0.0


def _cross_correlation(errors: np.ndarray) -> float:
    """The mean correlation of a subject's errors between two scenarios (columns), in [0, 1]."""
    k = errors.shape[1]
    pairs = [_correlation(errors[:, i], errors[:, j]) for i in range(k) for j in range(i + 1, k)]
    return float(np.mean(pairs)) if pairs else 0.0


def _sum_covariance(x: np.ndarray, y: np.ndarray, sd: np.ndarray, correlation: float) -> np.ndarray:
    """Cov(Σ_k x_k e_k, Σ_k y_k e_k) over the last axis, e_k errors of SD sd_k, every two of them
    correlated by `correlation`."""
    independent = (x * y * sd**2).sum(axis=-1)
    together = (x * sd).sum(axis=-1) * (y * sd).sum(axis=-1)
    return (1.0 - correlation) * independent + correlation * together


def weighted_sum_se(share: np.ndarray, scenario_se: np.ndarray, correlation: float) -> np.ndarray:
    """SE of Σ_k share_k · estimate_k from per-scenario SEs (the last axis), every two scenarios'
    errors correlated by `correlation`."""
    return np.sqrt(_sum_covariance(share, share, scenario_se, correlation))


def _effective_size(weights: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """n_eff = (Σw)²/Σw² per scenario: unequally weighted anchors count as fewer items."""
    return (weights @ onehot) ** 2 / np.maximum((weights**2) @ onehot, 1e-300)


def _pool(squared_errors: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Mean squared error per scenario over subjects (rows), pooled with the prior."""
    m = (~np.isnan(squared_errors)).sum(axis=0)
    return (np.nansum(squared_errors, axis=0) + PRIOR_SUBJECTS * prior) / (m + PRIOR_SUBJECTS)


class AdaptiveEstimator:
    """Estimates from an adaptive test (`AdaptiveTest`): each subject's items are chosen one step at
    a time by their information at its ability, so there is no anchor set shared by subjects, and
    estimates are made one subject at a time, from the items it was scored on. The first step's
    items (the same for every subject: nothing is known of it yet) stand for the anchors."""

    kind = ADAPTIVE

    def __init__(self, model: IRTModel, *, seed: int = 0, **options: Any) -> None:
        error = held_out_error(model, seed=seed, **options)  # measured, as gp-IRT's parts are
        if not error:
            log.warning("adaptive estimates: %s, since no calibration subject held out of a fold answered every "
                        "item to measure the model's own error on (docs/irt.md)", POSTERIOR_SE_CAVEAT)
        self.model, self.scenarios = model, model.scenarios
        self.test = AdaptiveTest(model, seed=seed, model_error=error, **options)
        self.anchors = self.test.first_step()
        self.anchor_ids = self.anchors.all_items()  # in scenario order, as the test's first step lists them

    def estimate(self, scores: Mapping[str, float]) -> Estimate:
        """Per-scenario and overall estimates, with SEs, from the items `scores` holds."""
        return self.test.estimate(scores)


class Estimator:
    """Accuracy estimates from anchor scores: `estimate({item: score})` -> `Estimate`."""

    def __init__(
        self,
        model: IRTModel,
        anchors: Anchors,
        kind: str = DEFAULT_ESTIMATOR_KIND,
        endpoints: Sequence[str] | pd.DataFrame | None = None,
        gmp_delta: float | str = "auto",
        seed: int = 0,
    ) -> None:
        if kind == ADAPTIVE:
            raise UserError("estimator adaptive chooses each subject's items itself: AdaptiveEstimator builds it")
        if kind not in ESTIMATOR_KINDS:
            raise UserError(f"unknown estimator {kind!r} (choose from {', '.join(ESTIMATOR_KINDS)})")
        if gmp_delta != "auto" and not (isinstance(gmp_delta, (int, float)) and 0.0 <= gmp_delta <= 1.0):
            raise UserError(f"gmp-IRT delta must be 'auto' or a number in [0, 1], not {gmp_delta!r}")
        if anchors is None:
            raise UserError(f"estimator {kind} needs anchors")
        self.model, self.kind = model, kind
        self.scenarios = model.scenarios
        code = {s: k for k, s in enumerate(self.scenarios)}
        self._item_onehot = np.eye(len(self.scenarios))[[code[s] for s in model.item_scenarios]]  # (items, K)
        self.sizes = self._item_onehot.sum(axis=0)
        self.share = self.sizes / self.sizes.sum()  # each scenario's weight in the overall score
        self._set_anchors(anchors)
        self.endpoint_theta = None if endpoints is None else self._endpoint_abilities(endpoints)
        if kind in ENDPOINT_ESTIMATORS and self.endpoint_theta is None:
            raise UserError(f"estimator {kind} needs endpoint subjects (--endpoints)")
        anchor_err, irt_err = self._measured_errors()
        self._anchor_sq, self._irt_sq = anchor_err**2, irt_err**2
        prior = self._calibration_prior = self.random_sampling_variance()
        self.anchor_variance, self.irt_error = _pool(self._anchor_sq, prior), _pool(self._irt_sq, prior)
        self.lam = _shrink_weight(self.irt_error, self.anchor_variance) if kind == GPIRT else None
        if kind in ENDPOINT_ESTIMATORS:
            self.irt_error = self._mp_error(seed)
        if kind == GMPIRT:
            fixed = gmp_delta != "auto"
            auto = _shrink_weight(self.irt_error, self.anchor_variance)
            self.delta = np.full(len(self.scenarios), float(gmp_delta)) if fixed else auto
        # the anchor mean and p-IRT err together (θ̂ is fitted on the anchors the mean is taken
        # over), and a subject's scenarios err together (one θ̂): both measured, not assumed 0
        self.parts_correlation = _correlation(anchor_err, irt_err)
        mix = self._mix()
        self.scenario_correlation = _cross_correlation(mix * anchor_err + (1.0 - mix) * irt_err)
        self.scenario_se = self._scenario_se()
        # how each part's errors move together over a subject's scenarios, for gp-IRT's overall:
        # sampled anchors are independent draws per scenario; clustered ones and θ̂ err as measured
        self.anchor_correlation = 0.0 if anchors.sampled else _cross_correlation(anchor_err)
        self.irt_correlation = _cross_correlation(irt_err)

    # ---- setup ---------------------------------------------------------------------------
    def _set_anchors(self, anchors: Anchors) -> None:
        unknown = set(anchors.items) ^ set(self.scenarios)
        if unknown:
            raise UserError(f"anchors and IRT model disagree on scenario {sorted(unknown)[0]!r}")
        self.anchors = anchors
        self.anchor_ids = [i for s in self.scenarios for i in anchors.items[s]]
        self.anchor_idx = self.model.item_index(self.anchor_ids)
        self.weights = np.array([w for s in self.scenarios for w in anchors.weights[s]])
        self._anchor_onehot = self._item_onehot[self.anchor_idx]  # (n, K)
        self._n_eff = _effective_size(self.weights, self._anchor_onehot)
        # (1 − n/N)/n_eff · N/(N − 1) per scenario: a random sample's error² (without replacement,
        # Cochran's, whose item variance divides by N − 1) per unit of the across-item variance divided
        # by N that v̂ and p(1 − p) are; a scenario with no anchor (an adaptive test's, before its
        # first step) has no anchor mean: ∞
        unsampled = np.clip(1.0 - self._anchor_onehot.sum(axis=0) / self.sizes, 0.0, 1.0)
        unsampled = unsampled * self.sizes / np.maximum(self.sizes - 1, 1)
        self._sampling = np.divide(unsampled, self._n_eff, out=np.full_like(unsampled, np.inf), where=self._n_eff > 0)

    def _endpoint_abilities(self, endpoints: Sequence[str] | pd.DataFrame) -> np.ndarray:
        """θ of the endpoints on all items: training subjects by id, or fitted on full response rows."""
        if isinstance(endpoints, pd.DataFrame):
            matrix = ResponseMatrix.from_long(validate_responses(endpoints, "endpoint responses"), self.model.item_ids)
            return self.model.fit_abilities(matrix.scores, np.arange(len(self.model.item_ids)))
        lookup = {s: j for j, s in enumerate(self.model.subject_ids)}
        missing = [s for s in endpoints if s not in lookup]
        if missing:
            raise UserError(f"endpoint subject {missing[0]} is not among the IRT model's training subjects "
                            f"({', '.join(self.model.subject_ids)})")
        if not endpoints:
            raise UserError("no endpoint subjects given")
        return self.model.theta[[lookup[s] for s in endpoints]]

    def scenario_means(self, scores: np.ndarray) -> np.ndarray:
        """Mean observed score per scenario (S, K) of full rows of scores (S, items)."""
        observed = ~np.isnan(scores)
        with np.errstate(invalid="ignore"):  # NaN where a subject has no item of the scenario
            return (np.where(observed, scores, 0.0) @ self._item_onehot) / (observed @ self._item_onehot)

    def random_sampling_variance(self) -> np.ndarray:
        """v̂·(1 − n/N)/n_eff·N/(N − 1): the error² of a random sample of the anchors' effective size.

        v̂ is the training subjects' mean across-item variance of scores in the scenario;
        n_eff = (Σw)²/Σw² counts unequally weighted anchors as fewer items.
        """
        resp = self.model.responses
        observed = ~np.isnan(resp)
        y = np.where(observed, resp, 0.0)
        count = observed @ self._item_onehot
        with np.errstate(invalid="ignore"):  # NaN where a subject has no item of the scenario: nanmean skips it
            mean = (y @ self._item_onehot) / count
            v_hat = np.nanmean(((y**2) @ self._item_onehot) / count - mean**2, axis=0)
        return v_hat * self._sampling

    def _fold_anchors(self, fold: int) -> Anchors:
        """The anchors this fold's fit would have chosen, as many per scenario (the given ones if they
        cannot be re-chosen)."""
        a = self.anchors
        if a.method not in SELECTABLE_ANCHOR_METHODS:
            return a
        train = ~self.model.cv_held[fold]
        fold_model = replace(self.model, alpha=self.model.cv_alpha[fold], beta=self.model.cv_beta[fold],
                             responses=self.model.responses[train], theta=self.model.theta[train])
        return select_anchors(fold_model, a.budget, a.method, seed=a.seed, allocation=a.allocation,
                              counts=a.counts(), balance=a.balance)

    def _measured_errors(self) -> tuple[np.ndarray, np.ndarray]:
        """Errors (subjects, K) of the anchor mean and of p-IRT on cross-fit held-out subjects."""
        anchor_err, irt_err = [np.empty((0, len(self.scenarios)))], [np.empty((0, len(self.scenarios)))]
        for fold in range(self.model.cv_alpha.shape[0]):
            held = self.model.responses[self.model.cv_held[fold]]
            if not held.size:
                continue
            anchors = self._fold_anchors(fold)
            idx = self.model.item_index(anchors.all_items())
            weights = np.array([w for s in self.scenarios for w in anchors.weights[s]])
            alpha, beta = self.model.cv_alpha[fold], self.model.cv_beta[fold]
            truth = self.scenario_means(held)
            anchor_err.append(self._anchor_mean(held[:, idx], weights, idx) - truth)
            theta = self._fit_theta(held[:, idx], alpha, beta, idx)
            irt_err.append(self._pirt(held[:, idx], theta, alpha, beta, idx) - truth)
        return np.concatenate(anchor_err), np.concatenate(irt_err)

    def _mp_error(self, seed: int) -> np.ndarray:
        """mp-IRT's error² on simulated merges drawn in the endpoints' span (δ like λ)."""
        rng = np.random.default_rng(seed)
        coef = rng.dirichlet(np.ones(self.endpoint_theta.shape[0]), SIMULATED_MERGES)
        prob = self.model.predict(coef @ self.endpoint_theta)
        sampled = (rng.random(prob.shape) < prob).astype(float)
        anchor_scores = sampled[:, self.anchor_idx]
        theta = self._fit_theta(anchor_scores, self.model.alpha, self.model.beta, self.anchor_idx)
        mp = self._pirt(anchor_scores, theta, self.model.alpha, self.model.beta, self.anchor_idx)
        return ((mp - self.scenario_means(sampled)) ** 2).mean(axis=0)

    def _mix(self) -> np.ndarray | float:
        """The anchor mean's weight in the kind's estimate (1: the anchor mean alone, 0: IRT alone)."""
        if self.kind == ANCHOR_MEAN:
            return 1.0
        return self.lam if self.kind == GPIRT else self.delta if self.kind == GMPIRT else 0.0

    def _mixed_se(self, mix: np.ndarray | float, anchor_variance: np.ndarray, irt_error: np.ndarray) -> np.ndarray:
        """SE of mix·(anchor mean) + (1 − mix)·(IRT part), with the parts' measured correlation."""
        return np.sqrt(mix**2 * anchor_variance + (1.0 - mix) ** 2 * irt_error
                       + 2.0 * mix * (1.0 - mix) * self.parts_correlation * np.sqrt(anchor_variance * irt_error))

    def _scenario_se(self) -> np.ndarray:
        """SE per scenario before a subject is seen: the measured error of the kind's estimate.
        gp-IRT on sampled anchors refines it per subject."""
        return self._mixed_se(self._mix(), self.anchor_variance, self.irt_error)

    # ---- estimation ----------------------------------------------------------------------
    def _anchor_mean(self, anchor_scores: np.ndarray, weights: np.ndarray, idx: np.ndarray) -> np.ndarray:
        observed = ~np.isnan(anchor_scores)
        onehot = self._item_onehot[idx]
        with np.errstate(invalid="ignore"):  # a scenario with no scored anchor gives NaN
            return (np.where(observed, anchor_scores, 0.0) * weights) @ onehot / ((observed * weights) @ onehot)

    def _fit_theta(self, anchor_scores: np.ndarray, alpha: np.ndarray, beta: np.ndarray, idx: np.ndarray) -> np.ndarray:
        binary = binarise(anchor_scores, self.model.item_thresholds(idx))
        a, b = alpha[idx], beta[idx]
        if self.kind in ENDPOINT_ESTIMATORS and self.endpoint_theta is not None:
            ends = self.endpoint_theta
            k = ends.shape[0]
            prec = np.eye(k) / MERGE_COEF_SD**2 + np.ones((k, k)) / MERGE_SUM_SD**2
            coef = map_logistic(a @ ends.T, b, binary, np.full(k, 1.0 / k), prec)
            return coef @ ends
        dims = a.shape[1]
        return map_logistic(a, b, binary, np.zeros(dims), np.eye(dims) / ABILITY_PRIOR_SD**2)

    def _pirt(self, anchor_scores: np.ndarray, theta: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
              idx: np.ndarray) -> np.ndarray:
        """Seen scores plus predicted unseen ones, over N: the p-IRT estimate (S, K)."""
        observed = ~np.isnan(anchor_scores)
        onehot = self._item_onehot[idx]
        prob = prob_2pl(theta, alpha, beta)
        predicted_unseen = prob @ self._item_onehot - (prob[:, idx] * observed) @ onehot
        seen = np.where(observed, anchor_scores, 0.0) @ onehot
        return (seen + predicted_unseen) / self.sizes

    def _subject_anchor_variance(self, anchor: np.ndarray) -> np.ndarray:
        """σ² per subject and scenario (S, K): the measured anchor errors pooled with the random-sampling
        error at this subject's own accuracy, p̃(1 − p̃)·(1 − n/N)/n_eff with p̃ = (n_eff·mean + 1)/(n_eff + 2).

        The calibration's v̂ is no guide for a subject unlike the calibration subjects: where they
        all score 0 or 1 (a skill only one endpoint has) it is 0, and σ̂² with it, which would
        give every merge that partly has the skill an SE of 0 there.
        """
        return _pool(self._anchor_sq, self._own_sampling_variance(anchor))

    def _own_sampling_variance(self, anchor: np.ndarray) -> np.ndarray:
        """(S, K): p̃(1 − p̃)·(1 − n/N)/n_eff·N/(N − 1), a random sample's error² at the subject's own accuracy,
        p̃ = (n_eff·mean + 1)/(n_eff + 2) (never exactly 0 or 1)."""
        p = (self._n_eff * anchor + 1.0) / (self._n_eff + 2.0)
        return p * (1.0 - p) * self._sampling

    def _subject_irt_base(self, anchor: np.ndarray) -> np.ndarray:
        """b̂² per subject and scenario (S, K) before its own check: the measured IRT errors pooled with
        the random-sampling error at the larger of the calibration subjects' and this subject's own
        accuracy spread (`_own_sampling_variance`). Where every calibration subject aces a scenario
        their spread is 0, b̂² with it, and the per-subject checks only scale b̂²: a merge whose
        anchors there said 1.0 was pulled to the IRT part's 0.85 at ± 0.04 (λ 0.06-0.13)."""
        return _pool(self._irt_sq, np.fmax(self._calibration_prior, self._own_sampling_variance(anchor)))

    def _subject_irt_error(self, anchor: np.ndarray, irt: np.ndarray, anchor_variance: np.ndarray) -> np.ndarray:
        """b² per subject and scenario (S, K): b̂²·(1 + κ)/2 (`_subject_irt_base`), κ its anchors' excess
        disagreement over its scenarios; then raised by the task-level check (`_task_disagreement`)
        where that is larger."""
        base = self._subject_irt_base(anchor)
        excess = np.maximum((anchor - irt) ** 2 - anchor_variance, 0.0) / np.maximum(base, 1e-12)
        scored = ~np.isnan(excess)
        with np.errstate(invalid="ignore"):  # a subject with no scored anchor: NaN, as its estimates
            kappa = np.where(scored, excess, 0.0).sum(axis=1, keepdims=True) / scored.sum(axis=1, keepdims=True)
        b2 = base * (1.0 + kappa) / 2.0
        return b2 * np.maximum((1.0 + self._task_disagreement(anchor, irt, anchor_variance, b2)) / 2.0, 1.0)[:, None]

    def _task_disagreement(self, anchor: np.ndarray, irt: np.ndarray, anchor_variance: np.ndarray,
                           irt_error: np.ndarray) -> np.ndarray:
        """κ_T per subject (S,): the excess disagreement of the overall anchor mean and the overall IRT
        part, max(D² − Var Σ sε, 0)/Var Σ sβ with D = Σ s_k(anchor_k − pirt_k), over what the IRT errors
        `irt_error` (b², with their measured correlation) expect; 0 where a scenario has no scored anchor,
        and with one scenario (whose own check has already seen everything its anchors show).

        A subject unlike every calibration subject (stronger than all of them, say) sends θ̂ the same
        way in every scenario, so the IRT part errs the same way everywhere. Each scenario's check
        sees that on its few anchors only, within their sampling noise; summed over the task, the
        disagreement has all the anchors' precision. It only ever raises b² (the per-scenario check
        already lowers it where the anchors agree), so it moves little for subjects like the
        calibration ones (bench_irt.py: 0.00-0.02 of random sampling's error) and cuts the error
        where every test model is stronger than every calibration model (real classifier responses).
        """
        if self.share.size == 1:
            return np.zeros(anchor.shape[0])
        d = self.overall(anchor) - self.overall(irt)
        sampling = _sum_covariance(self.share, self.share, np.sqrt(anchor_variance), self.anchor_correlation)
        expected = _sum_covariance(self.share, self.share, np.sqrt(irt_error), self.irt_correlation)
        excess = np.maximum(d**2 - sampling, 0.0) / np.maximum(expected, 1e-12)
        return np.where(np.isnan(excess), 0.0, excess)

    def anchor_variance_factor(self, anchor_scores: np.ndarray) -> np.ndarray:
        """n_eff of the anchor set over n_eff of the anchors each row scored, per scenario (S, K): 1
        where every anchor was scored (a campaign's candidates), ∞ where none was. The anchor mean's
        error grows by this factor; the calibration measured it with every anchor scored."""
        observed = (~np.isnan(anchor_scores)) * self.weights
        n_eff = (observed @ self._anchor_onehot) ** 2 / np.maximum((observed**2) @ self._anchor_onehot, 1e-300)
        return np.divide(self._n_eff, n_eff, out=np.full(n_eff.shape, np.inf), where=n_eff > 0)

    def unscored(self, anchor_scores: np.ndarray) -> np.ndarray:
        """(S, K): True where a row scored no anchor of the scenario. Its estimate there is no
        measurement (p-IRT would give the prior's, with a full SE): `estimate` refuses it."""
        return np.isinf(self.anchor_variance_factor(anchor_scores))

    def estimate_with_overall(self, anchor_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(estimates, SEs), each (S, K + 1), for rows of scores on `anchor_ids` (NaN = not
        evaluated): per scenario, then the overall score over all items. A row that scored only
        some anchors has its anchor mean's variance grown by `anchor_variance_factor`: the `anchor`
        and gp-IRT SEs grow with it (gp-IRT on sampled anchors also leans more on its IRT part);
        p-IRT's, mp-IRT's and gmp-IRT's SEs stay the calibration's."""
        anchor = self._anchor_mean(anchor_scores, self.weights, self.anchor_idx)
        se = np.broadcast_to(self.scenario_se, anchor.shape)
        s2 = self._subject_anchor_variance(anchor) * self.anchor_variance_factor(anchor_scores)
        if self.kind == ANCHOR_MEAN:
            return self._with_overall(anchor, np.sqrt(s2))
        theta = self._fit_theta(anchor_scores, self.model.alpha, self.model.beta, self.anchor_idx)
        irt = self._pirt(anchor_scores, theta, self.model.alpha, self.model.beta, self.anchor_idx)
        if self.kind in (PIRT, MPIRT):
            return self._with_overall(irt, se)
        if self.kind == GMPIRT:
            return self._with_overall(self.delta * anchor + (1.0 - self.delta) * irt, se)
        if not self.anchors.sampled:  # λ from the calibration; the anchor part's error still the subject's own
            lam, b2 = self.lam, self.irt_error
            mu = self._overall_shrink(lam, self.anchor_variance, b2)
        else:
            b2 = self._subject_irt_error(anchor, irt, s2)
            lam = _shrink_weight(b2, s2)
            mu = self._overall_shrink(lam, s2, b2)
        mixed = lam * anchor + (1.0 - lam) * irt
        overall = mu * self.overall(anchor) + (1.0 - mu) * self.overall(mixed)
        return (np.column_stack([mixed, overall]),
                np.column_stack([self._mixed_se(lam, s2, b2), self._overall_se(mu, lam, s2, b2)]))

    def _with_overall(self, values: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-scenario estimates and SEs with the overall's appended: their item-weighted mean, its SE
        with the scenarios' errors correlated as measured on the held-out calibration subjects (taken
        as independent, the SE was half the error)."""
        return (np.column_stack([values, self.overall(values)]),
                np.column_stack([se, weighted_sum_se(self.share, se, self.scenario_correlation)]))

    def _overall_shrink(self, lam: np.ndarray, s2: np.ndarray, b2: np.ndarray) -> np.ndarray:
        """μ per subject: how far gp-IRT's overall moves from the mean of its scenarios' mixes M to the
        overall anchor mean A, minimising the error of μ·A + (1 − μ)·M. A − M = Σ s_k(1 − λ_k)(ε_k − β_k)
        (ε the anchor means' errors, β the IRT part's), so μ = [Var Σwβ − Cov(Σwε, Σsλε)]/[Var Σwε +
        Var Σwβ], w = s(1 − λ): 0 when the scenarios' IRT errors are independent (each λ_k is then
        already the best weight), towards 1 as they move together."""
        w, v = self.share * (1.0 - lam), self.share * lam
        sigma, b = np.sqrt(s2), np.sqrt(b2)
        irt_part = _sum_covariance(w, w, b, self.irt_correlation)
        numerator = irt_part - _sum_covariance(w, v, sigma, self.anchor_correlation)
        denominator = _sum_covariance(w, w, sigma, self.anchor_correlation) + irt_part
        return np.clip(numerator / np.maximum(denominator, 1e-300), 0.0, 1.0)

    def _overall_se(self, mu: np.ndarray, lam: np.ndarray, s2: np.ndarray, b2: np.ndarray) -> np.ndarray:
        """SE of gp-IRT's overall Σ_k c_k ε_k + d_k β_k, c = s(μ + (1 − μ)λ), d = s(1 − μ)(1 − λ): each
        part's errors correlated over scenarios as measured, and the two parts within a scenario."""
        mu = np.asarray(mu)[..., None]
        c, d = self.share * (mu + (1.0 - mu) * lam), self.share * (1.0 - mu) * (1.0 - lam)
        sigma, b = np.sqrt(s2), np.sqrt(b2)
        variance = (_sum_covariance(c, c, sigma, self.anchor_correlation)
                    + _sum_covariance(d, d, b, self.irt_correlation)
                    + 2.0 * self.parts_correlation * (c * d * sigma * b).sum(axis=-1))
        return np.sqrt(variance)

    def estimate_rows(self, anchor_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(estimates, SEs), each (S, K), per scenario, for rows of scores on `anchor_ids`."""
        values, se = self.estimate_with_overall(anchor_scores)
        return values[:, :-1], se[:, :-1]

    def estimate_matrix(self, anchor_scores: np.ndarray) -> np.ndarray:
        """Estimates (S, K) for rows of scores on `anchor_ids` (NaN = not evaluated)."""
        return self.estimate_rows(anchor_scores)[0]

    def overall(self, values: np.ndarray) -> np.ndarray:
        """The item-weighted mean over scenarios (the last axis): a subject's overall score from
        its per-scenario scores (gp-IRT's overall estimate is not: `estimate_with_overall`)."""
        return values @ self.share

    def estimate(self, scores: Mapping[str, float]) -> Estimate:
        """Per-scenario estimates and, under "overall", the score over all items, with SEs: the
        scenarios' item-weighted mean, except for gp-IRT, whose overall mixes the anchors' own overall
        mean in (`estimate_with_overall`) and may lie outside its scenarios' range."""
        scores = by_item_id(scores)
        row = np.array([scores.get(item, np.nan) for item in self.anchor_ids], dtype=float)
        bad = ~np.isnan(row) & ((row < 0) | (row > 1))
        if bad.any():
            raise UserError(f"score {row[bad][0]} of item {self.anchor_ids[int(np.argmax(bad))]} is out of [0, 1]")
        if (unscored := self.unscored(row[None, :])[0]).any():
            scenario = self.scenarios[int(np.argmax(unscored))]
            raise UserError(f"no anchor item of scenario {scenario!r} was scored")
        values, se = (x[0] for x in self.estimate_with_overall(row[None, :]))
        keys = [*self.scenarios, RESERVED_SCENARIO]
        out, se = dict(zip(keys, values.tolist())), dict(zip(keys, se.tolist()))
        items = [i for i, v in zip(self.anchor_ids, row) if not np.isnan(v)]
        return Estimate(out, se, items)


def _adaptive_table(estimator: AdaptiveEstimator, matrix: ResponseMatrix) -> pd.DataFrame:
    """Adaptive estimates subject by subject: each from the items it was scored on."""
    rows = []
    for subject, scores in zip(matrix.subjects, matrix.scores):
        seen = ~np.isnan(scores)
        result = estimator.estimate(dict(zip(np.asarray(matrix.items)[seen], scores[seen])))
        rows += [(subject, k, estimator.kind, v, result.se[k]) for k, v in result.items()]
    return pd.DataFrame(rows, columns=["subject", "scenario", "estimator", "estimate", "se"])


def estimate_table(estimator: Estimator | AdaptiveEstimator, responses: pd.DataFrame) -> pd.DataFrame:
    """Estimates for every subject of a response table (long or wide, validated here where it is not
    `validate_responses`' long form): columns subject,scenario,estimator,estimate,se. Its ids are read
    as text, as the model's are (a table of integer item ids fitted the model)."""
    if list(responses.columns) != ["subject", "item", "score", "scenario"] or not all(
            pd.api.types.is_string_dtype(responses[column]) for column in ("subject", "item")):
        responses = validate_responses(responses)  # a validated table is not copied again
    matrix = ResponseMatrix.from_long(responses, estimator.model.item_ids)
    if isinstance(estimator, AdaptiveEstimator):
        return _adaptive_table(estimator, matrix)
    scores = matrix.scores[:, estimator.anchor_idx]
    if (unscored := estimator.unscored(scores)).any():
        s, k = np.argwhere(unscored)[0]
        scenario = estimator.scenarios[k]
        raise UserError(f"subject {matrix.subjects[s]} has no scored anchor item in scenario {scenario!r}: score "
                        "the anchors of every scenario of the model (of each of its tasks, for a model fitted on "
                        "several: `responses export --task NAME` fits one)")
    values, se = estimator.estimate_with_overall(scores)
    columns = [*estimator.scenarios, RESERVED_SCENARIO]

    def long(table: np.ndarray, name: str) -> pd.DataFrame:
        frame = pd.DataFrame(table, index=matrix.subjects, columns=columns).rename_axis("subject").reset_index()
        return frame.melt(id_vars="subject", var_name="scenario", value_name=name)

    out = long(values, "estimate")
    out.insert(2, "estimator", estimator.kind)
    out["se"] = long(se, "se")["se"]
    return out.sort_values(["subject"], kind="stable").reset_index(drop=True)
