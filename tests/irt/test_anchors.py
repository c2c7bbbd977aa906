"""Anchor selection: budgets, weights as cluster/stratum shares, nearest-to-centroid picks, storage."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from evo_merge.errors import UserError
from evo_merge.irt import load_anchors, select_anchors
from evo_merge.irt.kinds import ANCHOR_METHODS


@pytest.mark.parametrize("method", ANCHOR_METHODS)
def test_every_method_gives_budget_distinct_items_per_scenario(two_scenarios, method):
    model = two_scenarios[3]
    anchors = select_anchors(model, 7, method, seed=3)
    scen_of = dict(zip(model.item_ids, model.item_scenarios))
    for scenario in ("s0", "s1"):
        items = anchors.items[scenario]
        assert len(items) == len(set(items)) == 7
        assert {scen_of[i] for i in items} == {scenario}
        assert sum(anchors.weights[scenario]) == pytest.approx(1.0)
        assert min(anchors.weights[scenario]) > 0
    assert select_anchors(model, 7, method, seed=3) == anchors  # seeded


def test_random_anchors_change_with_the_seed(two_scenarios):
    model = two_scenarios[3]
    assert select_anchors(model, 7, "random", seed=0).items != select_anchors(model, 7, "random", seed=1).items


def test_kmeans_irt_picks_the_item_nearest_each_centroid_weighted_by_cluster_share(make_model):
    rng = np.random.default_rng(0)
    centres = np.array([[0.5, -2.0], [1.5, 0.0], [3.0, 2.0]])  # (alpha, beta) of three item groups
    sizes = [10, 20, 30]
    feats = np.vstack([c + rng.normal(0, 0.05, (n, 2)) for c, n in zip(centres, sizes)])
    model = make_model(feats[:, :1], feats[:, 1])
    anchors = select_anchors(model, 3, "kmeans-irt", seed=0)
    groups = np.repeat([0, 1, 2], sizes)
    expected = {}
    for g, n in enumerate(sizes):
        members = np.flatnonzero(groups == g)
        nearest = members[np.argmin(np.linalg.norm(feats[members] - feats[members].mean(0), axis=1))]
        expected[f"q{nearest}"] = n / 60
    assert dict(zip(anchors.items["all"], anchors.weights["all"])) == pytest.approx(expected)


def test_kmeans_anchors_follow_the_item_parameters_asked_about_not_a_remembered_clustering(make_model):
    """k-means results are remembered between calls (every estimator kind re-chooses its folds'
    anchors): a model whose parameters changed, even in the same arrays in place, gets its own."""
    from evo_merge.irt import anchors as anchor_module

    rng = np.random.default_rng(3)
    alpha, beta = rng.normal(size=(60, 1)), rng.normal(size=60)
    model = make_model(alpha, beta)
    first = select_anchors(model, 4, "kmeans-irt", seed=0)
    assert select_anchors(model, 4, "kmeans-irt", seed=0) == first
    beta[:] = np.where(np.arange(60) < 30, -5.0, 5.0) + rng.normal(0, 0.5, 60)
    assert model.beta is beta
    moved = select_anchors(model, 4, "kmeans-irt", seed=0)
    assert moved != first
    anchor_module._CLUSTERS.clear()
    assert select_anchors(model, 4, "kmeans-irt", seed=0) == moved  # what k-means gives afresh


def _three_item_groups(make_model):
    """60 items in three well-separated groups of IRT parameters (10, 20, 30 items; k-means finds
    them whatever its seed), the items of each spread in difficulty."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.5, -4.0], [1.5, 0.0], [3.0, 4.0]])  # (alpha, beta) of each group
    sizes = [10, 20, 30]
    feats = np.vstack([c + np.column_stack([rng.normal(0, 0.05, n), np.linspace(-0.5, 0.5, n)])
                       for c, n in zip(centres, sizes)])
    return make_model(feats[:, :1], feats[:, 1]), np.repeat([0, 1, 2], sizes)


def test_stratified_irt_draws_random_members_of_the_clusters_weighted_by_share_over_picks(make_model):
    model, group = _three_item_groups(make_model)
    anchors = select_anchors(model, 6, "stratified-irt", seed=0)  # 6 // 2 = 3 strata: the three groups
    picked = np.array([int(i[1:]) for i in anchors.items["all"]])
    counts = np.bincount(group[picked], minlength=3)
    assert counts.tolist() == [1, 2, 3]  # picks follow the strata's sizes
    share = np.bincount(group) / group.size
    assert anchors.weights["all"] == pytest.approx([share[g] / counts[g] for g in group[picked]])  # all 1/6
    draws = {tuple(select_anchors(model, 6, "stratified-irt", seed=s).items["all"]) for s in range(5)}
    assert len(draws) == 5  # random members: the seed changes them


def test_stratified_irt_anchor_mean_is_unbiased_for_a_subject_unlike_the_calibration(make_model):
    """A subject who gets a stratum's easier half right and its harder half wrong: kmeans-irt's
    centroid items stand for their clusters with the calibration subjects' answers, not this one's,
    and miss its accuracy by the same amount on every seed; stratified-irt's mean, over seeds, is its
    accuracy (the design is unbiased for every subject: E Σ w y = Σ_h (N_h/N)·mean_h(y))."""
    model, group = _three_item_groups(make_model)
    rank = np.concatenate([np.argsort(np.argsort(model.beta[group == g])) for g in range(3)])
    size = np.bincount(group)[group]
    y = (rank < 0.3 * size).astype(float)  # the easiest 30% of each group right
    truth = y.mean()

    def anchor_mean(method, seed):
        anchors = select_anchors(model, 6, method, seed=seed)
        return float(np.dot(anchors.weights["all"], y[[int(i[1:]) for i in anchors.items["all"]]]))

    stratified = [anchor_mean("stratified-irt", s) for s in range(150)]
    kmeans = [anchor_mean("kmeans-irt", s) for s in range(5)]
    assert abs(np.mean(stratified) - truth) < 3 * np.std(stratified) / np.sqrt(len(stratified))
    assert min(abs(np.array(kmeans) - truth)) > 0.15  # the centroid items: off by as much on every seed


def test_kmeans_correctness_clusters_identical_response_columns(make_model):
    patterns = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=float).T  # 4 subjects x 3 patterns
    responses = np.repeat(patterns, [2, 5, 3], axis=1)  # item j answered like pattern groups[j]
    model = make_model(np.ones(10), np.zeros(10), responses=responses)
    anchors = select_anchors(model, 3, "kmeans-correctness", seed=0)
    group = np.repeat([0, 1, 2], [2, 5, 3])
    got = {int(group[int(i[1:])]): w for i, w in zip(anchors.items["all"], anchors.weights["all"])}
    assert got == pytest.approx({0: 0.2, 1: 0.5, 2: 0.3})


def test_stratified_takes_one_item_per_difficulty_stratum(make_model):
    means = np.linspace(0.05, 0.95, 9)
    responses = np.vstack([means] * 3)  # item mean score = means
    model = make_model(np.ones(9), np.zeros(9), responses=responses)
    anchors = select_anchors(model, 3, "stratified", seed=0)
    picked = sorted(int(i[1:]) for i in anchors.items["all"])
    assert [p // 3 for p in picked] == [0, 1, 2]  # strata {0,1,2}, {3,4,5}, {6,7,8}
    assert anchors.weights["all"] == pytest.approx([1 / 3] * 3)


def test_stratified_weighs_each_pick_by_its_stratum_s_share_of_unequal_strata(make_model):
    """10 items in 3 strata of item mean score hold 4, 3 and 3 items: a pick stands for its
    stratum, at 0.4, 0.3 and 0.3 (weighted equally, the easiest items were under-counted)."""
    means = np.linspace(0.05, 0.95, 10)
    model = make_model(np.ones(10), np.zeros(10), responses=np.vstack([means] * 3))
    anchors = select_anchors(model, 3, "stratified", seed=0)
    stratum = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # item j's stratum
    got = {stratum[int(i[1:])]: w for i, w in zip(anchors.items["all"], anchors.weights["all"])}
    assert got == pytest.approx({0: 0.4, 1: 0.3, 2: 0.3})


def test_budget_larger_than_scenario_takes_every_item(make_model):
    model = make_model(np.ones(5), np.zeros(5))
    anchors = select_anchors(model, 50, "kmeans-irt")
    assert anchors.items["all"] == [f"q{j}" for j in range(5)] and anchors.weights["all"] == pytest.approx([0.2] * 5)


def test_saving_over_another_stored_set_of_that_name_needs_overwrite(tmp_path, two_scenarios):
    model = two_scenarios[3]
    first, other = (select_anchors(model, 5, "random", seed=seed) for seed in (0, 7))
    path = first.save(tmp_path)
    assert first.save(tmp_path) == path  # the same set again: nothing to lose
    with pytest.raises(UserError, match=r"holds other random anchors of budget 5 \(seed 0 there, 7 here\)"):
        other.save(tmp_path)
    assert load_anchors(tmp_path) == first
    # what an upgrade's `irt anchors` with the same seed meets: one draw stored, a balanced set asked for
    one, balanced = (select_anchors(model, 5, "stratified", seed=0, balance=b) for b in (1, 200))
    one.save(tmp_path / "upgraded")
    with pytest.raises(UserError, match=r"\(balance 1 there, 200 here\).*settings choose it again"):
        balanced.save(tmp_path / "upgraded")
    other.save(tmp_path, overwrite=True)
    assert load_anchors(tmp_path) == other
    path.write_text("{broken")  # a damaged file holds no set to keep
    first.save(tmp_path)
    assert load_anchors(tmp_path) == first


def test_store_and_load(tmp_path, two_scenarios):
    model = two_scenarios[3]
    a = select_anchors(model, 5, "kmeans-irt")
    b = select_anchors(model, 8, "random")
    a.save(tmp_path), b.save(tmp_path)
    assert load_anchors(tmp_path, budget=5) == a
    assert load_anchors(tmp_path, method="random") == b
    with pytest.raises(UserError, match="several stored anchor sets match"):
        load_anchors(tmp_path)
    with pytest.raises(UserError, match="no stored anchor sets match"):
        load_anchors(tmp_path, budget=99)
    (tmp_path / "anchors" / "random-8.json").write_text("{broken")
    with pytest.raises(UserError, match="corrupt anchors file"):
        load_anchors(tmp_path, method="random")
    c = select_anchors(model, 4, "stratified", allocation="neyman")
    path = c.save(tmp_path)
    assert load_anchors(tmp_path, method="stratified") == c
    older = json.loads(path.read_text())
    del older["allocation"]  # written before allocations existed: every scenario got the budget
    path.write_text(json.dumps(older))
    assert load_anchors(tmp_path, method="stratified").allocation == "equal"
    path.write_text(json.dumps({**older, "allocation": "even"}))
    with pytest.raises(UserError, match="corrupt anchors file"):
        load_anchors(tmp_path, method="stratified")
    for other, what in ((json.dumps({"x": 1}), "not an anchors file .one written by `evo-merge irt anchors` "
                                                "holds method, budget, seed, items, weights, allocation"),
                        (json.dumps({**older, "extra": 1}), "not an anchors file"), ("[]", "not an anchors file")):
        path.write_text(other)  # another JSON file given as anchors: named as such, not a TypeError's text
        with pytest.raises(UserError, match=what):
            load_anchors(tmp_path, method="stratified")
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_anchors(tmp_path, method="stratified")


def test_an_item_listed_twice_in_a_stored_set_is_refused(tmp_path, two_scenarios):
    """An item listed twice (in one scenario or two) was weighed twice in every estimate, and
    counted twice by the anchors' counts and `status` (audit 133)."""
    path = select_anchors(two_scenarios[3], 6, "stratified").save(tmp_path)
    good = json.loads(path.read_text())
    first, second = good["items"]
    again = good["items"][first][0]
    for items, weights in [
        ({**good["items"], first: good["items"][first] + [again]},
         {**good["weights"], first: good["weights"][first] + [0.1]}),
        ({**good["items"], second: good["items"][second][1:] + [again]}, good["weights"]),
        # one as a number, one as text: a StopIteration traceback (audit 136)
        ({**good["items"], first: [5, "5"] + good["items"][first][2:]}, good["weights"]),
    ]:
        path.write_text(json.dumps({**good, "items": items, "weights": weights}))
        twice = "5" if 5 in items[first] else again
        with pytest.raises(UserError, match=f"{path.name}: corrupt anchors file .item '{twice}' is listed twice"):
            load_anchors(tmp_path)


def test_a_stored_sets_weights_are_checked_against_its_items(tmp_path, two_scenarios):
    """Each scenario's weights go with its items in order: a file whose lists differ in length put
    weights on other items (and scenarios) without a word, and negative or all-zero weights gave
    wrong means or "no anchor item was scored"."""
    path = select_anchors(two_scenarios[3], 6, "stratified").save(tmp_path)
    good = json.loads(path.read_text())
    first, second = good["items"]
    n_first = len(good["items"][first])
    positive = "scenario '.*': weights must be non-negative numbers with a positive sum"
    cases = [
        ({**good["weights"], first: good["weights"][first][:-1]}, f"scenario '{first}' has {n_first} items and not"),
        ({**good["weights"], first: [-1.0] + good["weights"][first][1:]}, positive),
        ({**good["weights"], second: [0] * len(good["items"][second])}, positive),
        ({**good["weights"], second: ["1"] + good["weights"][second][1:]}, positive),
        ({**good["weights"], second: [float("nan")] + good["weights"][second][1:]}, positive),
        ({first: good["weights"][first]}, "weights is not a scenario -> list of weights"),
        # JSON's Infinity loads in Python: an infinite weight made every weighted mean NaN
        ({**good["weights"], second: [float("inf")] + good["weights"][second][1:]}, positive),
        ({**good["weights"], second: [True] + good["weights"][second][1:]}, positive),  # a bool is no weight
        ({**good["weights"], second: 2}, f"scenario '{second}' has {len(good['items'][second])} items and not"),
    ]
    for weights, message in cases:
        path.write_text(json.dumps({**good, "weights": weights}))
        with pytest.raises(UserError, match=f"{path.name}: corrupt anchors file .{message}"):
            load_anchors(tmp_path)
    # a zero beside positive weights is a weight (an item no stratum needs), and a scenario of no items has none
    zero = {**good["weights"], first: [0.0] + good["weights"][first][1:]}
    path.write_text(json.dumps({**good, "weights": zero}))
    assert load_anchors(tmp_path).weights == zero
    empty = {"items": {**good["items"], "none": []}, "weights": {**good["weights"], "none": []}}
    path.write_text(json.dumps({**good, **empty}))
    assert load_anchors(tmp_path).weights["none"] == []
    path.write_text(json.dumps(good))
    assert load_anchors(tmp_path).weights == good["weights"]


def test_bad_method_or_budget(two_scenarios):
    with pytest.raises(UserError, match="unknown anchor method 'best'"):
        select_anchors(two_scenarios[3], 5, "best")
    with pytest.raises(UserError, match="positive integer"):
        select_anchors(two_scenarios[3], 0)


def test_a_numpy_integer_budget_is_a_budget_and_a_bool_is_not(two_scenarios, tmp_path):
    """np.int64(5) was refused as "a positive integer, not np.int64(5)"; it is stored as a plain 5."""
    anchors = select_anchors(two_scenarios[3], np.int64(5), "random")
    assert anchors == select_anchors(two_scenarios[3], 5, "random") and type(anchors.budget) is int
    assert json.loads(anchors.save(tmp_path).read_text())["budget"] == 5
    for budget in (True, 5.0, "5"):
        with pytest.raises(UserError, match="positive integer"):
            select_anchors(two_scenarios[3], budget, "random")


def test_kmeans_with_fewer_distinct_items_than_the_budget_still_spends_it_with_unbiased_weights():
    """Few calibration subjects make many items identical: 3 distinct kinds of 50, 30 and 20 items."""
    import warnings

    from evo_merge.irt.anchors import _clusters, _from_clusters

    kind = np.repeat([0, 1, 2], [50, 30, 20])
    features = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])[kind]
    near = features + 1e-13 * np.arange(len(kind))[:, None]  # distinct rows, but not to k-means
    for feats in (features, near):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no sklearn ConvergenceWarning about duplicate points
            members = _clusters(feats, 10, seed=0)
            picks, weights = _from_clusters(members, 10, np.random.default_rng(0), nearest_first=True)
        assert len(set(picks.tolist())) == 10
        assert sorted(np.bincount(kind[picks]).tolist()) == [2, 3, 5]  # picks follow the kinds' sizes
        assert float(weights @ kind[picks]) == pytest.approx(kind.mean())  # weighted mean = population mean


def test_choose_anchor_method_falls_back_below_the_subject_threshold(two_scenarios, caplog):
    from evo_merge.irt.anchors import MIN_CLUSTER_SUBJECTS, choose_anchor_method

    few = MIN_CLUSTER_SUBJECTS - 1
    assert choose_anchor_method("auto", MIN_CLUSTER_SUBJECTS) == ("stratified-irt", None)
    assert choose_anchor_method("auto-kmeans", MIN_CLUSTER_SUBJECTS) == ("kmeans-irt", None)
    for named in ("stratified-irt", "kmeans-irt", "kmeans-correctness", "random"):  # used as named
        assert choose_anchor_method(named, 5) == choose_anchor_method(named, 100) == (named, None)
    for requested in ("auto", "auto-kmeans"):
        method, reason = choose_anchor_method(requested, few)
        assert method == "stratified" and f"{few} calibration subjects" in reason
    with pytest.raises(UserError, match="unknown anchor method 'magic'"):
        choose_anchor_method("magic", 50)
    model = two_scenarios[3]  # 80 subjects: auto is stratified-irt, silently
    with caplog.at_level("INFO", logger="evo_merge.irt"):
        assert select_anchors(model, 5, "auto").method == "stratified-irt" and not caplog.records
    small = replace(model, subject_ids=model.subject_ids[:few], responses=model.responses[:few])
    with caplog.at_level("INFO", logger="evo_merge.irt"):
        assert select_anchors(small, 5, "auto").method == "stratified"
    assert [r.levelname for r in caplog.records if "stratified anchors instead of auto" in r.getMessage()] == ["INFO"]


def _three_scenarios(make_model):
    """60 coin-flip items, 60 items everyone gets right, 20 coin-flip items; abilities all 0."""
    beta = [0.0] * 60 + [-10.0] * 60 + [0.0] * 20
    scenarios = ["wide"] * 60 + ["sure"] * 60 + ["small"] * 20
    return make_model(np.zeros(140), beta, scenarios=scenarios)


def test_equal_allocation_gives_each_scenario_the_budget_or_all_its_items(make_model):
    from evo_merge.irt.anchors import allocate

    model = _three_scenarios(make_model)
    assert allocate(model, 5) == {"wide": 5, "sure": 5, "small": 5}
    assert allocate(model, 30) == {"wide": 30, "sure": 30, "small": 20}


def test_neyman_allocation_spends_the_same_items_where_the_overall_score_is_least_certain(make_model):
    """Among all allocations of the same 15 items (at least one per scenario), neyman's minimises
    Σ W_k² s_k²/n_k, the sampling variance of the item-weighted overall mean (checked by brute force)."""
    from evo_merge.irt.anchors import allocate

    model = _three_scenarios(make_model)
    counts = allocate(model, 5, "neyman")
    assert sum(counts.values()) == 15 and counts["sure"] == 1
    share = {"wide": 60 / 140, "sure": 60 / 140, "small": 20 / 140}
    var = {"wide": 0.25, "sure": float(1 / (1 + np.exp(-10)) * (1 - 1 / (1 + np.exp(-10)))), "small": 0.25}

    def variance(n):
        return sum(share[k] ** 2 * var[k] / n[k] for k in n)

    best = min(({"wide": a, "sure": b, "small": 15 - a - b} for a in range(1, 14) for b in range(1, 15 - a)),
               key=variance)
    assert counts == best
    anchors = select_anchors(model, 5, "stratified", allocation="neyman")
    assert {s: len(items) for s, items in anchors.items.items()} == counts and anchors.allocation == "neyman"
    assert all(sum(w) == pytest.approx(1.0) for w in anchors.weights.values())


def test_neyman_allocation_judges_a_skill_by_the_subjects_between_the_calibration_ones(make_model):
    """Base at 0 and endpoint at 1 on a sharp skill say its items never vary; a merge between
    them is at 0.5 there. The midpoint's variance (0.25) is what the allocation uses."""
    from evo_merge.irt.anchors import allocate, midpoint_probabilities

    alpha = [4.0] * 50 + [0.0] * 50
    beta = [0.0] * 50 + [2.0] * 50  # the flat scenario: p = σ(−2) for everyone
    model = make_model(alpha, beta, responses=np.zeros((2, 100)), scenarios=["sharp"] * 50 + ["flat"] * 50)
    model = replace(model, theta=np.array([[-3.0], [3.0]]))
    own = model.predict(model.theta)
    assert (own[:, :50] * (1 - own[:, :50])).max() < 0.01  # at the subjects themselves: nearly certain
    np.testing.assert_allclose(midpoint_probabilities(model)[:, :50], 0.5)
    counts = allocate(model, 4, "neyman")
    assert counts["sharp"] > counts["flat"] and sum(counts.values()) == 8


def test_neyman_allocation_counts_the_spread_of_a_scenario_s_items(make_model):
    """A scenario of very easy and very hard items has almost no noise per item, yet one anchor
    answers 0 or 1 for all of it: counted by p(1 − p) alone it got 1 anchor of 20 where a scenario
    of as many middling items got 19 (an audit; its anchor mean off by 0.50). The spread of p
    over its items counts as well, shrinking as strata split it."""
    from evo_merge.irt.anchors import allocate

    alpha = [1.0] * 200
    beta = [-8.0] * 50 + [8.0] * 50 + [0.0] * 100
    model = make_model(alpha, beta, responses=np.zeros((3, 200)), scenarios=["split"] * 100 + ["middle"] * 100)
    model = replace(model, theta=np.array([[-0.5], [0.0], [0.5]]))
    counts = allocate(model, 10, "neyman")
    assert sum(counts.values()) == 20 and counts["split"] >= 4, counts


def test_unknown_allocation_is_a_user_error(two_scenarios):
    with pytest.raises(UserError, match="allocation 'even'"):
        select_anchors(two_scenarios[3], 5, "random", allocation="even")


def test_one_calibration_subject_has_no_pairs_and_its_own_variance_stands(make_model):
    """With a single calibration subject there is no midpoint: its own p(1 − p) is used, so the
    allocation stays a real one (it was NaN, which sent every anchor to the first scenario)."""
    from evo_merge.irt.anchors import allocate, midpoint_probabilities

    model = make_model([1.0] * 20, [0.0] * 10 + [-10.0] * 10, responses=np.zeros((1, 20)),
                       scenarios=["open"] * 10 + ["sure"] * 10)
    np.testing.assert_allclose(midpoint_probabilities(model)[:, :10], 0.5)  # θ 0, β 0
    counts = allocate(model, 3, "neyman")
    assert sum(counts.values()) == 6 and counts["open"] > counts["sure"] >= 1


def _calibration_miss(model, anchors, scenario="all"):
    """Sum over calibration subjects of (their anchor mean - their mean over the scenario)^2."""
    items = model.scenario_items()[scenario]
    picked = [model.item_ids.index(i) for i in anchors.items[scenario]]
    estimate = model.responses[:, picked] @ np.asarray(anchors.weights[scenario])
    return float(((estimate - model.responses[:, items].mean(axis=1)) ** 2).sum())


def _twelve_subjects(make_model, n_items=120, seed=0, scenarios=None):
    """12 calibration subjects scored 0/1 on items of spread difficulty (one scenario unless
    `scenarios` names each item's), each subject a skill profile of its own (so no one stratum order
    fits them all)."""
    rng = np.random.default_rng(seed)
    skill = rng.normal(size=(12, 2))
    load = rng.normal(size=(n_items, 2))
    logits = skill @ load.T + rng.normal(0, 1.5, n_items)
    responses = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(float)
    return make_model(load, rng.normal(size=n_items), responses=responses, scenarios=scenarios), rng


@pytest.mark.parametrize("method", ["stratified", "stratified-irt"])
def test_one_balance_draw_is_the_plain_draw_and_more_draws_only_balance_better(make_model, method):
    """In every scenario the first draw is the plain draw of earlier versions (balance 1) and the
    others come in order from the scenario's own generator, so a larger `balance` keeps a draw at
    least as well balanced, in the second scenario as in the first (an audit found the second's
    draws moved by the first's: balance 200 kept a worse one than balance 1 in 5 of 900 cases)."""
    model, _ = _twelve_subjects(make_model, n_items=160, scenarios=["a"] * 80 + ["b"] * 80)
    gains = []
    for seed in range(12):
        sets = [select_anchors(model, 8, method, seed=seed, balance=k) for k in (1, 7, 20, 400)]
        for scenario in ("a", "b"):
            misses = [_calibration_miss(model, anchors, scenario) for anchors in sets]
            assert misses == sorted(misses, reverse=True), (seed, scenario, misses)
            gains.append(misses[-1] / misses[0])
    assert np.median(gains) < 0.5  # 400 draws of 8 items find a far better balanced one (here 0.2 typically)


def test_balance_one_draws_one_item_per_stratum_as_the_seed_says(make_model):
    """The plain stratified draw, computed by hand: each scenario's items sorted by mean score, split
    into `budget` strata, one item from each by the seed's one generator, scenario after scenario."""
    model, _ = _twelve_subjects(make_model, n_items=160, scenarios=["a"] * 80 + ["b"] * 80)
    anchors = select_anchors(model, 8, "stratified", seed=11, balance=1)
    rng = np.random.default_rng(11)
    for scenario, items in (("a", np.arange(80)), ("b", np.arange(80, 160))):
        strata = np.array_split(items[np.argsort(model.responses[:, items].mean(axis=0), kind="stable")], 8)
        assert anchors.items[scenario] == [f"q{rng.choice(s)}" for s in strata]
    assert anchors.balance == 1


def test_balanced_anchors_estimate_a_mix_of_the_calibration_subjects_better_than_one_draw(make_model):
    """A subject who scores each item halfway between two calibration subjects (a merge of them, in
    the simplest case): an anchor mean is linear in the scores, so it misses by the mean of their
    misses, which balancing cut. Over 40 seeds the balanced anchors miss by less than one draw's,
    and still centre on its accuracy."""
    model, rng = _twelve_subjects(make_model)
    mix = (model.responses[3] + model.responses[8]) / 2

    def error(balance, seed):
        anchors = select_anchors(model, 10, "stratified", seed=seed, balance=balance)
        return float(np.dot(anchors.weights["all"], mix[[int(i[1:]) for i in anchors.items["all"]]])) - mix.mean()

    plain = np.array([error(1, s) for s in range(40)])
    balanced = np.array([error(200, s) for s in range(40)])
    assert np.abs(balanced).mean() < 0.6 * np.abs(plain).mean()  # 0.38 here
    assert abs(balanced.mean()) < 3 * balanced.std() / np.sqrt(40)


def test_balance_is_stored_and_only_stratified_designs_take_it(tmp_path, make_model):
    model, _ = _twelve_subjects(make_model)
    assert select_anchors(model, 6, "stratified", seed=0).balance == 200  # the default
    assert select_anchors(model, 6, "random", seed=0, balance=50).balance == 1  # the baseline: one draw
    assert select_anchors(model, 6, "random", seed=0, balance=50) == select_anchors(model, 6, "random", seed=0)
    for bad in (0, True, 2.5):
        with pytest.raises(UserError, match="anchor balance must be a positive integer"):
            select_anchors(model, 6, "stratified", balance=bad)
    chosen = select_anchors(model, 6, "stratified", seed=0, balance=30)
    path = chosen.save(tmp_path)
    assert load_anchors(tmp_path) == chosen
    older = json.loads(path.read_text())
    del older["balance"]  # written before anchors were balanced: one draw
    path.write_text(json.dumps(older))
    assert load_anchors(tmp_path).balance == 1
    for bad in (0, "200", True):
        path.write_text(json.dumps({**older, "balance": bad}))
        with pytest.raises(UserError, match="corrupt anchors file .balance is not a positive integer"):
            load_anchors(tmp_path)


def test_the_cross_fit_redraws_each_fold_s_anchors_as_balanced_as_the_set_it_weighs(two_scenarios):
    """gp-IRT measures the anchor mean's error on held-out subjects with anchors re-drawn on each
    fold: of the same design, balance included, or it would weigh another design's error."""
    from evo_merge.irt import Estimator

    model = two_scenarios[3]
    for balance in (1, 40):
        est = Estimator(model, select_anchors(model, 5, "stratified", seed=2, balance=balance), "gpirt")
        folds = [est._fold_anchors(f) for f in range(model.cv_alpha.shape[0])]
        assert {a.balance for a in folds} == {balance}
        assert folds[0].counts() == est.anchors.counts()


def test_the_draws_are_weighed_a_few_at_a_time_with_the_same_choice(make_model, monkeypatch):
    """A leaderboard's thousands of calibration subjects times 200 draws would be weighed in one
    array; in chunks of draws (here a few cells each) the same draw is kept."""
    import evo_merge.irt.anchors as anchors_module

    model, _ = _twelve_subjects(make_model)
    whole = select_anchors(model, 10, "stratified-irt", seed=5, balance=300)
    monkeypatch.setattr(anchors_module, "BALANCE_CELLS", 500)  # 12 subjects x 10 anchors: 4 draws a chunk
    assert select_anchors(model, 10, "stratified-irt", seed=5, balance=300) == whole
