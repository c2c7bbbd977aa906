"""pymoo algorithms by name: each runs a campaign, and a finished run replays from its store
without evaluating anything again (the resume path, minus the kill)."""

import sqlite3

import pytest
from campaigns import write_campaign  # tests/search is on sys.path
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2, noise=0.08)


def config(tmp_path, zoo, name, **extra):
    return write_campaign(tmp_path / f"{name}.yaml", *zoo, **{
        "algorithm": {"name": name, "population": 4, "generations": 2, "seed": 5}, **extra})


def search_rows(run):
    db = sqlite3.connect(run / "state.sqlite")
    return sorted(db.execute("SELECT key, generation FROM evaluations WHERE phase = 'search'"))


EVERY_ALGORITHM = [
    ("nsga2", {}), ("nsga3", {}), ("smsemoa", {}),
    ("ga", {"objective": {"weights": {"agree0": 1.0, "agree1": 3.0}}}),
    ("cmaes", {"objective": {"weights": {"agree0": 1.0, "agree1": 1.0}}}),
]


def test_every_algorithm_the_schema_names_is_run_below():
    """The schema's table and `algorithms._mixed` are kept in step by hand: a name added to the one
    is run here, or this fails (audit 102)."""
    from evo_merge.config import MULTI_OBJECTIVE_ALGORITHMS, SINGLE_OBJECTIVE_ALGORITHMS

    assert sorted(name for name, _ in EVERY_ALGORITHM) == sorted(MULTI_OBJECTIVE_ALGORITHMS
                                                                 + SINGLE_OBJECTIVE_ALGORITHMS)


@pytest.mark.parametrize("name, extra", EVERY_ALGORITHM)
def test_each_algorithm_runs_and_replays_from_the_store(tmp_path, zoo, name, extra):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config(tmp_path, zoo, name, **extra)), "--out", str(run)])
    assert result.exit_code == 0, result.output
    rows = search_rows(run)
    assert {g for _, g in rows} == {1, 2}  # two generations asked and answered
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    assert search_rows(run) == rows  # the replay asked for the same candidates: nothing new evaluated
    assert "generation 2/2 (finished)" in CliRunner().invoke(cli, ["status", str(run)]).output


@pytest.mark.parametrize("name, extra, message", [
    ("ga", {}, "algorithm.name: ga optimises one objective; declare objective.weights"),
    ("nsga2", {"objective": {"weights": {"agree0": 1}}}, "objective.weights: nsga2 optimises every task"),
    ("cmaes", {"objective": {"weights": {"nope": 1}}}, "objective.weights.nope: not a task name"),
    ("cmaes", {"objective": {"weights": {"agree0": 0}}}, "objective.weights: give at least one positive weight"),
    ("moead", {}, "algorithm.name"),
])
def test_algorithm_and_objective_settings_are_checked_at_load(tmp_path, zoo, name, extra, message):
    result = CliRunner().invoke(cli, ["run", str(config(tmp_path, zoo, name, **extra)), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_generation_the_algorithm_asked_nothing_of_is_no_failure(tmp_path):
    """pymoo's mating can give no new offspring (every one a duplicate): an empty generation is
    no generation whose every candidate failed (it raised IndexError on the empty error count)."""
    from types import SimpleNamespace

    from pymoo.core.population import Population

    from evo_merge.search.algorithms import SearchAlgorithm
    from evo_merge.search.objectives import Objectives
    from evo_merge.search.store import CampaignStore
    from evo_merge.search.study import run_search

    class OneEmptyGeneration:
        n_gen, told = None, []

        def has_next(self):
            return not self.told

        def ask(self):
            return Population.empty()

        def tell(self, infills):
            self.told.append(len(infills))

    store = CampaignStore(tmp_path)
    log = SimpleNamespace(store=store, evaluate=lambda candidates, **_: [])
    objectives = Objectives.of_facts({"tasks": [{"name": "a", "direction": "maximize", "items": 1}], "weights": None})
    algorithm = OneEmptyGeneration()
    run_search(SearchAlgorithm(algorithm, lambda x: x), log, objectives, {}, 1)
    assert algorithm.told == [0] and store.generations_completed() == 1


def _asks(seed, generations=3, draw_between=False, seeds=()):
    """The candidate keys CMA-ES asks, generation by generation, told a fixed fitness of each."""
    import numpy as np

    from evo_merge.search.algorithms import make_algorithm
    from evo_merge.search.space import SearchSpace

    space = SearchSpace({"task_arithmetic": {}, "ties": {"density": (0.1, 0.9)}}, 2, (0.0, 1.0))
    search = make_algorithm("cmaes", space, n_objectives=1, population=4, generations=generations, seed=seed,
                            seeds=seeds)
    asked = []
    while search.algorithm.has_next():
        population = search.ask()
        candidates = [search.to_candidate(ind.X) for ind in population]
        asked.append([c.key for c in candidates])
        if draw_between:  # a plugin task drawing from numpy's global generator while it scores
            np.random.rand(7)
        population.set("F", np.array([[sum(c.weights)] for c in candidates]))
        search.tell(infills=population)
    return asked


def test_cma_es_asks_the_same_candidates_from_the_same_seed_zero_included():
    """`cma` takes a seed of 0 (every campaign's default) for "from the clock": a resume asked other
    candidates than the run it continued, and both were stored as one generation."""
    assert _asks(0) == _asks(0) and _asks(5) == _asks(5) and _asks(0) != _asks(5)


def test_cma_es_asks_are_not_moved_by_others_drawing_from_numpy_s_generator():
    """`cma` draws from numpy's global generator: a task drawing from it between two asks changed
    what a resume (which replays without scoring) asked."""
    assert _asks(5, draw_between=True) == _asks(5)


def test_cma_es_without_a_starting_merge_starts_from_one_point_not_twenty():
    """pymoo's CMA-ES without a starting point drew 20 candidates in generation 1 whatever the
    population (the campaign template promises population x generations at most)."""
    asked = _asks(5)
    assert len(asked[0]) == 1 and all(len(generation) <= 4 for generation in asked)


def test_a_replay_asking_other_candidates_than_the_run_stored_is_refused(tmp_path):
    """Nothing compared a resumed ask with the generation stored: the abandoned candidates stayed
    in the store as search candidates, and could reach the front and the picks."""
    from types import SimpleNamespace

    from evo_merge.errors import UserError
    from evo_merge.search.algorithms import make_algorithm
    from evo_merge.search.objectives import Objectives
    from evo_merge.search.space import SearchSpace
    from evo_merge.search.store import CampaignStore
    from evo_merge.search.study import run_search

    store = CampaignStore(tmp_path)
    store.complete_generation(1, {"not-what-it-asks": [0.0]}, None)
    evaluated = []
    log = SimpleNamespace(store=store, evaluate=lambda candidates, **_: evaluated.extend(candidates) or [])
    objectives = Objectives.of_facts({"tasks": [{"name": "a", "direction": "maximize", "items": 1}], "weights": None})
    space = SearchSpace({"task_arithmetic": {}}, 2, (0.0, 1.0))
    search = make_algorithm("nsga2", space, n_objectives=1, population=4, generations=2, seed=1)
    with pytest.raises(UserError, match="the search asked other candidates for generation 1 than the run stored"):
        run_search(search, log, objectives, {}, 2)
    assert evaluated == []  # refused before anything is evaluated


@pytest.mark.parametrize("name, expected",
                         [("nsga2", "NSGA2"), ("nsga3", "NSGA3"), ("smsemoa", "SMSEMOA"), ("ga", "GA")])
def test_each_name_is_its_own_pymoo_algorithm(name, expected):
    from evo_merge.search.algorithms import _mixed

    assert type(_mixed(name, 4, None, 2, 0)).__name__ == expected


def test_a_name_without_an_algorithm_is_refused_not_read_as_another():
    from evo_merge.search.algorithms import _mixed

    with pytest.raises(ValueError, match="moead"):
        _mixed("moead", 4, None, 2, 0)
