"""Estimate a subject's accuracy per scenario from its scores on the anchor items.

Built once per (model, anchors, kind), then `estimate` is called for every candidate of the
search, so everything that does not depend on the candidate's scores is precomputed here.

For a scenario with N items of which n were seen (DESIGN.md §5):
  anchor  Σ w_i y_i
  pirt    (n/N)·mean(seen) + (1 − n/N)·mean over unseen items of σ(α_iᵀθ̂ − β_i)
  gpirt   λ·anchor + (1 − λ)·pirt,  λ = b̂²/(σ̂² + b̂²)
  mpirt   pirt with θ̂ = Σ_j λ_j θ_j restricted to the span of the endpoints' abilities
  gmpirt  δ·anchor + (1 − δ)·mpirt
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from evo_merge.errors import UserError
from evo_merge.irt.ability import map_logistic
from evo_merge.irt.anchors import Anchors
from evo_merge.irt.model import ABILITY_PRIOR_SD, IRTModel
from evo_merge.irt.responses import RESERVED_SCENARIO, ResponseMatrix, binarise, validate_responses

KINDS = ("anchor", "pirt", "gpirt", "mpirt", "gmpirt")
# prior on mp-IRT's coefficients λ: centred on the plain average 1/k, weak along the endpoints'
# affine hull (merges interpolate), tight on Σλ (a merge is not a rescaled endpoint)
MERGE_COEF_SD = 0.5
MERGE_SUM_SD = 0.05
SIMULATED_MERGES = 200  # merges drawn in the endpoints' span to measure mp-IRT's error for δ
MERGE3_DELTA = 0.5


def _shrink_weight(error: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """b²/(σ² + b²): how much to trust the anchor mean over the IRT prediction."""
    return error**2 / np.maximum(variance + error**2, 1e-12)


class Estimator:
    """Accuracy estimates from anchor scores: `estimate({item: score}) -> {scenario: value, "overall": value}`."""

    def __init__(
        self,
        model: IRTModel,
        anchors: Anchors,
        kind: str = "gpirt",
        endpoints: Sequence[str] | pd.DataFrame | None = None,
        gmp_delta: float | str = "auto",
        seed: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise UserError(f"unknown estimator {kind!r} (choose from {', '.join(KINDS)})")
        if gmp_delta != "auto" and not (isinstance(gmp_delta, (int, float)) and 0.0 <= gmp_delta <= 1.0):
            raise UserError(f"gmp-IRT delta must be 'auto' or a number in [0, 1], not {gmp_delta!r}")
        self.model, self.anchors, self.kind = model, anchors, kind
        self.scenarios = model.scenarios
        unknown = set(anchors.items) ^ set(self.scenarios)
        if unknown:
            raise UserError(f"anchors and IRT model disagree on scenario {sorted(unknown)[0]!r}")
        self.anchor_ids = [i for s in self.scenarios for i in anchors.items[s]]
        self.anchor_idx = model.item_index(self.anchor_ids)
        self.weights = np.array([w for s in self.scenarios for w in anchors.weights[s]])
        code = {s: k for k, s in enumerate(self.scenarios)}
        item_code = np.array([code[s] for s in model.item_scenarios])
        self._item_onehot = np.eye(len(self.scenarios))[item_code]  # (items, K)
        self._anchor_onehot = self._item_onehot[self.anchor_idx]  # (n, K)
        self.sizes = self._item_onehot.sum(axis=0)
        self._thresholds = model.item_thresholds(self.anchor_idx)

        self.endpoint_theta = None if endpoints is None else self._endpoint_abilities(endpoints)
        if kind in ("mpirt", "gmpirt") and self.endpoint_theta is None:
            raise UserError(f"estimator {kind} needs endpoint subjects (--endpoints)")
        self.anchor_variance = self._anchor_variance()
        self.lam = self._gp_lambda() if kind == "gpirt" else None
        if kind == "gmpirt":
            fixed = gmp_delta != "auto"
            self.delta = np.full(len(self.scenarios), float(gmp_delta)) if fixed else self._gmp_delta(seed)

    # ---- setup ---------------------------------------------------------------------------
    def _endpoint_abilities(self, endpoints: Sequence[str] | pd.DataFrame) -> np.ndarray:
        """θ of the endpoints on all items: training subjects by id, or fitted on full response rows."""
        if isinstance(endpoints, pd.DataFrame):
            matrix = ResponseMatrix.from_long(validate_responses(endpoints, "endpoint responses"), self.model.item_ids)
            return self.model.fit_abilities(matrix.scores, np.arange(len(self.model.item_ids)))
        lookup = {s: j for j, s in enumerate(self.model.subject_ids)}
        missing = [s for s in endpoints if s not in lookup]
        if missing:
            raise UserError(f"endpoint subject {missing[0]} is not among the IRT model's training subjects")
        if not endpoints:
            raise UserError("no endpoint subjects given")
        return self.model.theta[[lookup[s] for s in endpoints]]

    def scenario_means(self, scores: np.ndarray) -> np.ndarray:
        """Mean observed score per scenario (S, K) of full rows of scores (S, items)."""
        observed = ~np.isnan(scores)
        with np.errstate(invalid="ignore"):  # NaN where a subject has no item of the scenario
            return (np.where(observed, scores, 0.0) @ self._item_onehot) / (observed @ self._item_onehot)

    def _anchor_variance(self) -> np.ndarray:
        """σ̂² = v̂/n (random anchors) or v̂/(4n) (clustered anchors).

        v̂ is the training subjects' mean across-item variance of scores in the scenario.
        """
        resp = self.model.responses
        observed = ~np.isnan(resp)
        y = np.where(observed, resp, 0.0)
        count = observed @ self._item_onehot
        mean = (y @ self._item_onehot) / count
        var = ((y**2) @ self._item_onehot) / count - mean**2
        v_hat = np.nanmean(var, axis=0)
        n = self._anchor_onehot.sum(axis=0)
        return v_hat / (n * (4.0 if self.anchors.clustered else 1.0))

    def _gp_lambda(self) -> np.ndarray:
        """λ from the p-IRT error on the held-out half of the training subjects.

        Item parameters are those fitted without that half, so b̂ is an honest validation error.
        """
        held = self.model.responses[self.model.val_subjects]
        theta = self._fit_theta(held[:, self.anchor_idx], self.model.val_alpha, self.model.val_beta)
        pirt = self._pirt(held[:, self.anchor_idx], theta, self.model.val_alpha, self.model.val_beta)
        b_hat = np.nanmean(np.abs(pirt - self.scenario_means(held)), axis=0)
        return _shrink_weight(b_hat, self.anchor_variance)

    def _gmp_delta(self, seed: int) -> np.ndarray:
        """δ like λ, with b̂ the mp-IRT error on simulated merges drawn in the endpoints' span."""
        rng = np.random.default_rng(seed)
        coef = rng.dirichlet(np.ones(self.endpoint_theta.shape[0]), SIMULATED_MERGES)
        prob = self.model.predict(coef @ self.endpoint_theta)
        sampled = (rng.random(prob.shape) < prob).astype(float)
        anchor_scores = sampled[:, self.anchor_idx]
        theta = self._fit_theta(anchor_scores, self.model.alpha, self.model.beta)
        mp = self._pirt(anchor_scores, theta, self.model.alpha, self.model.beta)
        b_hat = np.abs(mp - self.scenario_means(sampled)).mean(axis=0)
        return _shrink_weight(b_hat, self.anchor_variance)

    # ---- estimation ----------------------------------------------------------------------
    def _fit_theta(self, anchor_scores: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        binary = binarise(anchor_scores, self._thresholds)
        a, b = alpha[self.anchor_idx], beta[self.anchor_idx]
        if self.kind in ("mpirt", "gmpirt"):
            ends = self.endpoint_theta
            k = ends.shape[0]
            prec = np.eye(k) / MERGE_COEF_SD**2 + np.ones((k, k)) / MERGE_SUM_SD**2
            coef = map_logistic(a @ ends.T, b, binary, np.full(k, 1.0 / k), prec)
            return coef @ ends
        dims = a.shape[1]
        return map_logistic(a, b, binary, np.zeros(dims), np.eye(dims) / ABILITY_PRIOR_SD**2)

    def _pirt(self, anchor_scores: np.ndarray, theta: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Seen scores plus predicted unseen ones, over N: the p-IRT estimate (S, K)."""
        observed = ~np.isnan(anchor_scores)
        prob = 1.0 / (1.0 + np.exp(-(theta @ alpha.T - beta)))
        predicted_unseen = prob @ self._item_onehot - (prob[:, self.anchor_idx] * observed) @ self._anchor_onehot
        seen = np.where(observed, anchor_scores, 0.0) @ self._anchor_onehot
        return (seen + predicted_unseen) / self.sizes

    def estimate_matrix(self, anchor_scores: np.ndarray) -> np.ndarray:
        """Estimates (S, K) for rows of scores on `anchor_ids` (NaN = not evaluated)."""
        observed = ~np.isnan(anchor_scores)
        weighted = np.where(observed, anchor_scores, 0.0) * self.weights
        with np.errstate(invalid="ignore"):  # a scenario with no scored anchor gives NaN
            anchor = (weighted @ self._anchor_onehot) / ((observed * self.weights) @ self._anchor_onehot)
        if self.kind == "anchor":
            return anchor
        theta = self._fit_theta(anchor_scores, self.model.alpha, self.model.beta)
        irt = self._pirt(anchor_scores, theta, self.model.alpha, self.model.beta)
        if self.kind in ("pirt", "mpirt"):
            return irt
        mix = self.lam if self.kind == "gpirt" else self.delta
        return mix * anchor + (1.0 - mix) * irt

    def estimate(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Per-scenario estimates and their item-count-weighted mean under "overall"."""
        row = np.array([scores.get(item, np.nan) for item in self.anchor_ids], dtype=float)
        bad = ~np.isnan(row) & ((row < 0) | (row > 1))
        if bad.any():
            raise UserError(f"score {row[bad][0]} of item {self.anchor_ids[int(np.argmax(bad))]} is out of [0, 1]")
        values = self.estimate_matrix(row[None, :])[0]
        if np.isnan(values).any():
            scenario = self.scenarios[int(np.argmax(np.isnan(values)))]
            raise UserError(f"no anchor item of scenario {scenario!r} was scored")
        out = dict(zip(self.scenarios, values.tolist()))
        out[RESERVED_SCENARIO] = float(values @ self.sizes / self.sizes.sum())
        return out


def estimate_table(estimator: Estimator, responses: pd.DataFrame) -> pd.DataFrame:
    """Estimates for every subject of a validated long table: columns subject,scenario,estimator,estimate."""
    matrix = ResponseMatrix.from_long(responses, estimator.model.item_ids)
    values = estimator.estimate_matrix(matrix.scores[:, estimator.anchor_idx])
    if np.isnan(values).any():
        s, k = np.argwhere(np.isnan(values))[0]
        scenario = estimator.scenarios[k]
        raise UserError(f"subject {matrix.subjects[s]} has no scored anchor item in scenario {scenario!r}")
    overall = values @ estimator.sizes / estimator.sizes.sum()
    frame = pd.DataFrame(np.column_stack([values, overall]), index=matrix.subjects,
                         columns=[*estimator.scenarios, RESERVED_SCENARIO])
    long = frame.rename_axis("subject").reset_index()
    long = long.melt(id_vars="subject", var_name="scenario", value_name="estimate")
    long.insert(2, "estimator", estimator.kind)
    return long.sort_values(["subject"], kind="stable").reset_index(drop=True)
