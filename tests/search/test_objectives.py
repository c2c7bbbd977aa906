"""Objectives with directions: what pymoo minimises, the worst point, hypervolume, the front."""

import numpy as np
import pytest

from evo_merge.search.objectives import Objectives

MIXED = Objectives.of(["acc", "err"], ["maximize", "minimize"])


def test_pymoo_minimises_negated_maximised_tasks_and_plain_minimised_ones():
    assert MIXED.minimised({"acc": 0.8, "err": 0.3}).tolist() == [-0.8, 0.3]


def test_a_weighted_objective_is_one_number_over_better_is_higher_scores():
    weighted = Objectives.of(["acc", "err"], ["maximize", "minimize"], {"acc": 2.0, "err": 1.0})
    assert weighted.n_objectives == 1
    # minimised: 2 * (-0.8) + 1 * 0.3
    assert weighted.minimised({"acc": 0.8, "err": 0.3}).tolist() == pytest.approx([-1.3])
    # balanced: (2 * 0.8 + 1 * (-0.3)) / 3
    assert weighted.balanced({"acc": 0.8, "err": 0.3}) == pytest.approx(1.3 / 3)


def test_a_negative_weight_keeps_the_balanced_score_a_mean():
    """Weights summing to -1 divided by 1e-12: "balanced" printed about 1e12."""
    against = Objectives.of(["a", "b"], ["maximize", "maximize"], {"a": 2.0, "b": -3.0})
    assert against.balanced({"a": 0.5, "b": 0.5}) == pytest.approx((2 * 0.5 - 3 * 0.5) / 5)
    assert against.balanced({"a": 1.0, "b": 0.0}) == pytest.approx(0.4)


def test_the_worst_point_follows_the_direction():
    assert MIXED.worst() == {"acc": 0.0, "err": 1.0}
    assert MIXED.goodness({"acc": 0.4, "err": 0.2}, "err") == -0.2


def test_hypervolume_is_measured_from_the_worst_point_by_direction():
    # one point: the box from (acc 0, err 1) to (acc 0.5, err 0.25) has area 0.5 * 0.75
    assert MIXED.hypervolume(np.array([[0.5, 0.25]])) == pytest.approx(0.375)
    # a second point dominated by the first adds nothing; one trading off adds its own box
    assert MIXED.hypervolume(np.array([[0.5, 0.25], [0.4, 0.5]])) == pytest.approx(0.375)
    assert MIXED.hypervolume(np.array([[0.5, 0.25], [0.8, 0.5]])) == pytest.approx(0.375 + 0.3 * 0.5)
    assert MIXED.hypervolume(np.empty((0, 2))) == 0.0


def test_the_front_keeps_the_rows_no_other_row_beats_in_both_directions():
    points = np.array([[0.5, 0.25], [0.4, 0.5], [0.8, 0.5], [0.8, 0.6]])
    assert sorted(MIXED.non_dominated(points)) == [0, 2]
    maximise_both = Objectives.of(["a", "b"], ["maximize", "maximize"])
    assert sorted(maximise_both.non_dominated(points)) == [3]  # row 3, (0.8, 0.6), beats the rest


def test_a_point_s_hypervolume_gain_is_its_box_less_what_the_others_already_cover():
    # by hand: (0.8, 0.5) adds the box from (0.5, 0.5) to (0.8, 1): 0.3 * 0.5, as in the test above
    assert MIXED.hypervolume_gain(np.array([[0.5, 0.25]]), np.array([0.8, 0.5])) == pytest.approx(0.15)
    assert MIXED.hypervolume_gain(np.array([[0.5, 0.25]]), np.array([0.4, 0.5])) == pytest.approx(0.0)  # dominated
    assert MIXED.hypervolume_gain(np.empty((0, 2)), np.array([0.5, 0.25])) == pytest.approx(0.375)
    assert MIXED.hypervolume_gain(np.empty((0, 2)), np.array([0.5, 1.0])) == 0.0  # the worst error: no box at all


@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_the_hypervolume_gain_equals_the_hypervolume_with_the_point_less_the_hypervolume_without(tasks):
    rng = np.random.default_rng(tasks)
    objectives = Objectives.of([f"t{i}" for i in range(tasks)], ["maximize", "minimize", *["maximize"] * (tasks - 2)])
    for _ in range(30):
        points, point = rng.uniform(size=(int(rng.integers(0, 8)), tasks)), rng.uniform(size=tasks)
        with_it = objectives.hypervolume(np.vstack([points, point]))
        assert objectives.hypervolume_gain(points, point) == pytest.approx(with_it - objectives.hypervolume(points),
                                                                          abs=1e-12)
