"""Warm-up merges: the standard merges calibrate IRT first and stand among the candidates measured."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.config import Campaign
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.candidate import standard_merges
from evo_merge.search.front import candidates
from evo_merge.search.store import BASELINE, BASELINES_META, CALIBRATION, SEARCH
from evo_merge.zoo.tiny import save_tiny_family

sys.path.insert(0, str(Path(__file__).parent))  # agreement_task, the plugin task the campaigns score


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return save_tiny_family(root, "llama", n_finetunes=2, noise=0.08)


def open_runner(tmp_path, zoo, warmups, **sections) -> CampaignRunner:
    base, fts = zoo
    config = {
        "name": "warm", "base_model": str(base), "models": [str(f) for f in fts],
        "tasks": [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
                   "options": {"reference": str(f), "name": f"agree{i}", "seed": i}} for i, f in enumerate(fts)],
        "methods": {"task_arithmetic": {}, "ties": {"density": [0.2, 0.9]}, "tsv": {}},
        "estimator": {"kind": "gpirt", "anchors": 3, "warmup_merges": warmups, "dims": 1},
        "algorithm": {"population": 6, "generations": 1, "seed": 3},
        **sections,
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return CampaignRunner.open(Campaign.load(path), tmp_path, tmp_path / "run")


def search_item_count(runner):
    return sum(len(runner.scoring.search_ids(name)) for name in runner.scoring.names)


def fitted_subjects(runner) -> int:
    return len(json.loads((runner.workspace.run_dir / "irt" / "agree0" / "model.json").read_text())["subject_ids"])


def test_the_standard_merges_are_the_first_warm_ups_one_method_after_another(tmp_path, zoo):
    runner = open_runner(tmp_path, zoo, warmups=5)
    standard = standard_merges(2)
    runner.calibrate()
    store = runner.workspace.store
    baselines = store.evaluations(BASELINE)
    # task arithmetic, TIES, TSV-M, then task arithmetic's next lambdas (0.3 lies outside lambda's
    # searched range, 0.5-1.5: the genome cannot express it)
    expected = [standard[label].key for label in ("task_arithmetic lambda=0.5", "ties density=0.2", "tsv alpha=1",
                                                  "task_arithmetic lambda=0.7", "task_arithmetic lambda=1.0")]
    assert sorted(e.key for e in baselines) == sorted(expected)
    assert len(store.evaluations(CALIBRATION)) == 3  # base and the two endpoints: no random warm-up left
    for evaluation in baselines:  # measured on every search item, once
        assert evaluation.items_evaluated == search_item_count(runner)
        assert evaluation.measured == pytest.approx(evaluation.estimates)
    assert fitted_subjects(runner) == 8  # base, 2 endpoints, 5 warm-ups
    # named as the standard merges they are from the start: a report of a run cut short in the search
    # left the baseline column blank (audit 144)
    named = store.get_meta(BASELINES_META)
    assert {e.key: named[e.key] for e in baselines} == {standard[label].key: label for label in (
        "task_arithmetic lambda=0.5", "ties density=0.2", "tsv alpha=1", "task_arithmetic lambda=0.7",
        "task_arithmetic lambda=1.0")}
    runner.search()
    # the search seeds the standard merges: it looks them up, spending nothing more on them
    after = {e.key: e for e in store.evaluations(BASELINE)}
    assert {k: e.items_evaluated for k, e in after.items()} == {e.key: e.items_evaluated for e in baselines}
    assert not {e.key for e in store.evaluations(SEARCH)} & set(expected)
    # and they compete for the front with their measured scores
    assert set(expected) <= {e.key for e in candidates(store)}
    runner.close()


def test_random_merges_fill_the_warm_ups_past_the_standard_ones(tmp_path, zoo):
    runner = open_runner(tmp_path, zoo, warmups=8)
    runner.calibrate()
    store = runner.workspace.store
    assert len(store.evaluations(BASELINE)) == 5  # all the standard merges this genome expresses
    assert len(store.evaluations(CALIBRATION)) == 3 + 3
    assert fitted_subjects(runner) == 11
    runner.close()


@pytest.mark.parametrize("sections", [{"final": {"baselines": False}}, {"estimator": {
    "kind": "gpirt", "anchors": 3, "warmup_merges": 4, "dims": 1, "warmup_standard": False}}],
    ids=["baselines-off", "warmup-standard-off"])
def test_without_the_standard_merges_among_the_candidates_every_warm_up_is_random(tmp_path, zoo, sections):
    runner = open_runner(tmp_path, zoo, warmups=4, **sections)
    runner.calibrate()
    store = runner.workspace.store
    assert store.evaluations(BASELINE) == []
    warmups = [e.key for e in store.evaluations(CALIBRATION)][3:]
    assert len(warmups) == 4 and not set(warmups) & {c.key for c in standard_merges(2).values()}
    runner.close()


def test_fewer_warm_ups_than_standard_merges_take_one_of_each_method_first(tmp_path, zoo):
    runner = open_runner(tmp_path, zoo, warmups=2)
    standard, random = runner.warmup_merges(runner.space)
    merges = standard_merges(2)
    assert standard == [merges["task_arithmetic lambda=0.5"], merges["ties density=0.2"]] and random == []
    runner.close()


def test_with_one_endpoint_the_standard_merge_that_is_the_endpoint_stays_a_reference(tmp_path, zoo):
    # with one endpoint, task arithmetic at lambda 1 (weight 1) builds the endpoint itself
    runner = open_runner(tmp_path, zoo, warmups=5, models=[str(zoo[1][0])])
    merges = standard_merges(1)
    endpoint = merges["task_arithmetic lambda=1.0"]
    runner.calibrate()
    store = runner.workspace.store
    assert store.get(endpoint.key).phase == CALIBRATION  # a reference model, not a candidate
    assert endpoint.key not in {e.key for e in candidates(store)}
    assert sorted(e.key for e in store.evaluations(BASELINE)) == sorted(
        merges[label].key for label in ("task_arithmetic lambda=0.5", "ties density=0.2", "tsv alpha=1",
                                        "task_arithmetic lambda=0.7"))
    # base, the endpoint, 4 standard merges and 1 random one: IRT fitted on each model's responses once
    assert len(store.evaluations()) == fitted_subjects(runner) == 7
    runner.close()


@pytest.mark.parametrize("algorithm", [{"seed_standard_merges": False}, {"name": "cmaes"}], ids=["unseeded", "cmaes"])
def test_the_tracker_logs_the_standard_warm_ups_with_the_calibration_once(tmp_path, zoo, algorithm, caplog):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from evo_merge.report.tracking import follow_campaign

    uri = (tmp_path / "mlruns").as_uri()
    runner = open_runner(tmp_path, zoo, warmups=4,
                         algorithm={"population": 4, "generations": 2, "seed": 3, **algorithm},
                         objective={"weights": {"agree0": 1, "agree1": 1}} if algorithm.get("name") else {},
                         tracking={"mlflow": {"uri": uri, "experiment": "warm"}})
    follow_campaign(runner)
    runner.calibrate()
    with caplog.at_level("WARNING", logger="evo_merge"):
        runner.search()  # the search does not evaluate the standard merges: none is in its generations
    runner.close()
    # CMA-ES's first generation is its starting point alone at any population: nothing to advise
    assert not [r for r in caplog.records if r.getMessage().startswith("generation 1 is its seeds alone")]
    store = runner.workspace.store
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("warm").experiment_id])
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "measured/agree0")]
    # every model measured in calibration, the standard warm-ups too, as the first generation ended
    measured = [e.id for e in store.evaluations() if e.measured is not None]
    assert len(store.evaluations(BASELINE)) == 4 and sorted(logged) == sorted(measured)


def test_status_names_the_best_candidate_even_where_it_is_a_standard_warm_up(tmp_path, zoo):
    runner = open_runner(tmp_path, zoo, warmups=5)
    runner.calibrate()
    runner.search()
    runner.close()
    store = runner.workspace.store
    competing = {e.id: e for e in store.evaluations() if e.phase in ("search", "baseline") and e.status == "ok"}
    output = " ".join(CliRunner().invoke(cli, ["status", str(runner.workspace.run_dir)]).output.split())
    best_phases = set()
    for task in ("agree0", "agree1"):
        line = re.search(rf"best {task} in the search \(higher is better\): ([\d.]+)(?: ± [\d.]+)? "
                         r"(estimated|measured) \(evaluation (\d+)", output)
        assert line, output  # (the first generation is the seeds alone, every one looked up)
        value, label, evaluation = line.groups()
        top = max(e.estimates[task] for e in competing.values())
        best = competing[int(evaluation)]
        assert value == f"{top:.3f}" and best.estimates[task] == top, output
        assert label == ("measured" if best.phase == "baseline" else "estimated"), output  # a standard merge: measured
        best_phases.add(best.phase)
    assert "baseline" in best_phases  # in this campaign a standard merge leads a task


def test_calibration_is_one_batch_whatever_the_phases(tmp_path, zoo):
    """References, random and standard warm-ups go to the evaluator together: a cluster runs
    them at once, and the calibration bar counts them all."""
    runner = open_runner(tmp_path, zoo, warmups=7)
    evaluator, batches, stages = runner.evaluator(), [], []
    original = evaluator.evaluate_many
    evaluator.evaluate_many = lambda jobs, progress=None: batches.append(len(jobs)) or original(jobs, progress)
    runner.progress = lambda stage, done, total: stages.append((stage, total))
    runner.calibrate()
    assert batches == [3 + 7]  # base, 2 endpoints, 5 standard merges and 2 random ones
    assert {total for stage, total in stages if stage == "calibration"} == {10}
    runner.close()


def test_the_progress_counts_the_standard_warm_ups_from_the_first_generation(tmp_path, zoo, caplog):
    """A population of 6 with 2 endpoints and 5 standard merges is all seeds in generation 1: the
    search looks every one up. Its progress row still exists, and shows the standard merges (they
    were search candidates before they became warm-ups); their items count as calibration's."""
    from evo_merge.report.campaign import progress_table

    runner = open_runner(tmp_path, zoo, warmups=5)
    runner.calibrate()
    with caplog.at_level("WARNING", logger="evo_merge"):
        runner.search()
    store, objectives = runner.workspace.store, runner.objectives
    assert not [e for e in store.evaluations(SEARCH) if e.generation == 1]  # all looked up
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("generation 1")] == [
        "generation 1 is its seeds alone (6 of them: endpoints and standard merges, measured in calibration, looked "
        "up): the search's first new candidates come in generation 2; a population larger than the seeds leaves room "
        "for new ones from the start"]
    table = progress_table(store, objectives).set_index("generation")
    standard = [e for e in store.evaluations(BASELINE)]
    for task in objectives.names:
        assert table.loc[1, f"best_{task}"] == pytest.approx(max(e.estimates[task] for e in standard))
    points = [[e.estimates[t] for t in objectives.names] for e in standard]
    assert table.loc[1, "hypervolume"] == pytest.approx(objectives.hypervolume(np.array(points)))
    assert table.loc[1, "items"] == 0
    # a folder written before metrics were stored: recomputed alike (the warm-ups were left out)
    with store.db:
        store.db.execute("UPDATE generations SET metrics = NULL")
    assert store.metrics(1) is None
    recomputed = progress_table(store, objectives).set_index("generation")
    assert recomputed.loc[1].to_dict() == pytest.approx(table.loc[1].to_dict())
    runner.close()
