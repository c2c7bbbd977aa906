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


@pytest.mark.parametrize("name, extra", [
    ("nsga2", {}), ("nsga3", {}), ("smsemoa", {}),
    ("ga", {"objective": {"weights": {"agree0": 1.0, "agree1": 3.0}}}),
    ("cmaes", {"objective": {"weights": {"agree0": 1.0, "agree1": 1.0}}}),
])
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
