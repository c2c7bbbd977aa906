"""Estimators against hand-computed values, invariants, and the mp-IRT advantage on merges."""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from evo_merge.errors import UserError
from evo_merge.irt import (
    Anchors,
    Estimator,
    IRTModel,
    select_anchors,
    validate_responses,
)
from evo_merge.irt.estimators import estimate_table
from evo_merge.irt.model import ABILITY_PRIOR_SD
from evo_merge.irt.responses import ResponseMatrix
from evo_merge.irt.synthetic import make_synthetic_irt, synthetic_abilities
from evo_merge.irt.validation import random_baseline


def test_anchor_and_pirt_match_hand_computation(make_model):
    alpha, beta = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.0, 1.0, -1.0, 0.5])
    model = make_model(alpha, beta)
    anchors = Anchors("kmeans-irt", 2, 0, {"all": ["q0", "q1"]}, {"all": [0.25, 0.75]})
    scores = {"q0": 1.0, "q1": 0.0}
    assert Estimator(model, anchors, "anchor").estimate(scores)["all"] == pytest.approx(0.25)

    def neg_post(t):  # y = (1, 0) on items 0, 1, prior N(0, ABILITY_PRIOR_SD²)
        logit = alpha[:2] * t[0] - beta[:2]
        return (
            -(logit[0] - np.logaddexp(0, logit[0]) - np.logaddexp(0, logit[1])) + 0.5 * t[0] ** 2 / ABILITY_PRIOR_SD**2
        )

    theta = minimize(neg_post, [0.0]).x[0]
    unseen = expit(alpha[2:] * theta - beta[2:]).mean()
    expected = 0.5 * 0.5 + 0.5 * unseen  # (n/N)·mean(seen) + (1 − n/N)·mean σ(unseen)
    got = Estimator(model, anchors, "pirt").estimate(scores)
    assert got["all"] == pytest.approx(expected, abs=1e-6)
    assert got["overall"] == got["all"]


def test_a_row_missing_anchors_grows_its_anchor_variance_by_the_weighted_effective_sizes(make_model):
    """n_eff = (Σw)²/Σw² of the set over that of the anchors a row scored, by hand, with unequal
    weights: counted unweighted, a row that scored every anchor got 0.96-0.98 instead of 1 on
    stratified-irt anchors, every candidate's SE too small (audit 147)."""
    model = make_model(np.ones(4), np.zeros(4))
    anchors = Anchors("kmeans-irt", 3, 0, {"all": ["q0", "q1", "q2"]}, {"all": [0.5, 0.25, 0.25]})
    rows = np.array([[1.0, 0.0, 1.0], [np.nan, 0.0, 1.0], [1.0, np.nan, 1.0], [np.nan] * 3])
    whole = 1.0 / 0.375  # (0.5 + 0.25 + 0.25)² / (0.25 + 0.0625 + 0.0625)
    factor = Estimator(model, anchors, "anchor").anchor_variance_factor(rows)[:, 0]
    assert factor[:3] == pytest.approx([1.0, whole / (0.5**2 / 0.125), whole / (0.75**2 / 0.3125)])
    assert np.isinf(factor[3])


def test_all_items_seen_gives_the_exact_mean(two_scenarios):
    *_, responses, model = two_scenarios
    anchors = select_anchors(model, 1000, "random")
    row = ResponseMatrix.from_long(responses, model.item_ids).scores[0]
    for kind in ("anchor", "pirt", "gpirt"):
        est = Estimator(model, anchors, kind).estimate(dict(zip(model.item_ids, row)))
        assert est["s0"] == pytest.approx(row[:100].mean()) and est["s1"] == pytest.approx(row[100:].mean())


def test_gpirt_is_a_convex_mix_per_scenario_and_its_overall_leans_on_the_anchors_by_mu(two_scenarios):
    """Per scenario λ·anchor + (1 − λ)·pirt. The overall is μ·A + (1 − μ)·M, A and M the size-weighted
    means of the anchor means and of the mixes, μ = [Var Σwβ − Cov(Σwε, Σvε)]/[Var Σwε + Var Σwβ]
    with w = s(1 − λ), v = sλ, ε the anchor means' errors (SDs σ̂, correlated ρ_a) and β the IRT
    part's (b̂, ρ_b): hand-computed for two equal scenarios on clustered anchors (the calibration's
    σ̂², b̂², λ)."""
    gen, _, responses, model = two_scenarios
    anchors = select_anchors(model, 10, "kmeans-irt")
    theta, ids = synthetic_abilities(5, dims=2, seed=99)
    matrix = ResponseMatrix.from_long(gen.sample(theta, ids, seed=98), model.item_ids)
    ests = {k: Estimator(model, anchors, k) for k in ("anchor", "pirt", "gpirt")}
    rows = matrix.scores[:, ests["gpirt"].anchor_idx]
    out = {k: e.estimate_matrix(rows) for k, e in ests.items()}
    gp = ests["gpirt"]
    lam = gp.lam
    assert ((0 <= lam) & (lam <= 1)).all()
    np.testing.assert_allclose(out["gpirt"], lam * out["anchor"] + (1 - lam) * out["pirt"])
    singles = {k: e.estimate(dict(zip(e.anchor_ids, rows[0]))) for k, e in ests.items()}
    for kind in ("anchor", "pirt"):  # 100 items each
        assert singles[kind]["overall"] == pytest.approx((singles[kind]["s0"] + singles[kind]["s1"]) / 2)
    (sa0, sa1), (sb0, sb1) = np.sqrt(gp.anchor_variance), np.sqrt(gp.irt_error)
    ra, rb = gp.anchor_correlation, gp.irt_correlation
    (w0, w1), (v0, v1) = 0.5 * (1 - lam), 0.5 * lam
    var_w_eps = w0**2 * sa0**2 + w1**2 * sa1**2 + 2 * ra * w0 * w1 * sa0 * sa1
    var_w_beta = w0**2 * sb0**2 + w1**2 * sb1**2 + 2 * rb * w0 * w1 * sb0 * sb1
    cov_w_v = w0 * v0 * sa0**2 + w1 * v1 * sa1**2 + ra * (w0 * v1 + w1 * v0) * sa0 * sa1
    mu = np.clip((var_w_beta - cov_w_v) / (var_w_eps + var_w_beta), 0, 1)
    assert 0 < mu < 1
    anchor_mean, mixes = singles["anchor"]["overall"], (singles["gpirt"]["s0"] + singles["gpirt"]["s1"]) / 2
    assert singles["gpirt"]["overall"] == pytest.approx(mu * anchor_mean + (1 - mu) * mixes)


def test_with_independent_scenarios_gpirt_s_overall_is_the_mean_of_its_scenarios(two_scenarios):
    """Each λ_k = b²/(σ² + b²) is the best weight of its scenario, so with the scenarios' errors
    independent (correlations set to 0) μ is 0 and the overall is the size-weighted mean of the mixes;
    with the IRT errors moving together (1), it leans on the overall anchor mean."""
    gen, _, _, model = two_scenarios
    est = Estimator(model, select_anchors(model, 10, "stratified"), "gpirt")
    theta, ids = synthetic_abilities(6, dims=2, seed=41)
    rows = ResponseMatrix.from_long(gen.sample(theta * 2.0, ids, seed=42), model.item_ids).scores[:, est.anchor_idx]
    anchor = Estimator(model, est.anchors, "anchor").estimate_with_overall(rows)[0][:, -1]
    est.anchor_correlation, est.irt_correlation = 0.0, 0.0
    values = est.estimate_with_overall(rows)[0]
    np.testing.assert_allclose(values[:, -1], est.overall(values[:, :-1]))
    est.irt_correlation = 1.0
    together = est.estimate_with_overall(rows)[0][:, -1]
    assert (np.abs(together - anchor) <= np.abs(values[:, -1] - anchor) + 1e-12).all()
    assert (np.abs(together - anchor) < np.abs(values[:, -1] - anchor)).any()


def test_all_correct_or_all_wrong_anchors_give_finite_sensible_estimates(torch_model):
    anchors = select_anchors(torch_model, 15, "kmeans-irt")
    est = Estimator(torch_model, anchors, "pirt")
    high = est.estimate({i: 1.0 for i in est.anchor_ids})["s0"]
    low = est.estimate({i: 0.0 for i in est.anchor_ids})["s0"]
    assert 0 < low < 0.25 and 0.75 < high < 1


def _merge_setup():
    gen = make_synthetic_irt(200, dims=3, seed=1)
    theta, ids = synthetic_abilities(60, dims=3, seed=2)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=3)), dims=3)
    weights = np.random.default_rng(5).dirichlet(np.ones(2), 60)
    merged = gen.sample(weights @ theta[:2], [f"x{j}" for j in range(60)], seed=9)
    return model, ids[:2], ResponseMatrix.from_long(merged, model.item_ids), gen.sample(theta[:2], ids[:2], seed=3)


def test_mpirt_beats_pirt_on_merges_in_the_endpoints_span():
    model, endpoints, merged, endpoint_rows = _merge_setup()
    errors = {"pirt": [], "mpirt": [], "gmpirt": []}
    for seed in range(3):
        anchors = select_anchors(model, 10, "random", seed=seed)
        for kind in errors:
            est = Estimator(model, anchors, kind, endpoints=endpoints)
            pred = est.estimate_matrix(merged.scores[:, est.anchor_idx])
            errors[kind].append(np.abs(pred - est.scenario_means(merged.scores)).mean())
    mae = {k: float(np.mean(v)) for k, v in errors.items()}
    assert mae["mpirt"] < 0.8 * mae["pirt"], mae
    assert mae["gmpirt"] < mae["pirt"], mae

    # endpoints given as full response rows instead of training ids: nearly the same estimates
    mp = Estimator(model, anchors, "mpirt", endpoints=endpoints)
    rows = merged.scores[:, mp.anchor_idx]
    by_rows = Estimator(model, anchors, "mpirt", endpoints=endpoint_rows)
    assert np.abs(by_rows.estimate_matrix(rows) - mp.estimate_matrix(rows)).mean() < 0.03

    half = Estimator(model, anchors, "gmpirt", endpoints=endpoints, gmp_delta=0.5)
    anchor = Estimator(model, anchors, "anchor").estimate_matrix(rows)
    np.testing.assert_allclose(half.estimate_matrix(rows), 0.5 * anchor + 0.5 * mp.estimate_matrix(rows))


def test_estimate_is_fast(torch_model):
    est = Estimator(torch_model, select_anchors(torch_model, 100, "kmeans-irt"), "gpirt")
    scores = {i: float(j % 2) for j, i in enumerate(est.anchor_ids)}
    est.estimate(scores)
    start = time.perf_counter()
    for _ in range(20):
        est.estimate(scores)
    assert (time.perf_counter() - start) / 20 < 0.05


def test_estimator_errors(two_scenarios):
    model = two_scenarios[3]
    anchors = select_anchors(model, 5, "random")
    with pytest.raises(UserError, match="unknown estimator 'magic'"):
        Estimator(model, anchors, "magic")
    with pytest.raises(UserError, match="needs endpoint subjects"):
        Estimator(model, anchors, "mpirt")
    with pytest.raises(UserError, match="endpoint subject nobody is not among"):
        Estimator(model, anchors, "mpirt", endpoints=["nobody"])
    est = Estimator(model, anchors, "gpirt")
    with pytest.raises(UserError, match="no anchor item of scenario 's1' was scored"):
        est.estimate({i: 1.0 for i in anchors.items["s0"]})
    with pytest.raises(UserError, match="out of \\[0, 1\\]"):
        est.estimate({i: 2.0 for i in est.anchor_ids})
    partial = Anchors("random", 5, 0, {"s0": anchors.items["s0"]}, {"s0": anchors.weights["s0"]})
    with pytest.raises(UserError, match="disagree on scenario 's1'"):
        Estimator(model, partial, "anchor")


def test_random_sampling_variance_counts_effective_items(make_model):
    """v̂·(1 − n/N)/n_eff·N/(N − 1) with n_eff = (Σw)²/Σw²: with equal weights, the variance of the
    mean of 2 of 4 items over every pair they can be, averaged over the subjects (it was 3/4 of it,
    the item variance taken over N, not N − 1); hand-computed for unequal weights."""
    responses = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=float)
    model = make_model(np.ones(4), np.zeros(4), responses=responses)
    pairs = list(itertools.combinations(range(4), 2))
    exact = np.mean([np.var([r[list(pair)].mean() for pair in pairs]) for r in responses])
    v_hat = np.mean([r.var() for r in responses])  # across-item variance per subject (over N), averaged
    for weights, n_eff in (([0.5, 0.5], 2.0), ([0.9, 0.1], 1 / 0.82)):
        anchors = Anchors("random", 2, 0, {"all": ["q0", "q1"]}, {"all": weights})
        est = Estimator(model, anchors, "anchor")
        got = est.random_sampling_variance()
        assert got[0] == pytest.approx(v_hat * 0.5 / n_eff * 4 / 3)
        if n_eff == 2.0:
            assert got[0] == pytest.approx(exact)


def test_random_sampling_variance_at_the_smallest_scenarios(make_model):
    """One of 2 items: the variance over the two one-item samples, the factor 2 included; a 1-item
    scenario anchored whole: no sampling error, not 0/0 (audit 92: both edges were untested)."""
    responses = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=float)
    model = make_model(np.ones(3), np.zeros(3), responses=responses, scenarios=["a", "b", "b"])
    anchors = Anchors("random", 1, 0, {"a": ["q0"], "b": ["q1"]}, {"a": [1.0], "b": [1.0]})
    got = Estimator(model, anchors, "anchor").random_sampling_variance()
    assert got[0] == 0.0
    assert got[1] == pytest.approx(np.mean([np.var([r[1], r[2]]) for r in responses]))


def test_measured_errors_are_out_of_sample_and_the_se_is_calibrated():
    """12 calibration subjects, new subjects from a shifted population: the gp-IRT SE per scenario
    is within a factor 2 of the error it makes on them, and the anchor part's measured error is
    not the in-sample one (near 0 for clustered anchors on their own calibration subjects)."""
    gen = make_synthetic_irt(800, dims=2, n_scenarios=2, heterogeneous=True, seed=3)
    theta, ids = synthetic_abilities(12, dims=2, seed=4)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=5)))
    new_theta = synthetic_abilities(300, dims=2, seed=6)[0] * 1.3 + 0.3
    new = ResponseMatrix.from_long(gen.sample(new_theta, [f"n{j}" for j in range(300)], seed=7), model.item_ids)
    for method in ("kmeans-irt", "random"):
        est = Estimator(model, select_anchors(model, 20, method), "gpirt")
        err = est.estimate_matrix(new.scores[:, est.anchor_idx]) - est.scenario_means(new.scores)
        rmse = np.sqrt((err**2).mean(axis=0))
        ratio = rmse / est.scenario_se
        assert (ratio > 0.5).all() and (ratio < 2.0).all(), (method, rmse, est.scenario_se)
        anchor_only = Estimator(model, est.anchors, "anchor")
        assert (anchor_only.scenario_se > 0.01).all()


def test_the_overall_se_counts_that_a_subject_s_scenarios_err_together():
    """One θ̂ drives every scenario's estimate, so their errors move together: taken as independent,
    the SE of `overall` (a campaign task's SE) was about half its error. With the correlation the
    cross-fit measures, the RMS SE of `overall` matches its RMS error on new subjects, over 5 anchor
    draws (one draw's error is shared by every subject: 0.74-0.86 of it on single draws here)."""
    gen = make_synthetic_irt(1200, dims=2, n_scenarios=4, seed=11)
    theta, ids = synthetic_abilities(60, dims=2, seed=12)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=13)), dims=2, seed=0)
    new = ResponseMatrix.from_long(gen.sample(synthetic_abilities(200, dims=2, seed=14)[0],
                                              [f"n{j}" for j in range(200)], seed=15), model.item_ids)
    rms = lambda x: float(np.sqrt((np.concatenate(x) ** 2).mean()))  # noqa: E731
    for kind in ("pirt", "gpirt"):  # the overall of one θ̂; gp-IRT's mixed again at the overall level
        error, se, independent = [], [], []
        for seed in range(5):
            est = Estimator(model, select_anchors(model, 30, "stratified", seed=seed), kind)
            values, ses = est.estimate_with_overall(new.scores[:, est.anchor_idx])
            error.append(values[:, -1] - est.overall(est.scenario_means(new.scores)))
            se.append(ses[:, -1])
            independent.append(np.sqrt(((est.share * ses[:, :-1]) ** 2).sum(axis=1)))
            assert 0.3 < est.scenario_correlation < 1
        assert rms(independent) < 0.8 * rms(error), kind  # the old SE: too small
        assert 0.8 < rms(se) / rms(error) < 1.25, (kind, rms(se), rms(error))


def test_a_calibration_subject_missing_a_scenario_leaves_the_measured_correlations_as_they_were():
    """The cross-fit's errors are NaN where a held-out subject has no item in a scenario; the
    correlations are taken over the known cells (one NaN set both to 0, and the SEs shrank)."""
    gen = make_synthetic_irt(600, dims=2, n_scenarios=3, seed=21)
    theta, ids = synthetic_abilities(40, dims=2, seed=22)
    responses = validate_responses(gen.sample(theta, ids, seed=23))
    gap = responses[~((responses.subject == ids[5]) & (responses.scenario == responses.scenario.iloc[0]))]
    correlations = []
    for table in (responses, gap):
        model = IRTModel.fit(validate_responses(table), dims=2, seed=0)
        with warnings.catch_warnings():  # the missing cell is skipped, not warned about (numpy's 0/0)
            warnings.simplefilter("error", RuntimeWarning)
            est = Estimator(model, select_anchors(model, 20, "stratified", seed=0), "gpirt")
        correlations.append((est.parts_correlation, est.scenario_correlation))
    assert min(correlations[0]) > 0.2
    np.testing.assert_allclose(correlations[1], correlations[0], atol=0.1)


def test_a_negative_measured_correlation_counts_as_none():
    """The correlations the cross-fit measures (errors about 0, over the cells both know) are kept
    in [0, 1]: a negative one, measured on few calibration subjects, is noise, and taking it would
    cancel variance in the SEs (their covariance terms) and make them smaller than the errors."""
    from evo_merge.irt.estimators import _correlation, _cross_correlation

    nan = float("nan")
    assert _correlation(np.array([1.0, -2.0, 2.0]), np.array([-1.0, 2.0, -2.0])) == 0.0  # -1 measured
    assert _correlation(np.array([1.0, 2.0, -1.0]), np.array([1.0, -1.0, 1.0])) == 0.0  # -2 / sqrt(18)
    # (1*1 + 0*1) / sqrt(1 * 2): about 0 (bias counts), over the cells both know
    assert _correlation(np.array([1.0, 0.0, nan]), np.array([1.0, 1.0, 5.0])) == pytest.approx(1 / np.sqrt(2))
    errors = np.array([[1.0, -1.0, 1.0], [2.0, -2.0, 2.0], [-1.0, 1.0, 0.0]])
    # pairs (0, 1): -1 -> 0; (0, 2): (1 + 4) / sqrt(6 * 5); (1, 2): -5 / sqrt(30) -> 0
    assert _cross_correlation(errors) == pytest.approx(5 / np.sqrt(30) / 3)


def test_all_items_seen_gives_zero_se(two_scenarios):
    model = two_scenarios[3]
    anchors = select_anchors(model, 1000, "random")
    for kind in ("anchor", "gpirt"):
        est = Estimator(model, anchors, kind).estimate({i: 1.0 for i in model.item_ids})
        assert est.se == pytest.approx({"s0": 0.0, "s1": 0.0, "overall": 0.0}, abs=1e-9)


def _irt_base(est, a):
    """b̂² per subject and scenario, by hand: the measured IRT errors pooled (4 subjects' weight) with
    the random-sampling error at the larger of the calibration subjects' spread and the subject's
    own p̃(1 − p̃), p̃ = (n_eff·a + 1)/(n_eff + 2)."""
    p = (est._n_eff * a + 1) / (est._n_eff + 2)
    prior = np.fmax(est.random_sampling_variance(), p * (1 - p) * est._sampling)
    m = (~np.isnan(est._irt_sq)).sum(axis=0)
    return (np.nansum(est._irt_sq, axis=0) + 4.0 * prior) / (m + 4.0)


def test_gpirt_on_sampled_anchors_weighs_each_subject_by_its_own_disagreement(two_scenarios):
    """b² per subject = b̂²·(1 + κ)/2, κ = mean over scenarios of max((anchor − pirt)² − σ², 0)/b̂²,
    σ² the subject's anchor-mean error² (the anchor estimator's SE²); λ and the SE follow from both
    per subject (hand-computed from the anchor and p-IRT estimates), the SE with the covariance of
    the two parts (θ̂ is fitted on the anchors the mean is taken over)."""
    gen, _, _, model = two_scenarios
    anchors = select_anchors(model, 10, "stratified")
    theta, ids = synthetic_abilities(6, dims=2, seed=41)
    rows = ResponseMatrix.from_long(gen.sample(theta * 3.0, ids, seed=42), model.item_ids).scores
    est = {k: Estimator(model, anchors, k) for k in ("anchor", "pirt", "gpirt")}
    rows = rows[:, est["gpirt"].anchor_idx]
    (a, anchor_se), p = est["anchor"].estimate_rows(rows), est["pirt"].estimate_matrix(rows)
    s2, b2 = anchor_se**2, _irt_base(est["gpirt"], a)
    kappa = (np.maximum((a - p) ** 2 - s2, 0) / b2).mean(axis=1, keepdims=True)
    b2_subject = b2 * (1 + kappa) / 2
    lam = b2_subject / (b2_subject + s2)
    got, se = est["gpirt"].estimate_rows(rows)
    np.testing.assert_allclose(got, lam * a + (1 - lam) * p)
    rho = est["gpirt"].parts_correlation  # the two parts' errors, correlated as the cross-fit measured
    assert 0 < rho < 1
    np.testing.assert_allclose(se, np.sqrt(lam**2 * s2 + (1 - lam) ** 2 * b2_subject
                                           + 2 * lam * (1 - lam) * rho * np.sqrt(s2 * b2_subject)))
    assert np.ptp(lam, axis=0).min() > 0  # it differs between subjects
    one = est["gpirt"].estimate(dict(zip(est["gpirt"].anchor_ids, rows[2])))
    assert [one.se["s0"], one.se["s1"]] == pytest.approx(se[2].tolist())


def test_a_bias_every_scenario_shares_raises_b2_by_the_task_level_check(two_scenarios):
    """After the per-scenario b², the same check on the task's overall scores (hand-computed):
    D = Σ s_k(anchor_k − pirt_k), κ_T = max(D² − Σ s²σ², 0)/Var Σ sβ (β's SDs the per-scenario b,
    correlated as the cross-fit measured), b² × max(1, (1 + κ_T)/2). Subjects far above the
    calibration population: some have a task-level disagreement their scenarios' few anchors do
    not show (b² raised), others not (b² as it was), and λ, the overall's μ and the SEs follow."""
    gen, _, _, model = two_scenarios
    anchors = select_anchors(model, 10, "stratified", balance=1)  # a draw on which these subjects show both cases
    theta, ids = synthetic_abilities(8, dims=2, seed=41)
    rows = ResponseMatrix.from_long(gen.sample(theta + 3.0, ids, seed=42), model.item_ids).scores
    est = {k: Estimator(model, anchors, k) for k in ("anchor", "pirt", "gpirt")}
    gp = est["gpirt"]
    rows = rows[:, gp.anchor_idx]
    (a, anchor_se), p = est["anchor"].estimate_rows(rows), est["pirt"].estimate_matrix(rows)
    s2, b2, share, rho = anchor_se**2, _irt_base(gp, a), gp.share, gp.irt_correlation
    kappa = (np.maximum((a - p) ** 2 - s2, 0) / b2).mean(axis=1, keepdims=True)
    b2_subject = b2 * (1 + kappa) / 2
    d = (a - p) @ share
    expected = (1 - rho) * (share**2 * b2_subject).sum(axis=1) + rho * (share * np.sqrt(b2_subject)).sum(axis=1) ** 2
    kappa_task = np.maximum(d**2 - (share**2 * s2).sum(axis=1), 0) / expected
    factor = np.maximum((1 + kappa_task) / 2, 1)
    assert (factor > 1.2).sum() >= 2 and (factor == 1).sum() >= 4  # both cases among these subjects
    b2_task = b2_subject * factor[:, None]
    lam = b2_task / (b2_task + s2)
    got, se = gp.estimate_rows(rows)
    np.testing.assert_allclose(got, lam * a + (1 - lam) * p)
    np.testing.assert_allclose(se, np.sqrt(lam**2 * s2 + (1 - lam) ** 2 * b2_task
                                           + 2 * lam * (1 - lam) * gp.parts_correlation * np.sqrt(s2 * b2_task)))
    flagged = factor > 1  # their anchors weigh more, and their SEs grow with the error the check found
    lam_before = b2_subject / (b2_subject + s2)
    assert (lam[flagged] > lam_before[flagged]).all() and np.allclose(lam[~flagged], lam_before[~flagged])


def test_with_one_scenario_the_task_level_check_adds_nothing():
    """One scenario is the whole task: its own check has seen everything the anchors show, so b²
    stays b̂²·(1 + κ)/2, for subjects far outside the calibration population too."""
    gen = make_synthetic_irt(300, dims=1, n_scenarios=1, heterogeneous=True, seed=9)
    theta, ids = synthetic_abilities(10, dims=1, seed=10)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=11)), dims=1, seed=0)
    far, far_ids = synthetic_abilities(8, dims=1, seed=12)
    anchors = select_anchors(model, 10, "stratified", balance=1)  # a draw whose anchors these subjects' check sees
    est = {k: Estimator(model, anchors, k) for k in ("anchor", "pirt", "gpirt")}
    rows = ResponseMatrix.from_long(gen.sample(far + 3.0, far_ids, seed=13), model.item_ids).scores
    rows = rows[:, est["gpirt"].anchor_idx]
    (a, anchor_se), p = est["anchor"].estimate_rows(rows), est["pirt"].estimate_matrix(rows)
    s2, b2 = anchor_se**2, _irt_base(est["gpirt"], a)
    b2_subject = b2 * (1 + np.maximum((a - p) ** 2 - s2, 0) / b2) / 2
    assert (b2_subject > 1.5 * b2).any()  # the scenario's own check did see these subjects
    lam = b2_subject / (b2_subject + s2)
    np.testing.assert_allclose(est["gpirt"].estimate_rows(rows)[0], lam * a + (1 - lam) * p)


def test_the_task_level_check_cuts_the_error_where_every_subject_is_stronger_than_the_calibration_ones(
        monkeypatch):
    """Test subjects all far stronger than 8 calibration subjects, 8 scenarios of 4 anchors: θ̂
    extrapolates the same way in every scenario, each scenario's 4 anchors see it only within
    their noise, the task's 32 together see it. Measured (this seed, 6 anchor draws): overall MAE
    0.038 with the check against 0.040 without, per scenario 0.099 against 0.104."""
    gen = make_synthetic_irt(1200, dims=1, n_scenarios=8, heterogeneous=True, clusters=8, seed=121)
    theta, ids = synthetic_abilities(8, dims=1, seed=221)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=421)), dims=1, seed=0)
    strong = synthetic_abilities(40, dims=1, seed=321)[0] * 0.5 + 2.5
    test = ResponseMatrix.from_long(gen.sample(strong, [f"t{j}" for j in range(40)], seed=521), model.item_ids).scores

    def errors() -> np.ndarray:
        out = []
        for draw in range(6):
            est = Estimator(model, select_anchors(model, 4, "stratified", seed=draw), "gpirt")
            values = est.estimate_with_overall(test[:, est.anchor_idx])[0]
            truth = est.scenario_means(test)
            out.append([np.abs(values[:, -1] - est.overall(truth)).mean(), np.abs(values[:, :-1] - truth).mean()])
        return np.mean(out, axis=0)

    with_check = errors()
    monkeypatch.setattr(Estimator, "_task_disagreement", lambda self, anchor, *rest: np.zeros(len(anchor)))
    without = errors()
    assert (with_check < 0.97 * without).all(), (with_check, without)


def test_a_subject_unlike_the_calibration_ones_leans_on_its_sampled_anchors():
    """8 calibration subjects of narrow ability, new subjects far outside them: the IRT part
    extrapolates badly, which the calibration's cross-fit cannot see. Weighing each subject by its
    own anchors' disagreement cuts the error against the calibration's λ, and its SE stays honest
    where the calibration's SE is overconfident."""
    gen = make_synthetic_irt(1000, dims=2, n_scenarios=2, heterogeneous=True, clusters=8, seed=100)
    theta, ids = synthetic_abilities(8, dims=2, seed=200)
    model = IRTModel.fit(validate_responses(gen.sample(theta * 0.6, ids, seed=400)), seed=0)
    far = synthetic_abilities(60, dims=2, seed=300)[0] * 2.5 + np.array([1.0, -0.5])
    new = ResponseMatrix.from_long(gen.sample(far, [f"t{j}" for j in range(60)], seed=500), model.item_ids).scores
    anchors = select_anchors(model, 20, "stratified", seed=0)
    est = {k: Estimator(model, anchors, k) for k in ("anchor", "pirt", "gpirt")}
    rows = new[:, est["gpirt"].anchor_idx]
    truth = est["gpirt"].scenario_means(new)
    lam = est["gpirt"].lam
    calibration_mix = lam * est["anchor"].estimate_matrix(rows) + (1 - lam) * est["pirt"].estimate_matrix(rows)
    got, se = est["gpirt"].estimate_rows(rows)
    assert np.abs(got - truth).mean() < 0.8 * np.abs(calibration_mix - truth).mean()
    rmse = np.sqrt(((got - truth) ** 2).mean(axis=0))
    assert (0.7 < rmse / np.sqrt((se**2).mean(axis=0))).all() and (rmse / np.sqrt((se**2).mean(axis=0)) < 1.4).all()
    overconfident = np.sqrt(((calibration_mix - truth) ** 2).mean(axis=0)) / est["gpirt"].scenario_se
    assert overconfident.max() > 1.4


def test_the_anchor_error_is_taken_at_the_subject_s_own_accuracy(make_model):
    """Calibration subjects that all score 0 or 1 (a skill only one endpoint has) measure an anchor
    error of 0; a subject with 3 of 4 random anchors right still has the sampling error of its own
    accuracy: p̃ = (4·0.75 + 1)/6, p̃(1 − p̃)·(1 − 4/10)/4·10/9 pooled with 4 measured zeros, hand-computed."""
    responses = np.array([[0.0] * 10, [0.0] * 10, [0.0] * 10, [1.0] * 10])
    model = make_model(np.ones(10), np.zeros(10), responses=responses)
    anchors = Anchors("random", 4, 0, {"all": ["q0", "q1", "q2", "q3"]}, {"all": [0.25] * 4})
    est = Estimator(model, anchors, "anchor")
    assert est.scenario_se[0] == 0.0  # what the calibration alone says
    for scores, right in (([1.0, 0.0, 1.0, 1.0], 3), ([0.0] * 4, 0)):
        p = (right + 1) / 6
        expected = np.sqrt(4 * p * (1 - p) * 0.6 / 4 * 10 / 9 / (4 + 4))
        got = est.estimate(dict(zip(est.anchor_ids, scores)))
        assert got["all"] == pytest.approx(right / 4)
        assert got.se["all"] == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["anchor", "gpirt"])
def test_clustered_anchors_keep_the_subject_s_own_anchor_error_in_the_se(make_model, kind):
    """The same calibration with clustered anchors: they are no random sample, so λ stays the
    calibration's, but the anchor part's error in the SE is the subject's own (it was 0: a subject
    scoring 3 of 4 where every calibration subject scored 0 or 1 was reported exact)."""
    responses = np.array([[0.0] * 10, [0.0] * 10, [0.0] * 10, [1.0] * 10])
    model = make_model(np.ones(10), np.zeros(10), responses=responses)
    anchors = Anchors("kmeans-irt", 4, 0, {"all": ["q0", "q1", "q2", "q3"]}, {"all": [0.25] * 4})
    est = Estimator(model, anchors, kind)
    got = est.estimate(dict(zip(est.anchor_ids, [1.0, 0.0, 1.0, 1.0])))
    p = 4 / 6
    anchor_se = np.sqrt(4 * p * (1 - p) * 0.6 / 4 * 10 / 9 / (4 + 4))  # as for sampled anchors, above
    lam = 1.0 if kind == "anchor" else est.lam[0]
    assert got.se["all"] == pytest.approx(np.sqrt(lam**2 * anchor_se**2 + (1 - lam) ** 2 * est.irt_error[0]))
    assert got.se["all"] >= lam * anchor_se > 0


def test_the_estimate_table_carries_each_subject_s_own_se(two_scenarios):
    """`irt estimate` writes the per-subject SE of gp-IRT on sampled anchors, the same as
    `Estimator.estimate` gives for that subject, overall included."""
    gen, _, _, model = two_scenarios
    est = Estimator(model, select_anchors(model, 10, "stratified"), "gpirt")
    theta, ids = synthetic_abilities(4, dims=2, seed=43)
    responses = gen.sample(theta * 2.5, ids, seed=44)
    table = estimate_table(est, responses).set_index(["subject", "scenario"])
    scores = ResponseMatrix.from_long(responses, model.item_ids)
    for subject, row in zip(scores.subjects, scores.scores):
        one = est.estimate(dict(zip(model.item_ids, row)))
        for scenario in ("s0", "s1", "overall"):
            assert table.loc[(subject, scenario), "se"] == pytest.approx(one.se[scenario])
            assert table.loc[(subject, scenario), "estimate"] == pytest.approx(one[scenario])
    assert table.xs("s0", level="scenario")["se"].nunique() > 1


def test_the_cross_fit_measures_anchors_of_the_same_design(two_scenarios):
    """Each fold re-chooses the anchors from its own fit, as many per scenario as the estimator's
    (its neyman allocation would spread them differently): the errors it measures are those of
    the design the estimator uses."""
    model = two_scenarios[3]
    anchors = select_anchors(model, 6, "stratified", seed=1, allocation="neyman", counts={"s0": 9, "s1": 3})
    assert anchors.counts() == {"s0": 9, "s1": 3}
    estimator = Estimator(model, anchors, "gpirt")
    for fold in range(model.cv_alpha.shape[0]):
        assert estimator._fold_anchors(fold).counts() == {"s0": 9, "s1": 3}


def test_the_overall_of_a_subject_unlike_the_calibration_ones_does_not_lose_to_random_sampling():
    """The reported failure, at the task level: with 8 calibration subjects and subjects from a
    wider, shifted population, one θ̂ biases every scenario's IRT part the same way, so the
    item-weighted mean of gp-IRT's per-scenario estimates lost to random items + plain mean (whose
    scenarios' errors average out). gp-IRT's own overall mix does not, and it is closer than that mean."""
    gen = make_synthetic_irt(2000, dims=2, n_scenarios=4, heterogeneous=True, clusters=8, seed=102)
    theta, ids = synthetic_abilities(8, dims=2, seed=202)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=402)), dims=2, seed=0)
    wide = synthetic_abilities(40, dims=2, seed=302)[0] * 1.6 + np.array([0.4, -0.2])
    test = ResponseMatrix.from_long(gen.sample(wide, [f"t{j}" for j in range(40)], seed=502), model.item_ids).scores
    budget = 10  # items per scenario (measured: 0.87x random's error, the mean of scenarios 1.13x)
    random_mae, _ = random_baseline(test, model.scenario_items(), budget, 200, 0, overall=True)
    for balance in (1, 200):  # one draw per set, as when the failure was reported; balanced, as today
        own, mean_of_scenarios = [], []
        for draw in range(5):
            est = Estimator(model, select_anchors(model, budget, "stratified", seed=draw, balance=balance), "gpirt")
            values = est.estimate_with_overall(test[:, est.anchor_idx])[0]
            truth = est.overall(est.scenario_means(test))
            own.append(np.abs(values[:, -1] - truth).mean())
            mean_of_scenarios.append(np.abs(est.overall(values[:, :-1]) - truth).mean())
        assert est.irt_correlation > 0.5  # the scenarios' IRT errors move together
        own, mean_of_scenarios = np.mean(own), np.mean(mean_of_scenarios)
        assert own < random_mae and own < mean_of_scenarios, (balance, own, random_mae, mean_of_scenarios)
        if balance == 1:  # the mean of the scenarios' estimates lost (balanced anchors: 0.93x here)
            assert random_mae < mean_of_scenarios, (own, random_mae, mean_of_scenarios)


@pytest.mark.parametrize("kind", ["anchor", "pirt", "gpirt"])
def test_a_subject_scoring_no_anchor_of_a_scenario_is_refused_by_every_kind(two_scenarios, kind):
    """p-IRT gave a subject with no scored anchor its prior, with the SE of a fully scored one."""
    model = two_scenarios[3]
    anchors = select_anchors(model, 5, "random")
    est = Estimator(model, anchors, kind)
    with pytest.raises(UserError, match="no anchor item of scenario 's1' was scored"):
        est.estimate({i: 1.0 for i in anchors.items["s0"]})


def test_the_anchor_variance_of_a_subject_that_scored_some_anchors_grows_by_the_effective_count(two_scenarios):
    """One of 10 random anchors scored per scenario kept the SE of all 10 (the estimate 8 SE off)."""
    gen, _, _, model = two_scenarios
    anchors = select_anchors(model, 10, "random")
    est = Estimator(model, anchors, "anchor")
    theta, ids = synthetic_abilities(1, dims=2, seed=43)
    row = dict(zip(model.item_ids, ResponseMatrix.from_long(gen.sample(theta, ids, seed=44), model.item_ids).scores[0]))
    full = est.estimate(row)
    kept = {s: items[:1] for s, items in anchors.items.items()}
    one = est.estimate({i: row[i] for items in kept.values() for i in items})
    # equal weights: n_eff 10 -> 1, so the variance at the subject's one-anchor means is 10x what a fully
    # scored subject with those means would get
    at_means = est._subject_anchor_variance(np.array([[one["s0"], one["s1"]]]))[0]
    for k, s in enumerate(("s0", "s1")):
        assert one.se[s] ** 2 == pytest.approx(10 * at_means[k], rel=1e-9)
        assert one.se[s] > 2.5 * full.se[s]
    gp = Estimator(model, anchors, "gpirt")
    assert all(gp.estimate({i: row[i] for items in kept.values() for i in items}).se[s] > gp.estimate(row).se[s]
               for s in ("s0", "s1"))


def test_a_scenario_every_calibration_subject_aces_keeps_an_irt_error_from_the_subject_s_own_accuracy():
    """8 calibration subjects all scoring 1.0 on a scenario: their spread there is 0, and the IRT
    part's b̂² with it; the per-subject checks only scale b̂², so a merge whose anchors said 1.0 was
    pulled to the IRT part (0.87 ± 0.04 for a true 1.0 in a campaign, λ 0.06-0.13). b̂² now pools
    the measured errors with the random-sampling error at the subject's own p̃ where that is larger
    (hand-computed), and λ there follows from it."""
    rng = np.random.default_rng(0)
    ability, beta = np.linspace(-1.5, 1.5, 8), rng.normal(0, 1, 160)
    rows = [(f"c{s}", f"e{j}", 1.0, "easy") for s in range(8) for j in range(40)]
    rows += [(f"c{s}", f"h{j}", float(rng.random() < 1 / (1 + np.exp(-(1.5 * a - beta[j])))), "hard")
             for s, a in enumerate(ability) for j in range(160)]
    model = IRTModel.fit(validate_responses(pd.DataFrame(rows, columns=["subject", "item", "score", "scenario"])),
                         dims=1, seed=0)
    est = Estimator(model, select_anchors(model, 5, "stratified"), "gpirt")
    easy = est.scenarios.index("easy")
    assert est.random_sampling_variance()[easy] == 0  # the calibration subjects' spread: none
    row = np.array([[1.0 if i.startswith("e") else float(rng.random() < 0.1) for i in est.anchor_ids]])
    anchor = est._anchor_mean(row, est.weights, est.anchor_idx)
    base = _irt_base(est, anchor)
    p = (est._n_eff[easy] * 1.0 + 1) / (est._n_eff[easy] + 2)
    assert base[0, easy] > est.irt_error[easy] and base[0, easy] == pytest.approx(
        (np.nansum(est._irt_sq[:, easy]) + 4.0 * p * (1 - p) * est._sampling[easy])
        / ((~np.isnan(est._irt_sq[:, easy])).sum() + 4.0))
    theta = est._fit_theta(row, model.alpha, model.beta, est.anchor_idx)
    irt = est._pirt(row, theta, model.alpha, model.beta, est.anchor_idx)
    s2 = est._subject_anchor_variance(anchor)
    b2 = est._subject_irt_error(anchor, irt, s2)
    lam = b2 / (b2 + s2)
    values, _ = est.estimate_rows(row)
    assert values[0, easy] == pytest.approx(lam[0, easy] * 1.0 + (1 - lam[0, easy]) * irt[0, easy])


def test_integer_ids_are_read_as_the_text_a_fitted_model_holds(make_model):
    """A table of integer item ids fits a model whose ids are text ('0', '1', ...): `estimate({0: 1.0})`
    then said no anchor was scored, and `estimate_table` on the table it was fitted on that item 0 is
    not in the model (audit 142)."""
    import dataclasses

    from evo_merge.irt import AdaptiveEstimator

    alpha, beta = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.0, 1.0, -1.0, 0.5])
    model = dataclasses.replace(make_model(alpha, beta), item_ids=["0", "1", "2", "3"])
    anchors = Anchors("kmeans-irt", 2, 0, {"all": ["0", "1"]}, {"all": [0.25, 0.75]})
    estimator = Estimator(model, anchors, "pirt")
    assert estimator.estimate({0: 1.0, 1: 0.0}) == estimator.estimate({"0": 1.0, "1": 0.0})
    table = pd.DataFrame({"subject": [7, 7], "item": [0, 1], "score": [1.0, 0.0]})
    row = estimate_table(estimator, table).set_index("scenario")
    assert row.loc["all", "subject"] == "7"
    assert row.loc["all", "estimate"] == pytest.approx(estimator.estimate({"0": 1.0, "1": 0.0})["all"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adaptive = AdaptiveEstimator(model)
    assert adaptive.estimate({2: 1.0}) == adaptive.estimate({"2": 1.0})
