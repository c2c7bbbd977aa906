"""Adaptive item selection: hand-checkable first pick, stopping rules, determinism and resuming,
honest standard errors, and fewer items than random sampling for the same error."""

from __future__ import annotations

import numpy as np
import pytest

from evo_merge.errors import UserError
from evo_merge.irt import AdaptiveEstimator, Estimator, IRTModel, validate_responses
from evo_merge.irt.adaptive import AdaptiveTest, held_out_error
from evo_merge.irt.responses import ResponseMatrix
from evo_merge.irt.synthetic import make_synthetic_irt, synthetic_abilities


def _scorer(row: np.ndarray, item_ids: list[str]):
    lookup = dict(zip(item_ids, row))
    calls = []

    def score(items):
        calls.append(list(items))
        return {i: float(lookup[i]) for i in items}

    return score, calls


def test_first_pick_is_the_most_informative_item_at_the_prior(make_model):
    # at θ = 0: p = 0.5 for β = 0, so the sharpest of those items informs most; an even sharper
    # item far off (β = 6, p ≈ 0.002) tells almost nothing
    model = make_model([0.5, 1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0, 6.0])
    test = AdaptiveTest(model, step=1, max_items=5)
    assert test.next_items({}) == ["q3"]
    assert test.next_items({"q3": 1.0}) != ["q3"]  # never an item twice


def test_stops_at_the_budget_or_the_target(two_scenarios):
    *_, responses, model = two_scenarios
    row = ResponseMatrix.from_long(responses, model.item_ids).scores[0]
    score, calls = _scorer(row, model.item_ids)
    result = AdaptiveTest(model, target_se=1e-6, max_items=12, step=5).run(score)
    assert [len(c) for c in calls] == [10, 10, 4]  # 5 per scenario per step, the last step fills 12
    assert len(result.items_used) == 24 and all(se > 1e-6 for se in result.se.values())

    score, calls = _scorer(row, model.item_ids)
    loose = AdaptiveTest(model, target_se=0.08, max_items=100, step=5).run(score)
    assert loose.se["s0"] <= 0.08 and loose.se["s1"] <= 0.08 and len(loose.items_used) < 200


def test_a_scenario_known_at_the_prior_starts_with_no_items(two_scenarios):
    *_, model = two_scenarios
    loose = AdaptiveTest(model, target_se=0.9)  # every scenario's SE is below this before any item
    assert loose.next_items({}) == []
    first = loose.first_step()
    assert all(items == [] for items in first.items.values()) and set(first.items) == set(model.scenarios)
    estimator = AdaptiveEstimator(model, target_se=0.9)
    assert estimator.anchor_ids == []


def test_a_stopping_rule_for_another_kind_is_refused_not_ignored(two_scenarios, tmp_path):
    """`Estimator(model, anchors, "gpirt", max_items=5)` ran as if no rule had been given, and `irt
    estimate --estimator adaptive --budget 10` read no anchor set of 10 without a word (audit 130)."""
    from click.testing import CliRunner

    from evo_merge.cli import cli
    from evo_merge.irt import select_anchors

    *_, model = two_scenarios
    anchors = select_anchors(model, 4, "random", seed=0)
    with pytest.raises(TypeError, match="max_items"):  # an anchor estimator takes no stopping rule: not silently
        Estimator(model, anchors, "gpirt", max_items=5, target_se=0.1)
    model.save(tmp_path / "m")
    for option in (("--budget", "10"), ("--method", "random")):
        result = CliRunner().invoke(cli, ["irt", "estimate", str(tmp_path / "m"), "--responses",
                                          str(tmp_path / "r.csv"), "--estimator", "adaptive", *option])
        refusal = f"error: {option[0]}: names a stored anchor set, which --estimator adaptive does not read"
        assert result.exit_code == 2 and result.output.startswith(refusal), result.output


def test_deterministic_given_seed_and_resumes_from_stored_scores(two_scenarios):
    _, _, responses, model = two_scenarios
    row = ResponseMatrix.from_long(responses, model.item_ids).scores[3]
    runs = []
    for _ in range(2):
        score, calls = _scorer(row, model.item_ids)
        runs.append((AdaptiveTest(model, target_se=0.02, max_items=30, seed=7).run(score), calls))
    assert runs[0][1] == runs[1][1] and runs[0][0] == runs[1][0]
    # a fresh test given the scores of the first two steps asks for exactly the third step
    calls = runs[0][1]
    stored = {i: float(row[model.item_ids.index(i)]) for i in calls[0] + calls[1]}
    assert AdaptiveTest(model, target_se=0.02, max_items=30, seed=7).next_items(stored) == calls[2]


def test_standard_errors_are_honest_when_the_model_is_right(make_model):
    """Subjects answering from the model's own item parameters: the estimate is within 2 SE of
    the subject's true mean about 95% of the time."""
    rng = np.random.default_rng(0)
    alpha, beta = rng.uniform(0.5, 2.5, 300), rng.normal(0, 1.5, 300)
    model = make_model(alpha, beta)
    test = AdaptiveTest(model, target_se=0.04, max_items=60)
    theta = rng.normal(0, 1, (60, 1))
    rows = (rng.random((60, 300)) < model.predict(theta)).astype(float)
    inside = []
    for row in rows:
        result = test.run(_scorer(row, model.item_ids)[0])
        inside.append(abs(result["all"] - row.mean()) <= 2 * result.se["all"])
    assert 0.85 <= np.mean(inside) <= 1.0, np.mean(inside)


def test_the_se_counts_the_irt_model_s_own_error_measured_on_held_out_calibration_subjects():
    """Fitted on 12 subjects, the item parameters are off in ways the posterior cannot see: new
    subjects of the same 2PL fell within 2 posterior SEs 60% of the time (its SE half the error).
    The estimator adds the error its fold fits make on the subjects each was fitted without, and
    stops as before (the same items, the same estimates)."""
    gen = make_synthetic_irt(300, dims=1, n_scenarios=2, heterogeneous=True, seed=5)
    theta, ids = synthetic_abilities(12, dims=1, seed=6)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=7)), dims=1, seed=0)
    estimator = AdaptiveEstimator(model, target_se=0.04, max_items=40)
    assert set(estimator.test.model_error) == {"s0", "s1", "overall"}
    bare = AdaptiveTest(model, target_se=0.04, max_items=40)
    new, new_ids = synthetic_abilities(60, dims=1, seed=8)
    rows = ResponseMatrix.from_long(gen.sample(new, new_ids, seed=9), model.item_ids).scores
    coverage, ratio = {}, {}
    for label, test in (("measured", estimator.test), ("posterior", bare)):
        results = [test.run(_scorer(row, model.item_ids)[0]) for row in rows]
        errors = np.array([r["overall"] - row.mean() for r, row in zip(results, rows)])
        se = np.array([r.se["overall"] for r in results])
        coverage[label], ratio[label] = np.mean(np.abs(errors) <= 2 * se), np.sqrt(np.mean(se**2) / np.mean(errors**2))
        if label == "measured":
            items = [r.items_used for r in results]
        else:
            assert [r.items_used for r in results] == items  # the same test: it stops on the posterior's part
    assert coverage["measured"] >= 0.9 and ratio["measured"] >= 0.8, (coverage, ratio)
    assert coverage["posterior"] < 0.75 and ratio["posterior"] < 0.7, (coverage, ratio)


def test_a_model_error_is_measured_only_on_held_out_subjects_with_every_answer(make_model, caplog):
    """A calibration subject missing answers cannot take a test: with none complete nothing is
    measured, the SE is the posterior's, and the estimator says so (it said nothing: audit 91)."""
    rng = np.random.default_rng(0)
    alpha, beta = rng.uniform(0.5, 2.5, 50), rng.normal(0, 1.5, 50)
    responses = (rng.random((4, 50)) < 0.5).astype(float)
    responses[:, 3] = np.nan
    model = make_model(alpha, beta, responses=responses)
    assert held_out_error(model) == {}
    with caplog.at_level("WARNING", logger="evo_merge"):
        estimator = AdaptiveEstimator(model, target_se=0.05, max_items=20)
    assert "posterior SE, which leaves out the model's own error" in caplog.text
    assert "no calibration subject held out of a fold answered every item" in caplog.text
    scores = {i: 1.0 for i in estimator.test.next_items({})}
    assert estimator.estimate(scores).se == AdaptiveTest(model, 0.05, 20).estimate(scores).se


def test_the_model_error_by_hand_where_the_test_asks_nothing(make_model):
    """A target SE of 10 asks no item, so each held-out subject's estimate is the fold's prediction
    at θ = 0 with the prior's SE: the error is, per scenario and overall (the mean over all items),
    the mean (estimate − truth)² over the subjects the fold was fitted without, less their mean
    posterior variance, and at least 0 (audit 92: six changes to it passed every test)."""
    from dataclasses import replace

    from evo_merge.irt.model import ABILITY_PRIOR_SD

    scenarios = ["a", "b", "b", "b", "c", "c"]
    fold_beta = np.array([-4.6, -4.6, -4.6, -4.6, 0.0, 0.0])  # the fold: sure of a and b, unsure of c
    responses = np.array([[1, 1, 1, 1, 1, 1],  # fitted on by the fold: never measured on
                          [0, 0, 0, 1, 1, 0],
                          [0, 0, 0, 0, 0, 1]], dtype=float)
    model = replace(make_model(np.ones(6), np.zeros(6), responses=responses, scenarios=scenarios),
                    cv_beta=fold_beta[None], cv_held=np.array([[False, True, True]]))
    p = 1 / (1 + np.exp(fold_beta))
    w = p * (1 - p)
    groups = [np.array([0]), np.array([1, 2, 3]), np.array([4, 5])]
    sizes = np.array([g.size for g in groups], dtype=float)
    share = sizes / sizes.sum()
    estimate = np.array([p[g].mean() for g in groups])
    slope, binomial = np.array([w[g].mean() for g in groups]), np.array([w[g].sum() for g in groups])
    variance = slope**2 * ABILITY_PRIOR_SD**2 + binomial / sizes**2
    overall, overall_variance = estimate @ share, (share @ slope) ** 2 * ABILITY_PRIOR_SD**2 + (
        share**2 * binomial / sizes**2).sum()
    held = responses[1:]
    truth = np.array([[row[g].mean() for g in groups] for row in held])
    expected = dict(zip("abc", np.maximum(((estimate - truth) ** 2).mean(axis=0) - variance, 0.0)))
    expected["overall"] = max(((overall - held.mean(axis=1)) ** 2).mean() - overall_variance, 0.0)
    assert expected["c"] == 0.0 and expected["a"] > 0.5  # one clamped at 0, one far off
    assert held_out_error(model, target_se=10.0) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_an_estimator_measures_the_model_error_with_its_own_seed(make_model):
    """Twelve alike items: the seeded tie-break decides which two a test asks, so the error measured
    depends on the seed, and an estimator must measure it with its own."""
    responses = (np.random.default_rng(1).random((6, 12)) < 0.5).astype(float)
    model = make_model(np.ones(12), np.zeros(12), responses=responses)
    options = {"target_se": 0.001, "max_items": 2, "step": 2}
    errors = [AdaptiveEstimator(model, seed=s, **options).test.model_error for s in range(4)]
    assert errors == [held_out_error(model, seed=s, **options) for s in range(4)]
    assert len({e["all"] for e in errors}) > 1


def test_fewer_items_than_random_sampling_for_the_same_error(md2pl, torch_model):
    gen, _, _ = md2pl
    theta, ids = synthetic_abilities(30, dims=2, seed=41)
    rows = ResponseMatrix.from_long(gen.sample(theta, ids, seed=42), torch_model.item_ids).scores
    test = AdaptiveTest(torch_model, target_se=0.035, max_items=80)
    errors, used = [], []
    for row in rows:
        result = test.run(_scorer(row, torch_model.item_ids)[0])
        errors.append(abs(result["s0"] - row.mean()))
        used.append(len(result.items_used))
    n = int(np.mean(used))
    rng = np.random.default_rng(1)
    random_errors = [abs(row[rng.choice(500, n, replace=False)].mean() - row.mean()) for row in rows for _ in range(20)]
    assert np.mean(errors) < 0.8 * np.mean(random_errors), (np.mean(errors), np.mean(random_errors), n)


def test_estimator_kind_adaptive_and_bad_input(two_scenarios):
    model = two_scenarios[3]
    est = AdaptiveEstimator(model, target_se=0.05, max_items=10, step=2)
    assert len(est.anchor_ids) == 4  # the first step: 2 per scenario
    result = est.estimate({i: 1.0 for i in est.anchor_ids})
    assert set(result) == {"s0", "s1", "overall"} and result.items_used == est.anchor_ids
    assert all(0 < v < 1 for v in result.values()) and all(v > 0 for v in result.se.values())
    with pytest.raises(UserError, match="item nope is not in the IRT model"):
        est.estimate({"nope": 1.0})
    with pytest.raises(UserError, match="out of \\[0, 1\\]"):
        est.estimate({est.anchor_ids[0]: 1.5})
    with pytest.raises(UserError, match="returned no score for item"):
        est.test.run(lambda items: {})
    with pytest.raises(UserError, match="target SE must be positive"):
        AdaptiveEstimator(model, target_se=0)
    with pytest.raises(UserError, match="needs anchors"):
        Estimator(model, None, "gpirt")
    with pytest.raises(UserError, match="^estimator adaptive chooses each subject's items itself: AdaptiveEstimator"):
        Estimator(model, None, "adaptive")
    # an adaptive test has no anchor columns shared by its subjects: no batch methods that read them
    assert not any(hasattr(est, batch) for batch in ("estimate_rows", "estimate_with_overall", "estimate_matrix"))


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_scenario_known_at_the_prior_starts_with_no_items_and_no_warning(two_scenarios):
    """An adaptive test can open with no item in a scenario (known well enough at the prior): taken
    as anchors, its anchor mean has no sample, an infinite sampling error, and no divide-by-zero on
    the way."""
    from evo_merge.irt import select_anchors
    from evo_merge.irt.anchors import Anchors

    model = two_scenarios[3]
    opening = AdaptiveEstimator(model, target_se=0.05, max_items=10, step=2).anchors
    first = model.scenarios[0]
    empty = Anchors("adaptive", 2, 0, {s: [] if s == first else v for s, v in opening.items.items()},
                    {s: [] if s == first else w for s, w in opening.weights.items()})
    est = Estimator(model, select_anchors(model, 4, "random", seed=0), "anchor")
    est._set_anchors(empty)
    assert np.isinf(est._sampling[0]) and np.isfinite(est._sampling[1:]).all()


def test_the_overall_se_follows_the_one_ability_every_scenario_shares(make_model):
    """Four scenarios driven by one θ̂ err together: the SE of `overall` from the posterior's
    covariance matches its error on subjects answering from the model, where combining the
    scenario SEs as independent (the SE before) is too small."""
    rng = np.random.default_rng(1)
    alpha, beta = rng.uniform(0.5, 2.5, 400), rng.normal(0, 1.5, 400)
    model = make_model(alpha, beta, scenarios=[f"s{j % 4}" for j in range(400)])
    test = AdaptiveTest(model, target_se=0.05, max_items=10, step=5)
    theta = rng.normal(0, 1, (120, 1))
    rows = (rng.random((120, 400)) < model.predict(theta)).astype(float)
    errors, se, independent = [], [], []
    share = np.full(4, 0.25)
    for row in rows:
        result = test.run(_scorer(row, model.item_ids)[0])
        errors.append(result["overall"] - row.mean())
        se.append(result.se["overall"])
        independent.append(np.sqrt(((share * [result.se[f"s{k}"] for k in range(4)]) ** 2).sum()))
    rmse = np.sqrt(np.mean(np.square(errors)))
    assert 0.8 < np.sqrt(np.mean(np.square(se))) / rmse < 1.25, (np.sqrt(np.mean(np.square(se))), rmse)
    assert np.sqrt(np.mean(np.square(independent))) < 0.8 * rmse


def test_an_item_of_no_ability_information_is_picked_for_its_own_noise(make_model):
    """Scoring an item removes the θ-variance it informs and its own Bernoulli noise, p(1 − p)/N²,
    from the scenario's estimate. By hand, at the prior (θ = 0, N = 2): q0 (α = 0, p = 0.5) tells
    nothing of θ and carries 0.25/4 = 0.0625 of noise; q1 (α = 0.3, β = 4, p = 0.018) removes about
    6e-8 of θ-variance and 0.0044 of noise. q0 first; by θ-information alone, q1 (audit 147)."""
    model = make_model([0.0, 0.3], [0.0, 4.0])
    assert AdaptiveTest(model, step=1, target_se=1e-6).next_items({}) == ["q0"]
