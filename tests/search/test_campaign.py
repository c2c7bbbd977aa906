"""Campaigns end to end on tiny models: outputs, exports, kill -9 and resume, failures, bad configs."""

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from campaigns import agreement_tasks, campaign_config  # tests/search is on sys.path
from click.testing import CliRunner
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evo_merge.cli import cli
from evo_merge.merge import register_method
from evo_merge.zoo.tiny import save_tiny_family

HERE = Path(__file__).parent
EVO_MERGE = [sys.executable, "-m", "evo_merge"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    base, fts = save_tiny_family(root, "llama", n_finetunes=2, noise=0.08)
    return base, fts


def campaign(tmp_path, zoo, **overrides):
    config = campaign_config(*zoo, **{
        "name": "test", "methods": {"task_arithmetic": {}, "ties": {"density": [0.2, 0.9]}, "tsv": {}},
        "estimator": {"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1},
        "algorithm": {"population": 8, "generations": 3, "seed": 3}, "final": {"evaluate_top": 3}, **overrides})
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def env():
    return {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def front_keys(run):
    db = sqlite3.connect(run / "state.sqlite")
    return sorted(db.execute("SELECT key, measured FROM evaluations WHERE measured IS NOT NULL AND phase='search'"))


def all_keys(run):
    db = sqlite3.connect(run / "state.sqlite")
    return sorted(k for (k,) in db.execute("SELECT key FROM evaluations"))


def tensors_of(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_campaign_runs_end_to_end_and_exports_rebuildable_models(tmp_path, zoo, caplog):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo)), "--out", str(run)])
    assert result.exit_code == 0, result.output
    said = [r for r in caplog.records if "stratified anchors instead of auto" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "INFO"  # said once, not once per task, as the choice it is
    assert "\nstratified anchors instead of auto" in result.output and "warning: stratified" not in result.output
    # 120-item tasks (none held out): the picks are chosen on 30 items of each, said once, before calibration
    assert caplog.text.count("the picks will be chosen on the race's last sample, about 30 of agree0's 120") == 1
    assert "exporting best-agree0" in result.output  # the picks' file merges have their bars too
    # the summary's baselines have no estimate: their one measurement is in the measured slot
    baselines = [line for line in result.output.splitlines()
                 if line.startswith("│") and ("endpoint ft" in line or "│ base " in line)]
    assert len(baselines) == 3 and all(len(re.findall(r"- / \d\.\d{3}", line)) == 2 for line in baselines), \
        result.output
    for name in ("campaign.yaml", "state.sqlite", "pareto.csv", "report.md", "pareto.png", "progress.png"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoint.pkl").exists()  # the store is the one source of truth: nothing to unpickle
    report = (run / "report.md").read_text()
    assert "item evaluations in the search phase" in report

    models = sorted((run / "models").iterdir())
    assert models, "no model exported"
    from evo_merge.search.store import CampaignStore

    with closing(CampaignStore(run)) as store:  # a searched pick (a standard merge measured whole has no estimate)
        estimated = {e.id: e for e in store.evaluations() if e.estimates}
        pick, folder = next((estimated[i], run / path) for _, (i, path) in sorted(store.exported().items())
                            if i in estimated)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False).shape == (1, 6)
    card = ModelCard.load(folder / "README.md")
    assert {r.task_name for r in card.data.eval_results} == {"agree0", "agree1"}  # measured scores only
    assert "## Scores" in card.text and "estimated" in card.text
    assert pick.estimate_se  # the estimate with its SE, as status shows it (the card had it bare)
    for task, value in pick.estimates.items():
        assert re.search(rf"\| {task} \| {value:.4f} ± {pick.estimate_se[task]:.4f} \|", card.text), card.text
    assert "an IRT model, with the estimate's standard error" in card.text

    rebuilt = tmp_path / "rebuilt"
    result = CliRunner().invoke(cli, ["merge", str(folder / "merge_recipe.yaml"), "--out", str(rebuilt)])
    assert result.exit_code == 0, result.output
    a, b = tensors_of(folder), tensors_of(rebuilt)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    result = CliRunner().invoke(cli, ["status", str(run)])
    assert result.exit_code == 0 and "campaign 'test': generation 3/3 (finished)" in result.output, result.output
    # the standard merges compete for the search's best (they were measured as warm-ups): counted beside it
    counted = re.search(r"^evaluations: \d+ \(\d+ search, \d+ failed, (\d+) standard merges( \((\d+) of them in "
                        r"the search\))?\)", result.output, re.M)
    from evo_merge.search.store import SEARCH, CampaignStore
    store = CampaignStore(run)  # those the report marks: the search's task arithmetic at lambda 1 was left out
    standard = [e for e in store.evaluations() if e.key in store.get_meta("baselines") and e.status == "ok"]
    store.close()
    assert counted and int(counted[1]) == len(standard) >= 4, result.output
    assert int(counted[3] or 0) == sum(e.phase == SEARCH for e in standard)
    caplog.clear()
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0 and "picks will be chosen" not in caplog.text  # said to a new run only
    # its bars ran through as if working again, without a word
    assert f"{run}: this campaign is finished; nothing is evaluated again" in result.output


def test_anchor_scoring_spends_far_fewer_item_evaluations(tmp_path, zoo, monkeypatch):
    from evo_merge.irt import anchors as anchor_module

    # a neyman allocation can draw on the seed (a random subset of calibration pairs past MAX_PAIRS,
    # 24 or more subjects); here every other seed moves an anchor between scenarios, so sets that
    # allocated anew would differ from the first set and from what status lists
    allocate_for_seed = anchor_module.allocate

    def seeded(model, budget, allocation="equal", seed=0):
        counts = allocate_for_seed(model, budget, allocation, seed)
        first, second = list(counts)[:2]
        if seed % 2 and counts[first] > 1:
            counts[first], counts[second] = counts[first] - 1, counts[second] + 1
        return counts

    monkeypatch.setattr(anchor_module, "allocate", seeded)
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo)), "--out", str(run)]).exit_code == 0
    db = sqlite3.connect(run / "state.sqlite")
    per_candidate = db.execute("SELECT DISTINCT items_evaluated FROM evaluations WHERE phase='search' "
                               "AND measured IS NULL AND status='ok'").fetchall()
    assert per_candidate == [(20,)]  # 5 anchors x 2 scenarios x 2 tasks, against 240 items for a full evaluation

    from evo_merge.config import Campaign
    from evo_merge.irt.anchors import allocate
    from evo_merge.search.campaign import CampaignRunner

    runner = CampaignRunner.open(Campaign.load(run / "campaign.yaml"), run, run)
    runner.calibrate()  # replayed from the run folder
    status = CliRunner().invoke(cli, ["status", str(run)]).output
    for task, estimator in runner.scoring.estimators.items():  # the default spreads each task's 10 by neyman
        anchors = estimator.anchors
        assert anchors.allocation == "neyman"
        counts = allocate(estimator.model, 5, "neyman", runner.scoring.seed)
        assert anchors.counts() == counts
        listed = ", ".join(f"{scenario} {n}" for scenario, n in counts.items())
        assert f"anchors of {task}: 10 per candidate ({listed})" in status, status
    # each candidate scored on exactly its own anchor set's items: sets of the same design, drawn apart
    store, used = runner.workspace.store, set()
    for (key,) in db.execute("SELECT key FROM evaluations WHERE phase='search' AND status='ok' "
                             "AND items_measured = 0"):  # (the final phase adds its race's items)
        evaluation = store.get(key)
        if evaluation.measured is None:
            items = runner.scoring.anchor_items(evaluation.key)
            assert {n: set(v) for n, v in store.item_scores(evaluation.key).items()} == \
                {n: set(v) for n, v in items.items()}
            used.add(tuple(tuple(sorted(v)) for v in items.values()))
            for task, estimator in runner.scoring.anchor_set(evaluation.key).items():
                assert estimator.anchors.counts() == runner.scoring.estimators[task].anchors.counts()
    assert len(used) > 1
    runner.close()


def test_anchors_that_are_every_search_item_make_a_candidate_measured(tmp_path, zoo, caplog):
    """With 60 anchors per scenario of 60 items (tasks with an lm-eval `limit`, a default budget) a
    search candidate had every search item from its anchors, was never measured, and the final
    phase, every resume and `export --pick` stopped on its missing measurement with a traceback
    (audit 96)."""
    config = campaign(tmp_path, zoo, estimator={"kind": "gpirt", "anchors": 60, "warmup_merges": 5, "dims": 1})
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(run / "state.sqlite")
    searched = db.execute("SELECT id, measured IS NOT NULL, items_evaluated FROM evaluations "
                          "WHERE phase = 'search' AND status = 'ok'").fetchall()
    assert searched and {(measured, items) for _, measured, items in searched} == {(1, 240)}
    assert "race's last sample" not in caplog.text  # every candidate is measured whole: no pick is chosen on one
    assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0
    with db:  # a folder stored so before: its candidates are measured once they are asked for
        db.execute("UPDATE evaluations SET measured = NULL WHERE phase = 'search'")
    exported = CliRunner().invoke(cli, ["export", str(run), "--pick", str(searched[-1][0]), "--out",
                                        str(tmp_path / "pick")])
    assert exported.exit_code == 0, exported.output
    measured = db.execute("SELECT measured IS NOT NULL FROM evaluations WHERE id = ?", (searched[-1][0],))
    assert measured.fetchone() == (1,)


def test_anchors_covering_one_task_but_not_another_leave_a_candidate_estimated(tmp_path, zoo, caplog):
    """A small task (an lm-eval `limit`) beside a large one: the anchors hold every item of the small
    one only. A candidate is measured when its anchors are every item of every task, not of one:
    an anchor mean stored as a measurement would go to the final phase and the cards as measured
    (audit 100)."""
    base, fts = zoo
    tasks = [{"task": "agreement_task:AgreementTask", "name": "small",
              "options": {"reference": str(fts[0]), "name": "small", "seed": 0, "n_items": 8}},
             {"task": "agreement_task:AgreementTask", "name": "large",
              "options": {"reference": str(fts[1]), "name": "large", "seed": 1}}]
    config = campaign(tmp_path, zoo, tasks=tasks,
                      estimator={"kind": "gpirt", "anchors": 10, "warmup_merges": 5, "dims": 1})
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(run / "state.sqlite")
    searched = db.execute("SELECT e.measured IS NOT NULL, COUNT(DISTINCT s.item) FROM evaluations e JOIN item_scores s "
                          "ON s.evaluation_id = e.id WHERE e.phase = 'search' AND e.status = 'ok' "
                          "AND s.item LIKE 'small-%' GROUP BY e.id").fetchall()
    assert searched and {items for _, items in searched} == {8}  # every small item, from the anchors
    assert any(not measured for measured, _ in searched)  # not measured on `large`'s 120: estimated
    # so a race runs, and samples every task: the small one's picks are chosen on 2 of its items (audit 103)
    assert "race's last sample, about 2 of small's 8, about 30 of large's 120 search items" in caplog.text


def test_a_follow_up_campaign_reuses_a_runs_irt_models_on_the_same_items_only(tmp_path, zoo):
    """`estimator.irt_model: RUN/irt` spares a second campaign on the same models and tasks its
    warm-up merges; models fitted on other items (another split of held-out items, another
    version of the task) are refused before anything is evaluated, naming what differs."""
    small = {"population": 4, "generations": 1, "seed": 3}
    first = tmp_path / "first"
    args = ["run", str(campaign(tmp_path, zoo, algorithm=small, final={"evaluate_top": 2, "holdout": 20})), "--out"]
    assert CliRunner().invoke(cli, [*args, str(first)]).exit_code == 0
    reuse = {"kind": "gpirt", "anchors": 5, "dims": 1, "irt_model": str(first / "irt")}

    again = tmp_path / "again"
    config = campaign(tmp_path, zoo, algorithm=small, final={"evaluate_top": 2, "holdout": 20}, estimator=reuse)
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(again)])
    assert result.exit_code == 0, result.output
    with closing(sqlite3.connect(again / "state.sqlite")) as db:  # base and endpoints only: no warm-up merges
        assert db.execute("SELECT COUNT(*) FROM evaluations WHERE phase = 'calibration'").fetchone() == (3,)

    assert CliRunner().invoke(cli, ["plan", str(config)]).exit_code == 0

    other_split = campaign(tmp_path, zoo, algorithm={**small, "seed": 4}, final={"evaluate_top": 2, "holdout": 20},
                           estimator=reuse)
    # `plan` refuses it as `run` does (it said "fits": audit 93)
    for command in (["plan", str(other_split)], ["run", str(other_split), "--out", str(tmp_path / "other")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2 and not (tmp_path / "other").exists(), result.output
        line = result.output.strip().splitlines()[-1]
        assert line.startswith("error: ") and f"estimator.irt_model: {first / 'irt' / 'agree0'} was fitted on other "\
            "items than task agree0's: " in line and "search items are not in it" in line and "reuse it with "\
            "the same algorithm.seed and final.holdout" in line, line
    tasks = yaml.safe_load(config.read_text())["tasks"]
    tasks[1]["options"]["n_items"] = 100
    fewer = campaign(tmp_path, zoo, algorithm=small, final={"evaluate_top": 2, "holdout": 20}, estimator=reuse,
                     tasks=tasks)
    result = CliRunner().invoke(cli, ["run", str(fewer), "--out", str(tmp_path / "fewer")])
    assert result.exit_code == 2 and "task agree1's: " in result.output and "of its items are not search items of "\
        "the task" in result.output, result.output


# NSGA-II (the default, multi-objective, mixed-variable genome) killed and resumed: test_run_folder's
# kill -9 with its write-ahead log cut in half, which resumes from further back
@pytest.mark.parametrize("algorithm", [
    {"name": "cmaes", "objective": {"weights": {"agree0": 1.0, "agree1": 1.0}}},  # single-objective, real vector
], ids=["cmaes"])
def test_kill_during_generation_2_then_resume_matches_uninterrupted_run(tmp_path, zoo, algorithm):
    algorithm = dict(algorithm)
    objective = algorithm.pop("objective", None)
    config = campaign(tmp_path, zoo, tasks=[
        {"task": "agreement_task:AgreementTask", "name": f"agree{i}",
         "options": {"reference": str(f), "name": f"agree{i}", "seed": i, "delay": 0.05}}
        for i, f in enumerate(zoo[1])], algorithm={"population": 8, "generations": 3, "seed": 3, **algorithm},
        **({"objective": objective} if objective else {}))
    reference = tmp_path / "uninterrupted"
    subprocess.run([*EVO_MERGE, "run", str(config), "--out", str(reference)], env=env(), check=True,
                   capture_output=True, timeout=600)

    run = tmp_path / "killed"
    proc = subprocess.Popen([*EVO_MERGE, "run", str(config), "--out", str(run)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if (run / "state.sqlite").exists():
                try:
                    rows = sqlite3.connect(run / "state.sqlite").execute(
                        "SELECT COUNT(*) FROM evaluations WHERE generation = 2").fetchone()[0]
                except sqlite3.OperationalError:
                    rows = 0
                if rows >= 1:
                    break
            assert proc.poll() is None, "campaign finished before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_rows = len(all_keys(run))
    assert killed_rows < len(all_keys(reference))  # it really stopped mid-campaign

    result = subprocess.run([*EVO_MERGE, "resume", str(run)], env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert front_keys(run) == front_keys(reference)
    # every stored evaluation was reused: the resumed run holds exactly the uninterrupted run's evaluations
    assert all_keys(run) == all_keys(reference)


FAULTS = {  # how a plugin method fails -> what the stored error says
    "runtime": (lambda base: (_ for _ in ()).throw(RuntimeError("simulated out of memory")), "simulated out of memory"),
    "key": (lambda base: {}["no such entry"], "KeyError: 'no such entry'"),
    "none": (lambda base: None, "test_fragile returned NoneType for tensor"),
    "shape": (lambda base: torch.zeros(3), "test_fragile returned shape [3] for tensor"),
    # the stored base changed under every later candidate, scored on other weights (audit 135)
    "in place": (lambda base: base.add_(1.0), "test_fragile changed its inputs in place on tensor"),
    # whole numbers: written as zeros for most weights, exit 0 (audit 135)
    "whole numbers": (lambda base: base.long(), "test_fragile returned torch.int64 values for tensor"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_failed_candidates_are_recorded_and_the_campaign_goes_on(tmp_path, zoo, fault, caplog):
    """Whatever a merge method raises (a plugin may raise anything, or return nothing), the
    candidate is stored as failed and the campaign goes on."""
    act, message = FAULTS[fault]

    @register_method("test_fragile", replace=True)
    def fragile(base, deltas, weights, params, name):
        """Always fails."""
        return act(base)

    run = tmp_path / "run"
    config = campaign(tmp_path, zoo, methods={"test_fragile": {}, "task_arithmetic": {}},
                      estimator={"kind": "full"})
    with caplog.at_level("WARNING", logger="evo_merge"):
        result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(run / "state.sqlite")
    failed = db.execute("SELECT COUNT(*), MIN(error) FROM evaluations WHERE status='failed'").fetchone()
    assert failed[0] >= 1 and message in failed[1]
    # each said as it fails: a run of hours goes on past it
    said = [r.getMessage() for r in caplog.records if "(test_fragile) failed: " in r.getMessage()]
    assert len(said) == failed[0] and all(message in line and line.endswith("not tried again by a resume")
                                          for line in said), said
    report = (run / "report.md").read_text().replace("\\", "")  # markdown escapes aside
    assert message in report.split("## Failures")[1]  # each failure with its error
    assert "## Failures" in (run / "report.md").read_text()
    ok = db.execute("SELECT COUNT(*) FROM evaluations WHERE status='ok' AND phase='search'").fetchone()[0]
    assert ok >= 8 and (run / "models").is_dir()
    # status counted the search's failures alone where the report counts every one, warm-ups too (audit 135)
    warmup = db.execute("SELECT id FROM evaluations WHERE phase!='search' AND status='ok' ORDER BY id DESC").fetchone()
    with db:
        db.execute("UPDATE evaluations SET status='failed', error='a warm-up that failed' WHERE id=?", warmup)
    status = CliRunner().invoke(cli, ["status", str(run)])
    assert status.exit_code == 0, status.output
    assert re.search(rf"^evaluations: \d+ \(\d+ search, {failed[0] + 1} failed", status.output, re.M), status.output


def test_a_candidate_failing_on_its_second_task_counts_the_items_its_first_task_scored(tmp_path, zoo):
    """A candidate whose second task raised recorded 0 items though its first task had scored its
    anchors: a failing run's item totals undercounted what it spent (audit 144)."""
    base, fts = zoo
    tasks = [{"task": "agreement_task:AgreementTask", "name": "agree0",
              "options": {"reference": str(fts[0]), "name": "agree0", "seed": 0}},
             {"task": "faulty_task:FaultyAgreementTask", "name": "agree1",
              "options": {"reference": str(fts[1]), "name": "agree1", "seed": 1, "fault": "anchors"}}]
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo, tasks=tasks)), "--out", str(run)])
    assert result.exit_code == 0, result.output
    with closing(sqlite3.connect(run / "state.sqlite")) as db:
        # (a candidate the final phase measured holds every item: left out)
        rows = db.execute("SELECT e.status, e.items_evaluated, COUNT(s.item) FROM evaluations e LEFT JOIN item_scores "
                          "s ON s.evaluation_id = e.id AND s.task = 'agree0' WHERE e.phase = 'search' "
                          "AND e.items_measured = 0 GROUP BY e.id").fetchall()
    failed = [items for status, items, _ in rows if status == "failed"]
    first_task = {kept for status, _, kept in rows if status == "ok"}  # agree0's anchors, the same for every candidate
    assert failed and len(first_task) == 1 and failed == [first_task.pop()] * len(failed)
    with closing(sqlite3.connect(run / "state.sqlite")) as db:  # what status says the search spent counts them
        spent, measured_later = db.execute("SELECT SUM(items_evaluated), SUM(items_measured) FROM evaluations "
                                           "WHERE phase = 'search'").fetchone()
        kept = db.execute("SELECT COUNT(*) FROM item_scores s JOIN evaluations e ON s.evaluation_id = e.id "
                          "WHERE e.phase = 'search'").fetchone()[0]
    assert spent == kept - measured_later + sum(failed)
    status = CliRunner().invoke(cli, ["status", str(run)], terminal_width=200)
    assert f"item evaluations in search: {spent:,} vs" in status.output, status.output


def test_warm_ups_that_failed_are_said_to_be_left_out_of_the_calibration_on_every_open(tmp_path, zoo, caplog):
    """A plugin failing every evaluation failed the warm-ups too; after the fix, the resume calibrated on
    fewer subjects than a fresh run, without a word (audit 135)."""
    @register_method("test_always_broken", replace=True)
    def broken(base, deltas, weights, params, name):
        """Always fails."""
        raise RuntimeError("bug in my merge")

    run = tmp_path / "run"
    config = campaign(tmp_path, zoo, methods={"test_always_broken": {}},
                      algorithm={"population": 4, "generations": 2, "seed": 3})
    with caplog.at_level("WARNING", logger="evo_merge"):
        result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)])
    assert result.exit_code == 2, result.output
    said = [r.getMessage() for r in caplog.records if "calibration subjects failed" in r.getMessage()]
    assert len(said) == 1 and re.match(r"5 of the 8 calibration subjects failed \(warmup-0 first\) and are left "
                                       r"out: IRT is fitted on 3; ", said[0]), said  # the base and 2 endpoints
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge"):
        CliRunner().invoke(cli, ["resume", str(run)])
    assert any("5 of the 8 calibration subjects failed" in r.getMessage() for r in caplog.records)


def test_a_generation_whose_every_candidate_failed_stops_the_run_and_resume_tries_it_again(tmp_path, zoo):
    """A method that cannot work (a bug in a plugin, a device fault) failed every candidate: the
    run finished with exit 0, no pick and no word. It stops at the first such generation naming the
    error; once the cause is fixed, `resume` evaluates that generation again and the run finishes."""
    broken = {"yes": True}

    @register_method("test_broken", replace=True)
    def maybe(base, deltas, weights, params, name):
        """Task arithmetic, or the bug."""
        if broken["yes"]:
            raise RuntimeError("bug: index out of range in my merge")
        return base + sum(w * d for w, d in zip(weights, deltas))

    run = tmp_path / "run"
    config = campaign(tmp_path, zoo, methods={"test_broken": {}}, estimator={"kind": "full"},
                      algorithm={"population": 4, "generations": 2, "seed": 3})
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: every candidate of generation 1 failed (4 of 4: test_broken failed on tensor lm_head.weight: bug: "
        "index out of range in my merge); fix the cause, then `evo-merge resume` evaluates them again")
    with closing(sqlite3.connect(run / "state.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM evaluations WHERE phase = 'search'").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM generations").fetchone() == (0,)

    broken["yes"] = False
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    with closing(sqlite3.connect(run / "state.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM evaluations WHERE phase = 'search' AND status = 'failed'"
                          ).fetchone() == (0,)
    assert (run / "models").is_dir()


@pytest.mark.parametrize(("fault", "message"), [
    ("extra", "returned a score for item 'not-an-item', which was not asked for"),
    ("missing", "returned no score for item"),
    ("nan", "scores must lie in [0, 1]"),
    ("range", "scores must lie in [0, 1]"),
    # a wrong type failed every candidate with "TypeError: 'builtin_function_or_method' object is not iterable"
    ("list", "returned a list, not a pandas Series of scores indexed by item id"),
    ("none", "as None: scores must be numbers in [0, 1]"),
])
def test_a_task_answering_wrongly_stops_the_run_before_its_scores_are_stored(tmp_path, zoo, fault, message):
    base, fts = zoo
    tasks = [{"task": "faulty_task:FaultyAgreementTask", "name": "agree0",
              "options": {"reference": str(fts[0]), "name": "agree0", "seed": 0, "fault": fault}}]
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo, tasks=tasks)), "--out", str(run)])
    assert result.exit_code == 2 and "task 'agree0'" in result.output and message in result.output, result.output
    assert "Traceback" not in result.output
    if run.exists():  # stopped on the first wrong answer: what was stored before it is right
        rows = sqlite3.connect(run / "state.sqlite").execute("SELECT item, score FROM item_scores").fetchall()
        assert all(0 <= score <= 1 and item.startswith("agree") for item, score in rows)


@pytest.mark.parametrize("corrupt", ["base", "endpoint"])
def test_an_input_holding_a_nan_is_named_before_any_evaluation(tmp_path, zoo, corrupt):
    """A NaN in an endpoint stopped the run at calibration as "non-finite values in merged tensor",
    promising that `resume` would evaluate it again, which failed the same way forever (audit 96)."""
    base, fts = zoo
    folder = shutil.copytree(base if corrupt == "base" else fts[1], tmp_path / "corrupt")
    tensors = load_file(folder / "model.safetensors")
    name = min(n for n in tensors if ".mlp." in n)
    tensors[name].view(-1)[1] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    inputs = (folder, fts) if corrupt == "base" else (base, [fts[0], folder])
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign_config(*inputs)))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {folder}: tensor {name} holds NaN or Inf (a corrupt model); no merge of it can be scored")
    assert not (tmp_path / "run").exists()


def test_a_nan_in_a_bfloat16_endpoint_is_named_before_any_evaluation(tmp_path, zoo):
    """A bfloat16 family with `storage: auto` keeps each endpoint as it is (the in-place merger's
    exact path, most published LMs), checked apart from the float32 task vectors: a NaN there must be
    named as the input's, not fail every candidate as "non-finite values in merged tensor" (audit 100)."""
    from bf16_copies import bf16_copies  # tests/ is on sys.path (its conftest)

    base, fts = bf16_copies(*zoo, tmp_path / "bf16")
    tensors = load_file(fts[1] / "model.safetensors")
    name = min(n for n in tensors if ".mlp." in n)
    tensors[name].view(-1)[1] = float("nan")
    save_file(tensors, fts[1] / "model.safetensors", metadata={"format": "pt"})
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign_config(base, fts, dtype="float32", storage={"dtype": "auto"})))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {fts[1]}: tensor {name} holds NaN or Inf (a corrupt model); no merge of it can be scored")


def test_a_base_whose_scoring_failed_once_is_evaluated_again_on_resume(tmp_path, zoo):
    """A transient fault while scoring the base (out of memory): its failure was stored, `resume`
    stopped at it again and again, and the run folder, hours of calibration at 7B, was lost."""
    tasks = [{"task": "faulty_task:FaultyAgreementTask", "name": "agree0",
              "options": {"reference": str(zoo[1][0]), "name": "agree0", "seed": 0, "fault": "once",
                          "failures": str(tmp_path / "failed-once")}}]
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo, tasks=tasks)), "--out", str(run)])
    assert result.exit_code == 2 and result.output.strip().endswith(
        "calibration subject base failed to evaluate: task 'agree0': RuntimeError: scorer failed once; "
        "`evo-merge resume` evaluates it again"), result.output
    result = CliRunner().invoke(cli, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    from evo_merge.search.store import CampaignStore

    store = CampaignStore(run)
    assert all(e.status == "ok" for e in store.evaluations("calibration")) and store.finished(3)


def test_a_task_every_calibration_subject_scored_alike_on_every_item_is_said(tmp_path, zoo, caplog):
    """A task broken for these models (a tokenizer reading its answers as <unk>) scored 0 everywhere:
    the run went to its end on estimates of noise, its picks "no better than the base", without a
    word (audit 101)."""
    base, fts = zoo
    tasks = [{"task": "faulty_task:FaultyAgreementTask", "name": "broken",
              "options": {"reference": str(fts[0]), "name": "broken", "seed": 0, "fault": "zeros"}},
             {"task": "agreement_task:AgreementTask", "name": "agree1",
              "options": {"reference": str(fts[1]), "name": "agree1", "seed": 1}}]
    result = CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo, tasks=tasks)), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    said = [r.getMessage() for r in caplog.records if "every calibration subject" in r.getMessage()]
    assert said == ["task 'broken': every calibration subject (the base, the endpoints, the warm-ups) scored 0 on "
                    "every search item: the task may be broken for these models; check it with `evo-merge eval` on "
                    "an endpoint (its prompts, the tokenizer, the metric)"]
    assert f"warning: {said[0]}" in result.output
    resumed = CliRunner().invoke(cli, ["resume", str(tmp_path / "r")])  # replays the calibration: said once
    assert resumed.exit_code == 0 and "every calibration subject" not in resumed.output, resumed.output


def test_a_task_s_wrong_answer_names_it_as_the_campaign_labels_it(tmp_path, zoo):
    """Two tasks of one plugin told apart by their campaign labels: the error named the plugin's own
    `name`, the same for both."""
    tasks = [{"task": "faulty_task:FaultyAgreementTask", "name": "label0",
              "options": {"reference": str(zoo[1][0]), "name": "agree0", "seed": 0, "fault": "nan"}}]
    result = CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo, tasks=tasks)), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "error: tasks.label0: task 'agree0' scored item " in result.output, result.output


def test_resume_refuses_a_changed_campaign(tmp_path, zoo):
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo)), "--out", str(run)]).exit_code == 0
    changed = campaign(tmp_path, zoo, algorithm={"population": 8, "generations": 3, "seed": 4})
    result = CliRunner().invoke(cli, ["run", str(changed), "--out", str(run)])
    assert result.exit_code == 2 and "different campaign" in result.output


def test_where_a_run_is_evaluated_is_not_its_identity_whatever_the_file_writes(tmp_path, zoo):
    """A dask evaluator at the default batch size, or `kind: local` written out, counted as `{}`
    against no section: a run started locally was refused on a cluster ("changed: evaluator"). A
    folder that stored that form still resumes."""
    from evo_merge.config import Campaign, EvaluatorSpec
    from evo_merge.search.binding import config_fingerprint

    data = yaml.safe_load(campaign(tmp_path, zoo).read_text())
    data.pop("evaluator", None)
    local = Campaign.model_validate(data)
    for evaluator in ({"kind": "local"}, {"kind": "dask", "n_workers": 1}, {"kind": "dask", "address": "tcp://h:8786"},
                      {"kind": "dask", "n_workers": 2, "batch_size": 32, "sequence_tokens": 64}):
        elsewhere = Campaign.model_validate({**data, "evaluator": evaluator})
        assert config_fingerprint(elsewhere) == config_fingerprint(local), evaluator
    smaller = Campaign.model_validate({**data, "evaluator": {"kind": "dask", "n_workers": 1, "batch_size": 8}})
    assert config_fingerprint(smaller) != config_fingerprint(local)  # the batch is what tasks compute with
    dask = local.model_copy(update={"evaluator": EvaluatorSpec(kind="dask", n_workers=1)})
    assert config_fingerprint(dask, as_before=True) != config_fingerprint(local)  # the form such folders hold

    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo)), "--out", str(run)]).exit_code == 0
    from evo_merge.search.binding import CONFIG_META, differences
    from evo_merge.search.store import CampaignStore

    store = CampaignStore(run)
    on_dask = Campaign.load(run / "campaign.yaml").model_copy(update={"evaluator": EvaluatorSpec(kind="dask",
                                                                                              n_workers=1)})
    store.set_meta(CONFIG_META, config_fingerprint(on_dask, as_before=True))  # as an earlier version stored it
    assert differences(store, on_dask) is None


def test_a_run_folder_s_own_scheduler_address_is_used_only_when_the_user_names_it(tmp_path, zoo, monkeypatch):
    """A received run folder's campaign.yaml named a scheduler, and `resume` connected to it: a
    scheduler runs what it is given and answers in pickles. The memory plan is of where the run
    evaluates: `--scheduler local` plans this machine's memory, not the remote cluster's (which is
    not measured here; audit 102)."""
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo)), "--out", str(run)]).exit_code == 0
    data = yaml.safe_load((run / "campaign.yaml").read_text())
    data["evaluator"] = {**data.get("evaluator", {}), "kind": "dask", "address": "tcp://127.0.0.1:9"}
    (run / "campaign.yaml").write_text(yaml.safe_dump(data))
    merge = str(pd.read_csv(run / "pareto.csv").id.iloc[0])  # an evaluation export takes (not an input)
    for command in (["resume", str(run)], ["export", str(run), "--pick", merge, "--out", str(tmp_path / "m")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2 and result.output.strip() == (
            f"error: {run / 'campaign.yaml'}: evaluator.address sends this run's work to the dask scheduler at "
            "tcp://127.0.0.1:9; a run folder does not choose where its work goes: pass --scheduler "
            "tcp://127.0.0.1:9 to connect to it (or --scheduler local)"), result.output
    result = CliRunner().invoke(cli, ["resume", str(run), "--scheduler", "local"])
    assert result.exit_code == 0, result.output
    exported = CliRunner().invoke(cli, ["export", str(run), "--pick", merge, "--out", str(tmp_path / "m"),
                                        "--scheduler", "local"])
    assert exported.exit_code == 0 and (tmp_path / "m" / "config.json").is_file(), exported.output
    from evo_merge.merge.host import AVAILABLE

    monkeypatch.setattr("evo_merge.search.capacity.available_memory", lambda: (2**20, AVAILABLE))  # 1 MiB free
    result = CliRunner().invoke(cli, ["resume", str(run), "--scheduler", "local"])
    assert result.exit_code == 2 and f"evo-merge plan {run / 'campaign.yaml'} --out {run}" in result.output, \
        result.output
    result = CliRunner().invoke(cli, ["resume", str(run), "--scheduler", "head"])
    assert result.exit_code == 2 and "--scheduler: 'head' is not a dask scheduler address" in result.output, \
        result.output  # the validator's words, without pydantic's "Value error, " (audit 93)


def test_a_scheduler_named_on_the_command_line_keeps_the_evaluators_other_settings():
    """`--scheduler` changes where a run evaluates, not its batch size or the sequence length its
    memory plan sizes activations by (both were reset to their defaults)."""
    from evo_merge.cli.campaign import _evaluated_where
    from evo_merge.config import EvaluatorSpec

    spec = EvaluatorSpec(kind="dask", n_workers=2, batch_size=4, sequence_tokens=4096)
    campaign = SimpleNamespace(evaluator=spec, model_copy=lambda update: SimpleNamespace(**update))
    local = _evaluated_where(campaign, Path("c.yaml"), "local").evaluator
    remote = _evaluated_where(campaign, Path("c.yaml"), "tcp://head:8786").evaluator
    assert (local.kind, local.address, local.n_workers, local.batch_size, local.sequence_tokens) == (
        "local", None, None, 4, 4096)
    assert (remote.kind, remote.address, remote.n_workers, remote.sequence_tokens) == ("dask", "tcp://head:8786",
                                                                                       None, 4096)


def test_a_score_cache_goes_with_the_run_to_a_cluster_only_said_left(caplog):
    """It serves local evaluation: `resume --scheduler tcp://...` of a run with one was refused,
    naming a setting the run's fingerprint leaves out (audit 148)."""
    from evo_merge.cli.campaign import _evaluated_where
    from evo_merge.config import Campaign

    cached = Campaign(base_model="b", models=["m"], tasks=[{"task": "arith"}],
                      evaluator={"score_cache": "scores.sqlite", "batch_size": 4})
    with caplog.at_level("WARNING", logger="evo_merge"):
        remote = _evaluated_where(cached, Path("c.yaml"), "tcp://head:8786").evaluator
    assert (remote.kind, remote.score_cache, remote.batch_size) == ("dask", None, 4)
    assert [r.getMessage() for r in caplog.records] == [
        "evaluator.score_cache serves local evaluation only: this run goes on the cluster without it"]
    assert _evaluated_where(cached, Path("c.yaml"), "local").evaluator.score_cache == "scores.sqlite"


def test_a_score_cache_that_cannot_serve_is_said_and_the_run_goes_on(tmp_path, zoo, caplog):
    """Another program's database named as the cache: never written into, said naming it, and the
    run scores everything itself (it stopped at its start, blaming the campaign database, audit 148)."""
    grades = tmp_path / "grades.sqlite"
    with closing(sqlite3.connect(grades)) as db:
        db.execute("CREATE TABLE scores (student TEXT, grade REAL)")
    before = grades.read_bytes()
    config = campaign(tmp_path, zoo, evaluator={"score_cache": str(grades)},
                      algorithm={"population": 4, "generations": 1, "seed": 3})
    with caplog.at_level("WARNING", logger="evo_merge"):
        result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"evaluator.score_cache: {grades} is a database of something else (tables: scores); name another file; " \
           "this run goes on without it" in [r.getMessage() for r in caplog.records]
    assert grades.read_bytes() == before


def test_a_run_folder_s_score_cache_is_used_by_the_user_s_word_alone(tmp_path, zoo, monkeypatch, caplog):
    """A folder someone sent names the file its resume writes into and takes measurements from: it
    was read and written unasked (audit 148). The user's own run keeps it without a word; a file the
    folder's campaign.yaml names that the user never said is left alone, said once, the run going on."""
    config = campaign(tmp_path, zoo, evaluator={"score_cache": "scores.sqlite"},
                      algorithm={"population": 4, "generations": 1, "seed": 3})
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(config), "--out", str(run)]).exit_code == 0
    own = run / "campaign.yaml"
    sent = tmp_path / "sent.sqlite"  # the line edited as a sender would (the fingerprint leaves it out)
    data = yaml.safe_load(own.read_text())
    assert data["evaluator"]["score_cache"] == str(tmp_path / "scores.sqlite")  # stored absolute
    data["evaluator"]["score_cache"] = str(sent)
    own.write_text(yaml.safe_dump(data))
    warning = (f"{own}: evaluator.score_cache names {sent}, and this run folder does not carry your word for it (not "
               "started, or resumed with --score-cache, by you here); this run goes on without it: pass "
               "--score-cache to read and write that file")
    for word in ([], ["--no-score-cache"]):
        caplog.clear()
        with caplog.at_level("WARNING", logger="evo_merge"):
            result = CliRunner().invoke(cli, ["resume", str(run), *word])
        assert result.exit_code == 0, result.output
        assert not sent.exists()
        assert (warning in [r.getMessage() for r in caplog.records]) == (word == [])
    assert CliRunner().invoke(cli, ["resume", str(run), "--score-cache"]).exit_code == 0
    assert sent.exists()  # made by the word, which marks the folder
    sent.unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge"):
        assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0
    assert sent.exists() and warning not in [r.getMessage() for r in caplog.records]  # the word, once given, is kept
    sent.unlink()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))  # the folder sent to someone else
    (pick, *_) = pd.read_csv(run / "pareto.csv")["id"]
    exported = CliRunner().invoke(cli, ["export", str(run), "--pick", str(pick), "--out", str(tmp_path / "pick"),
                                        "--trust-tasks"])
    assert exported.exit_code == 0, exported.output
    assert not sent.exists()
    data["evaluator"]["score_cache"] = str(tmp_path / "scores.sqlite")
    own.write_text(yaml.safe_dump(data))  # the file its own runner named: the other user's word is needed too
    before = (tmp_path / "scores.sqlite").read_bytes()
    assert CliRunner().invoke(cli, ["resume", str(run), "--trust-tasks"]).exit_code == 0
    assert (tmp_path / "scores.sqlite").read_bytes() == before


def test_run_of_a_run_folder_s_own_campaign_file_asks_the_word_resume_asks(tmp_path, zoo, monkeypatch, caplog):
    """`run SENT/campaign.yaml --out SENT` connected to the scheduler the folder names, reported to its
    trackers and used its score cache, where `resume SENT` asks the user's word for each; the user's
    own folder carries their marks."""
    fresh = tmp_path / "run"
    mine = campaign(tmp_path, zoo, evaluator={"score_cache": "scores.sqlite"},
                    algorithm={"population": 4, "generations": 1, "seed": 3})
    assert CliRunner().invoke(cli, ["run", str(mine), "--out", str(fresh)]).exit_code == 0
    config = fresh / "campaign.yaml"
    (tmp_path / "scores.sqlite").unlink()
    with caplog.at_level("WARNING", logger="evo_merge"):
        assert CliRunner().invoke(cli, ["run", str(config), "--out", str(fresh)]).exit_code == 0
    assert (tmp_path / "scores.sqlite").exists() and "does not carry your word" not in caplog.text
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))  # the folder as someone else gets it
    before = (tmp_path / "scores.sqlite").read_bytes()
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge"):
        again = CliRunner().invoke(cli, ["run", str(config), "--out", str(fresh), "--trust-tasks"])
    assert again.exit_code == 0, again.output
    assert (f"{config}: evaluator.score_cache names {tmp_path / 'scores.sqlite'}, and this run folder does not carry "
            "your word for it (not started, or resumed with --score-cache, by you here); this run goes on without it: "
            "resume the folder with --score-cache to read and write that file, or run a copy of the file, once read, "
            "from outside the folder") in [r.getMessage() for r in caplog.records]
    assert (tmp_path / "scores.sqlite").read_bytes() == before
    data = yaml.safe_load(config.read_text())
    data["evaluator"].update(kind="dask", address="tcp://127.0.0.1:9", score_cache=None)  # left out of the fingerprint
    config.write_text(yaml.safe_dump(data))
    for args in (["run", str(config), "--out", str(fresh)], ["run", str(config), "--out", str(tmp_path / "mine")]):
        refused = CliRunner().invoke(cli, [*args, "--trust-tasks"])
        assert refused.exit_code == 2 and refused.output.strip() == (
            f"error: {config}: evaluator.address sends this run's work to the dask scheduler at tcp://127.0.0.1:9; a "
            "run folder does not choose where its work goes: resume the folder with --scheduler tcp://127.0.0.1:9 to "
            "connect to it (or --scheduler local), or run a copy of the file, once read, from outside the folder")
    assert not (tmp_path / "mine").exists()


def test_a_run_s_score_cache_keys_hold_its_storage_dtype_and_each_task_s_options(tmp_path, zoo, monkeypatch):
    """What the campaign decides beyond the models: scores merged from task vectors kept in bfloat16,
    or of a task given other options, were served to a run keeping float32 or giving its own."""
    from agreement_task import AgreementTask  # tests/search is on sys.path

    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner
    from evo_merge.search.candidate import Candidate

    monkeypatch.setattr(AgreementTask, "items_digest", "0123456789abcdef:fedcba9876543210", raising=False)
    candidate = Candidate("task_arithmetic", (0.5, 1.0), (("lambda", 1.0),))

    def keys(name, **overrides):
        config = campaign(tmp_path, zoo, evaluator={"score_cache": "scores.sqlite"}, **overrides)
        with CampaignRunner.open(Campaign.load(config), run_dir=tmp_path / name) as runner:
            return runner.ledger.kept.keys.model(candidate), dict(runner.ledger.kept.keys.tasks)

    model, tasks = keys("float32", storage={"dtype": "float32"})
    assert keys("bfloat16", storage={"dtype": "bfloat16"})[0] != model
    _, fts = zoo
    other = agreement_tasks(fts)
    other[1]["options"]["delay"] = 0.001  # an option of agree1 alone
    _, changed = keys("options", storage={"dtype": "float32"}, tasks=other)
    assert changed["agree0"] == tasks["agree0"] and changed["agree1"] != tasks["agree1"]


def test_opening_a_run_with_a_score_cache_hashes_each_model_file_once(tmp_path, zoo, monkeypatch):
    """A 7B model's files take 12 s or more to hash: keys were made by hashing them again, which a
    cache that cannot remember digests (a read-only one) paid twice."""
    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner
    from evo_merge.search.score_cache import ScoreCache

    hashed = []
    digest = ScoreCache.file_digest
    monkeypatch.setattr(ScoreCache, "file_digest", lambda self, file: hashed.append(file) or digest(self, file))
    config = campaign(tmp_path, zoo, evaluator={"score_cache": "scores.sqlite"})
    with CampaignRunner.open(Campaign.load(config), run_dir=tmp_path / "run") as runner:
        assert runner.ledger.kept is not None
    base, fts = zoo
    weights = {f for folder in (base, *fts) for f in Path(folder).glob("*.safetensors")}
    assert len(hashed) == len(set(hashed)) and weights <= set(hashed)  # each file once, every weight file


def test_a_setting_added_later_at_its_default_keeps_the_fingerprint(tmp_path, zoo):
    from evo_merge.config import AlgorithmSpec, Campaign
    from evo_merge.search.binding import config_fingerprint

    class LaterAlgorithm(AlgorithmSpec):
        future_option: bool = False

    class LaterCampaign(Campaign):
        algorithm: LaterAlgorithm = LaterAlgorithm()

    data = yaml.safe_load(campaign(tmp_path, zoo).read_text())
    now, later = Campaign.model_validate(data), LaterCampaign.model_validate(data)
    assert config_fingerprint(later) == config_fingerprint(now)
    changed = LaterCampaign.model_validate({**data, "algorithm": {**data["algorithm"], "future_option": True}})
    assert config_fingerprint(changed) != config_fingerprint(now)


def test_reordering_a_tasks_options_keeps_the_fingerprint(tmp_path, zoo):
    """Options are keyword arguments: their order in the file computes nothing, so a campaign.yaml
    whose options an editor reordered still resumes its run folder. A folder written before version
    8 holds the file's order, and is still matched by it."""
    from evo_merge.config import Campaign
    from evo_merge.search.binding import config_fingerprint

    data = yaml.safe_load(campaign(tmp_path, zoo).read_text())
    reordered = {**data, "tasks": [{**t, "options": dict(reversed(t["options"].items()))} for t in data["tasks"]]}
    now, edited = Campaign.model_validate(data), Campaign.model_validate(reordered)
    assert list(edited.tasks[0].options) != list(now.tasks[0].options)
    assert config_fingerprint(edited) == config_fingerprint(now)
    assert config_fingerprint(edited, written_at=7) != config_fingerprint(now, written_at=7)
    changed = {**data, "tasks": [{**data["tasks"][0], "options": {**data["tasks"][0]["options"], "seed": 9}},
                                 *data["tasks"][1:]]}
    assert config_fingerprint(Campaign.model_validate(changed)) != config_fingerprint(now)


def test_a_run_written_before_a_default_changed_resumes_with_its_former_default(tmp_path, zoo):
    from evo_merge.config import FORMER_DEFAULTS, Campaign
    from evo_merge.search.binding import DEFAULTS_META, config_fingerprint
    from evo_merge.search.store import CampaignStore

    former = {"estimator": {"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1,
                            "anchor_method": FORMER_DEFAULTS["estimator", "anchor_method"][0][0],
                            "anchor_allocation": FORMER_DEFAULTS["estimator", "anchor_allocation"][0][0],
                            "warmup_standard": FORMER_DEFAULTS["estimator", "warmup_standard"][0][0]},
              "algorithm": {"population": 8, "generations": 1, "seed": 3,
                            "seed_standard_merges": FORMER_DEFAULTS["algorithm", "seed_standard_merges"][0][0]},
              "final": {"evaluate_top": 3, "race": FORMER_DEFAULTS["final", "race"][0][0],
                        "measure_whole": FORMER_DEFAULTS["final", "measure_whole"][0][0]},
              "dtype": FORMER_DEFAULTS["", "dtype"][0][0]}  # "": a top-level setting

    def written_by_the_older_version(run, marked):
        """A finished run whose store holds the fingerprint the older version computed (those
        settings left out as defaults) and, unless `marked`, no defaults mark."""
        path = campaign(tmp_path, zoo, **former)
        assert CliRunner().invoke(cli, ["run", str(path), "--out", str(run)]).exit_code == 0
        data = yaml.safe_load((run / "campaign.yaml").read_text())
        assert data["estimator"]["anchor_method"] == "kmeans-irt"  # its own file spells the former defaults out
        for section, name in FORMER_DEFAULTS:  # what the older version fingerprinted: those keys left out
            del (data[section] if section else data)[name]
        store = CampaignStore(run)
        store.set_meta("config", config_fingerprint(Campaign.model_validate(data)))
        if not marked:
            store.db.execute("DELETE FROM meta WHERE key = ?", (DEFAULTS_META.key,))
        store.close()

    written_by_the_older_version(tmp_path / "old", marked=False)
    result = CliRunner().invoke(cli, ["resume", str(tmp_path / "old")])
    assert result.exit_code == 0 and "different campaign" not in result.output, result.output
    # a run written by this version with the new defaults is no former one: the same file is refused
    written_by_the_older_version(tmp_path / "new", marked=True)
    result = CliRunner().invoke(cli, ["resume", str(tmp_path / "new")])
    assert result.exit_code == 2 and "different campaign" in result.output


def test_a_run_written_by_a_newer_version_is_refused_naming_it(tmp_path, zoo):
    """A folder marked with defaults a newer evo-merge wrote was resumed under this version's
    defaults without a word (audit 96). (`status` and `report` only read what it stored.)"""
    from evo_merge import __version__
    from evo_merge.config import DEFAULTS_VERSION
    from evo_merge.search.binding import DEFAULTS_META
    from evo_merge.search.store import CampaignStore

    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo)), "--out", str(run)]).exit_code == 0
    store = CampaignStore(run)
    store.set_meta(DEFAULTS_META, DEFAULTS_VERSION + 1)
    store.close()
    for command in (["resume"], ["export", "--pick", "balanced", "--out", str(tmp_path / "pick")]):
        result = CliRunner().invoke(cli, [command[0], str(run), *command[1:]])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == (
            f"error: {run}: written by a newer evo-merge (campaign defaults version {DEFAULTS_VERSION + 1}; this one, "
            f"{__version__}, knows versions up to {DEFAULTS_VERSION}); upgrade evo-merge to open it"), command


def test_a_run_written_before_auto_anchors_changed_resumes_with_the_anchors_it_chose(tmp_path, zoo):
    """Defaults version 8 changed what `auto` anchors are: a version-7 folder, calibrated on fewer than
    30 subjects (stratified anchors then and now, but not what kmeans-irt would pick), re-chooses
    the same anchors when it resumes, so its later candidates are scored on the items its earlier
    ones were."""
    run = _small_gpirt_run(tmp_path, zoo)

    def anchors(runner):
        chosen = {name: (e.anchors.method, e.anchor_ids) for name, e in runner.scoring.estimators.items()}
        return runner.workspace.campaign.estimator.anchor_method, chosen

    method, today = anchors(_calibrated(run, written_at=9))  # one draw per set, as version 7's were too
    assert method == "auto" and {m for m, _ in today.values()} == {"stratified"}
    assert anchors(_calibrated(run, written_at=7)) == ("auto-kmeans", today)


def _small_gpirt_run(tmp_path, zoo):
    """A finished 4 x 1 gp-IRT campaign with 3 anchors per scenario, for the resume tests."""
    path = campaign(tmp_path, zoo, estimator={"kind": "gpirt", "anchors": 3, "warmup_merges": 2, "dims": 1},
                    algorithm={"population": 4, "generations": 1, "seed": 0})
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(path), "--out", str(run)]).exit_code == 0
    return run


def _calibrated(run, written_at=None):
    """The run reopened (as marked written under defaults `written_at`, where given), its
    calibration replayed from the folder, so its scoring is as a resume would have it."""
    from evo_merge.config import Campaign
    from evo_merge.search.binding import DEFAULTS_META
    from evo_merge.search.campaign import CampaignRunner
    from evo_merge.search.store import CampaignStore

    if written_at is not None:
        store = CampaignStore(run)
        store.set_meta(DEFAULTS_META, written_at)
        store.close()
    runner = CampaignRunner.open(Campaign.load(run / "campaign.yaml"), run, run)
    runner.calibrate()
    runner.close()
    return runner


def test_status_counts_the_standard_merges_the_report_marks(tmp_path, zoo):
    """With fewer warm-ups than standard merges, the rest are bred in the search's first generation:
    `status` counted the warm-ups only (4 standard merges where the run and the report had 5)."""
    from evo_merge.search.store import SEARCH, CampaignStore

    path = campaign(tmp_path, zoo, estimator={"kind": "gpirt", "anchors": 3, "warmup_merges": 2, "dims": 1},
                    algorithm={"population": 6, "generations": 1, "seed": 0})
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(path), "--out", str(run)]).exit_code == 0
    store = CampaignStore(run)
    standard = [e for e in store.evaluations() if e.key in store.get_meta("baselines") and e.status == "ok"]
    store.close()
    searched = sum(e.phase == SEARCH for e in standard)
    assert searched >= 1
    status = CliRunner().invoke(cli, ["status", str(run)]).output
    assert f", {len(standard)} standard merges ({searched} of them in the search)" in status, status


def test_a_folder_reopened_across_an_estimator_revision_says_so(tmp_path, zoo, caplog):
    """A run records the estimator revision it scores with. Reopened by an evo-merge whose formulas
    changed since (here: a folder from before revisions were recorded), it says so once, keeps the
    revisions it was scored with, and `status` shows them; a folder of this revision says nothing."""
    from evo_merge.config import Campaign
    from evo_merge.irt import ESTIMATOR_REVISION
    from evo_merge.search.campaign import CampaignRunner
    from evo_merge.search.store import MIXED_META, REVISION_META, CampaignStore

    path = campaign(tmp_path, zoo, estimator={"kind": "gpirt", "anchors": 3, "warmup_merges": 2, "dims": 1},
                    algorithm={"population": 4, "generations": 1, "seed": 0})
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(path), "--out", str(run)]).exit_code == 0

    def reopen(scoring: bool = False) -> list[str]:
        caplog.clear()
        runner = CampaignRunner.open(Campaign.load(run / "campaign.yaml"), run, run)
        runner.calibrate()  # replayed from the run folder
        if scoring:  # a candidate estimated anew, as a resume's next generation estimates it
            stored = runner.workspace.store
            runner.scoring.estimate(stored.item_scores(stored.evaluations()[0].key), "a new candidate")
        runner.close()
        return [r.getMessage() for r in caplog.records if "estimator" in r.getMessage()]

    store = CampaignStore(run)
    assert store.get_meta(REVISION_META) == ESTIMATOR_REVISION and store.get_meta(MIXED_META) is None
    store.db.execute("DELETE FROM meta WHERE key = ?", (REVISION_META.key,))  # as a folder from before
    store.close()
    assert "revisions" not in CliRunner().invoke(cli, ["status", str(run)]).output
    said = reopen()
    assert len(said) == 1 and "before revisions were recorded" in said[0]
    assert f"estimates with revision {ESTIMATOR_REVISION}" in said[0]
    store = CampaignStore(run)  # nothing estimated anew (a finished folder's resume): not marked as mixing
    assert store.get_meta(MIXED_META) is None and store.get_meta(REVISION_META) is None
    store.close()
    assert len(reopen(scoring=True)) == 1
    store = CampaignStore(run)
    assert store.get_meta(MIXED_META) == [0, ESTIMATOR_REVISION]
    assert store.get_meta(REVISION_META) == ESTIMATOR_REVISION
    store.close()
    assert reopen() == []  # said once
    status = CliRunner().invoke(cli, ["status", str(run)])
    assert status.exit_code == 0
    shown = " ".join(status.output.split())  # (the console wraps long lines)
    assert f"estimator revisions unrecorded (before revisions) and {ESTIMATOR_REVISION};" in shown
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0  # the report says it too
    report = " ".join((run / "report.md").read_text().split())
    assert f"estimator revisions unrecorded (before revisions) and {ESTIMATOR_REVISION};" in report


def test_a_run_written_before_a_setting_existed_runs_with_what_it_did_then(tmp_path, zoo):
    """A version-2 folder's campaign.yaml has no anchor_allocation, and its fingerprint cannot
    tell it from today's default (neyman): it must resume with the equal allocation it ran with,
    not silently score its later candidates on other anchors. Likewise a version-3 folder has no
    final.race: it measures every finalist, as it would have."""
    from evo_merge.config import Campaign
    from evo_merge.irt import choose_anchor_method
    from evo_merge.search.binding import DEFAULTS_META
    from evo_merge.search.store import CampaignStore
    from evo_merge.search.workspace import Workspace

    path = campaign(tmp_path, zoo, estimator={"kind": "gpirt", "anchors": 3, "warmup_merges": 2, "dims": 1},
                    algorithm={"population": 4, "generations": 1, "seed": 0})
    data = yaml.safe_load(path.read_text())
    assert "anchor_allocation" not in data["estimator"]
    runs = {}
    for version in (2, 3, 4, 5, 6, 7, 8):
        run = tmp_path / f"v{version}"
        Workspace.open(Campaign.model_validate(data), path.parent, run).store.close()
        store = CampaignStore(run)
        store.set_meta(DEFAULTS_META, version)
        store.close()
        runs[version] = Workspace.open(Campaign.model_validate(data), path.parent, run)
    assert runs[2].campaign.estimator.anchor_allocation == "equal"
    assert runs[3].campaign.estimator.anchor_allocation == "neyman"
    assert runs[2].campaign.final.race == runs[3].campaign.final.race == []
    assert runs[4].campaign.final.race == [0.125, 0.25, 0.5]
    assert runs[4].campaign.estimator.anchor_allocation == "neyman"
    # every survivor of the race was measured on every item until version 5 (its 50% stage too)
    assert {runs[v].campaign.final.measure_whole for v in (2, 3, 4)} == {"survivors"}
    assert (runs[5].campaign.final.race, runs[5].campaign.final.measure_whole) == ([0.125, 0.25], "picks")
    # every warm-up merge was random until version 7; since, the standard merges come first
    assert [runs[v].campaign.estimator.warmup_standard for v in (6, 7)] == [False, True]
    # `auto` anchors were kmeans-irt from 30 calibration subjects until version 8, stratified below:
    # `auto-kmeans` today; since, stratified-irt from 30
    assert {runs[v].campaign.estimator.anchor_method for v in range(2, 8)} == {"auto-kmeans"}
    assert runs[8].campaign.estimator.anchor_method == "auto"
    assert [choose_anchor_method("auto-kmeans", n)[0] for n in (12, 30)] == ["stratified", "kmeans-irt"]
    assert [choose_anchor_method("auto", n)[0] for n in (12, 30)] == ["stratified", "stratified-irt"]
    for workspace in runs.values():
        workspace.store.close()


def test_resolve_campaign_makes_every_path_absolute_against_the_campaign_folder(tmp_path):
    from evo_merge.config import Campaign
    from evo_merge.search.workspace import resolve_campaign

    campaign = Campaign.model_validate({
        "base_model": "zoo/base", "models": ["zoo/a", str(tmp_path / "b")],
        "tasks": [{"task": "arith"}, {"task": "agreement_task:AgreementTask"}, {"task": "tasks/mine.yaml"},
                  {"task": "other.yml"}],
        "estimator": {"irt_model": "../irt_models"},
        "align": {"arch": "specs/perm.yaml", "data": "sample.safetensors"},
    })
    folder = tmp_path / "configs"
    for local in ("zoo/base", "zoo/a", "adapters/x"):  # existing folders; `org/name` that is no folder is a Hub id
        (folder / local).mkdir(parents=True)
    resolved = resolve_campaign(campaign, folder)
    assert resolved.base_model == str(folder / "zoo" / "base")
    assert resolved.models == [str(folder / "zoo" / "a"), str(tmp_path / "b")]
    assert [t.task for t in resolved.tasks] == ["arith", "agreement_task:AgreementTask",  # names, plugins kept
                                                 str(folder / "tasks" / "mine.yaml"), str(folder / "other.yml")]
    assert resolved.estimator.irt_model == str(tmp_path / "irt_models")  # normalised
    assert (resolved.align.arch, resolved.align.data) == (str(folder / "specs" / "perm.yaml"),
                                                          str(folder / "sample.safetensors"))
    assert resolve_campaign(resolved, tmp_path / "elsewhere") == resolved  # absolute paths stay put
    hub = campaign.model_copy(update={"base_model": "org/model@main", "models": ["zoo/a+adapters/x"]})
    assert resolve_campaign(hub, folder).base_model == "org/model@main"
    assert resolve_campaign(hub, folder).models == [f"{folder / 'zoo' / 'a'}+{folder / 'adapters' / 'x'}"]
    hub_adapter = campaign.model_copy(update={"models": ["zoo/a+org/lora@main", "org/model+adapters/x"]})
    assert resolve_campaign(hub_adapter, folder).models == [f"{folder / 'zoo' / 'a'}+org/lora@main",
                                                            f"org/model+{folder / 'adapters' / 'x'}"]
    with_shipped_arch = campaign.model_copy(update={"align": campaign.align.model_copy(update={"arch": "mlp"})})
    assert resolve_campaign(with_shipped_arch, folder).align.arch == "mlp"


def test_a_campaign_with_relative_paths_resumes_from_its_stored_config(tmp_path, zoo, monkeypatch):
    """Relative paths are taken against the campaign file; the run stores them absolute, so
    status and resume work from any folder and see the same campaign."""
    base, fts = zoo
    folder = tmp_path / "configs"
    folder.mkdir()
    path = campaign(folder, zoo, algorithm={"population": 4, "generations": 2, "seed": 0},
                    estimator={"kind": "anchor", "anchors": 5}, final={"evaluate_top": 1})
    config = yaml.safe_load(path.read_text())
    config["base_model"] = os.path.relpath(base, folder)
    config["models"] = [os.path.relpath(f, folder) for f in fts]
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # neither the config's folder nor the models'
    result = CliRunner().invoke(cli, ["run", str(path.relative_to(tmp_path)), "--out", "run"])
    assert result.exit_code == 0, result.output
    stored = yaml.safe_load((tmp_path / "run" / "campaign.yaml").read_text())
    assert stored["base_model"] == str(base) and stored["models"] == [str(f) for f in fts]
    for command in ("status", "resume"):
        result = CliRunner().invoke(cli, [command, "run"])
        assert result.exit_code == 0 and "different campaign" not in result.output, result.output


def test_a_relative_model_missing_beside_the_campaign_is_not_read_from_the_working_directory(tmp_path, zoo,
                                                                                              monkeypatch):
    """`models: [zoo/ft0]` with no `zoo/` beside the campaign file was read from the working
    directory's `zoo/ft0` without a word, and the run recorded the relative name, so it resumed
    only from there (audit 127). A relative name missing beside the campaign is a Hub id."""
    base, fts = zoo
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "configs").mkdir()
    path = campaign(tmp_path / "configs", zoo, algorithm={"population": 4, "generations": 1, "seed": 0},
                    estimator={"kind": "anchor", "anchors": 5}, final={"evaluate_top": 1})
    config = yaml.safe_load(path.read_text())
    config["models"] = ["zoo/ft0", str(fts[1])]
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "cwd" / "zoo").mkdir(parents=True)
    shutil.copytree(fts[0], tmp_path / "cwd" / "zoo" / "ft0")
    monkeypatch.chdir(tmp_path / "cwd")
    for command in (["plan", str(path)], ["run", str(path), "--out", str(tmp_path / "run")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert "models.0: no folder zoo/ft0 beside the campaign file, and Hub model zoo/ft0 is not in the local " \
               "cache" in result.output, result.output
    config["models"] = ["../cwd/zoo/ft0", str(fts[1])]  # written against the campaign file's folder: found
    path.write_text(yaml.safe_dump(config))
    assert CliRunner().invoke(cli, ["plan", str(path)]).exit_code == 0
    # a run folder naming one so (as the working directory's read once recorded it) says how to mend it
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, ["run", str(path), "--out", str(run)]).exit_code == 0
    stored = yaml.safe_load((run / "campaign.yaml").read_text())
    (run / "campaign.yaml").write_text(yaml.safe_dump({**stored, "models": ["zoo/ft0", *stored["models"][1:]]}))
    resumed = CliRunner().invoke(cli, ["resume", str(run)])
    assert resumed.exit_code == 2 and "is not in the local cache" in resumed.output, resumed.output
    assert f"if the models moved, write their new place into {run / 'campaign.yaml'}" in resumed.output


def test_seeded_first_generation_starts_from_the_endpoints_and_the_standard_merges(tmp_path, zoo):
    from evo_merge.search.candidate import endpoint_candidate, standard_merges

    def first_generation(seeded):
        """(generation 1 as told to the algorithm, the keys the search phase evaluated in it)."""
        run = tmp_path / f"run-{seeded}"
        path = campaign(tmp_path, zoo, estimator={"kind": "anchor", "anchors": 5}, final={"evaluate_top": 1},
                        algorithm={"population": 8, "generations": 1, "seed": 3, "seed_standard_merges": seeded})
        assert CliRunner().invoke(cli, ["run", str(path), "--out", str(run)]).exit_code == 0
        db = sqlite3.connect(run / "state.sqlite")
        (told,) = db.execute("SELECT keys FROM generations WHERE generation = 1").fetchone()
        searched = {k for (k,) in db.execute("SELECT key FROM evaluations WHERE phase='search' AND generation=1")}
        return set(json.loads(told)), searched

    merges, endpoints = standard_merges(2), {endpoint_candidate(i, 2).key for i in range(2)}
    # the test campaign searches task_arithmetic (lambda in [0.5, 1.5]), ties (density in [0.2, 0.9]) and tsv
    expressible = {merges[k].key for k in ("task_arithmetic lambda=0.5", "task_arithmetic lambda=0.7",
                                           "task_arithmetic lambda=1.0", "ties density=0.2", "tsv alpha=1")}
    (seeded, searched), (unseeded, _) = first_generation(True), first_generation(False)
    assert endpoints | expressible <= seeded and len(seeded) == 8
    # each endpoint alone, and each standard merge (the first warm-ups), was scored in calibration:
    # looked up, not evaluated again by the search
    assert not (endpoints | expressible) & searched
    assert merges["task_arithmetic lambda=0.3"].key not in seeded  # below the searched lambda range
    assert not (expressible | endpoints) & unseeded


def test_a_hyperparameter_given_one_value_is_fixed_in_every_candidate_and_its_recipe(tmp_path, zoo):
    """`dare_ties: {seed: 7}` (no search could vary a seed) and `ties: {density: 0.5}`: every
    candidate of the method carries the value, the genome has no gene for it, and a candidate is its
    recipe's merge, seed and all (a campaign refused a seed, so DARE recipes always said seed 0)."""
    from safetensors.torch import load_file

    from evo_merge.search.candidate import Candidate
    from evo_merge.search.store import CampaignStore
    from evo_merge.search.workbench import Workbench

    methods = {"dare_ties": {"seed": 7, "density": [0.3, 0.9]}, "ties": {"density": 0.5}}
    path = campaign(tmp_path, zoo, methods=methods, algorithm={"population": 6, "generations": 1, "seed": 3})
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(run)])
    assert result.exit_code == 0, result.output
    store = CampaignStore(run)
    searched = [e for e in store.evaluations("search") if e.status == "ok"]
    store.close()
    params = {e.method: [] for e in searched}
    for e in searched:
        params[e.method].append(Candidate.from_key(e.key).param_dict)
    assert {"dare_ties", "ties"} <= set(params)
    assert all(p["seed"] == 7 and 0.3 <= p["density"] <= 0.9 for p in params["dare_ties"])
    assert all(p == {"density": 0.5, "lambda": p["lambda"]} for p in params["ties"])
    dare = next(e for e in searched if e.method == "dare_ties")
    out = tmp_path / "dare"
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(dare.id), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "merge_recipe.yaml").read_text())["parameters"]["seed"] == 7
    bench = Workbench.open(*zoo, device="cpu")
    candidate = Candidate.from_key(dare.key)
    state = {k: v.clone() for k, v in bench.merger.apply(candidate.method, candidate.weights,
                                                        dict(candidate.params)).state_dict().items()}
    written = load_file(out / "model.safetensors")
    assert all(torch.equal(state[name], tensor) for name, tensor in written.items())
    seed0 = bench.merger.apply(candidate.method, candidate.weights, {**candidate.param_dict, "seed": 0}).state_dict()
    assert any(not torch.equal(seed0[name], tensor) for name, tensor in written.items())  # the seed mattered


BAD = {
    "missing file": ({"base_model": "/nonexistent/base"}, "campaign.yaml: base_model"),
    "missing endpoint": ({"models": ["/nonexistent/m"]}, "campaign.yaml: models.0: model path"),
    "unknown shipped task": ({"tasks": [{"task": "arith"}, {"task": "seqx"}]},
                             "campaign.yaml: tasks.1: unknown task 'seqx': not a file, a folder, a plugin, a shipped "
                             "benchmark (arith, lang, seq) or an lm-eval task (did you mean 'seq'?)"),
    "architecture of another model": ({"align": {"arch": "mlp"}}, "campaign.yaml: align.arch mlp does not match"),
    "unknown method": ({"methods": {"frankenmerge": {}}}, "methods: frankenmerge"),
    "misspelt method": ({"methods": {"tie": {}}}, "methods: tie: unknown merge method 'tie' (did you mean 'ties'?)"),
    "empty range": ({"methods": {"ties": {"density": [0.9, 0.2]}}}, "methods: ties.density: empty range"),
    "unknown task": ({"tasks": [{"task": "no_such_module:Task"}]}, "campaign.yaml: tasks.0: task plugin"),
    "wrong type": ({"algorithm": {"population": "many"}}, "algorithm.population"),
    "unknown key": ({"estimatr": {}}, "estimatr: unknown key"),
    "range outside the domain": ({"methods": {"ties": {"density": [0.1, 1.5]}}},
                                 "methods: ties.density: range [0.1, 1.5] leaves the domain of density [0.0, 1.0]"),
    "infinite coefficient": ({"coefficients": {"high": float("inf")}}, "coefficients.high: Input should be a finite"),
    "range of an unsearched parameter": ({"methods": {"dare_ties": {"seed": [0, 5]}}},
                                         "methods: dare_ties.seed: seed is not searched; give one value to fix it"),
    "fixed value outside the domain": ({"methods": {"ties": {"density": 1.5}}},
                                       "methods: ties.density: 1.5 is outside [0.0, 1.0]"),
    "fixed value of the wrong type": ({"methods": {"dare_ties": {"seed": 2.5}}},
                                      "methods: dare_ties.seed: expected an integer, got 2.5"),
    "fixed value below an open domain": ({"methods": {"mass": {"layer": -1}}},
                                         "methods: mass.layer: -1 is below 0"),  # was "outside [0, None]"
    "unknown parameter": ({"methods": {"ties": {"densty": 0.5}}}, "methods: ties.densty: not a parameter of ties"),
    "nan in a range": ({"methods": {"ties": {"density": [float("nan"), 0.5]}}},
                       "methods: ties.density: expected a range of two finite numbers within float32's range "
                       "[low, high] or one value, not [nan, 0.5]"),
    # an overflowing span: the search explored nothing (audit 96); a fixed value scales float32 tensors too
    "huge coefficients": ({"coefficients": {"low": -1e308, "high": 1e308}},
                          "coefficients.low: expected a finite number within float32's range (±3.403e+38), "
                          "got -1e+308"),
    "huge range": ({"methods": {"task_arithmetic": {"lambda": [0.5, 1e39]}}},
                   "methods: task_arithmetic.lambda: expected a range of two finite numbers within float32's range"),
    # an integer no float holds: an OverflowError traceback in the setting's own check (audit 98)
    "huge integer": ({"methods": {"task_arithmetic": {"lambda": 10**400}}},
                     "methods: task_arithmetic.lambda: expected a finite number within float32's range "
                     "(±3.403e+38), got an integer of about 401 digits"),
    "huge fixed value": ({"methods": {"task_arithmetic": {"lambda": 1e39}}},
                         "methods: task_arithmetic.lambda: expected a finite number within float32's range "
                         "(±3.403e+38), got 1e+39"),
    "report columns clash": ({"tasks": [{"task": "arith", "name": "a"}, {"task": "lang", "name": "se_a"}]},
                             "tasks 'a' and 'se_a': their report columns would clash (est_se_a)"),
    "traversal task name": ({"tasks": [{"task": "arith", "name": "../../x"}]}, "tasks.0.name: '../../x' is not a safe"),
    "unsafe task label": ({"tasks": [{"task": "my tasks/a b.yaml"}]}, "label 'a b' is not a safe folder name"),
    # recorded and printed by `status` and the report: an escape sequence reached the terminal (audit 116)
    "control character in a name": ({"name": "c\x1b[31m"}, "name: 'c\\x1b[31m' holds the control character '\\x1b'"),
    "carriage return in a model": ({"models": ["a\rb"]}, "models.0: 'a\\rb' holds the control character '\\r'"),
    # accepted, they failed the run with a traceback once calibration had measured every item
    "learning rate for torch": ({"estimator": {"lr": 0.1}}, "estimator: lr: applies to backend: pyirt only"),
    "epochs for torch": ({"estimator": {"epochs": 5}}, "estimator: epochs: applies to backend: pyirt only"),
}


def test_a_tab_or_newline_in_a_campaign_s_names_is_kept():
    """Campaigns whose paths hold a tab, or whose name is a YAML block scalar (ending in a newline),
    ran before control characters were refused; their folders must still resume (audit 117): only
    what drives a terminal (ESC, carriage return, BEL, the C1 codes) is refused."""
    from evo_merge.config import check_printable

    assert check_printable("runs/tab\tzoo/a") == "runs/tab\tzoo/a" and check_printable("my run\n") == "my run\n"
    for bad in ("\x1b[2J", "a\rb", "\x07", "\x9b31m"):
        with pytest.raises(ValueError, match="holds the control character"):
            check_printable(bad)


def test_a_campaign_on_a_float64_base_runs_in_float32(tmp_path, zoo):
    """A float64 family stopped a run at its start on "unknown dtype 'torch.float64'" (audit 118):
    `dtype: auto` evaluates it in float32, the widest dtype a campaign names, and exports the picks so;
    `storage.dtype: auto` keeps its tensors as they are."""
    wide = []
    for folder in (zoo[0], *zoo[1]):
        copy = shutil.copytree(folder, tmp_path / "f64" / folder.name)
        weights = load_file(copy / "model.safetensors")
        save_file({k: v.double() for k, v in weights.items()}, copy / "model.safetensors")
        wide.append(copy)
    config = campaign_config(wide[0], wide[1:], name="f64", algorithm={"population": 4, "generations": 1, "seed": 3},
                             final={"evaluate_top": 1, "export": ["balanced"]})
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    ran = CliRunner().invoke(cli, ["run", str(tmp_path / "campaign.yaml"), "--out", str(tmp_path / "run")])
    assert ran.exit_code == 0, ran.output
    pick = tmp_path / "run" / "models" / "balanced"
    assert {t.dtype for t in tensors_of(pick).values()} == {torch.float32}
    # the task vectors are kept as they are, in float64, and the run records so (audit 119): no rounding said
    from evo_merge.search.store import CampaignStore

    with closing(CampaignStore(tmp_path / "run")) as store:
        assert store.get_meta("facts")["stored_dtype"] == "float64"
    assert "rounded once" not in (tmp_path / "run" / "report.md").read_text()


def test_an_endpoint_folder_named_with_a_newline_forges_no_line(tmp_path, zoo):
    """A newline is allowed in a campaign's paths (runs with one ran before), and an endpoint folder
    named `ft\\nFORGED` printed a row of its own in the run's results table and in `export`'s
    line (audit 118): both show it as text."""
    base, fts = zoo
    named = shutil.copytree(fts[0], tmp_path / "ft\nFORGED")
    config = campaign_config(base, [named, fts[1]], name="nl", algorithm={"population": 4, "generations": 1, "seed": 3},
                             final={"evaluate_top": 1, "export": ["balanced"]})
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(config))
    ran = CliRunner().invoke(cli, ["run", str(tmp_path / "campaign.yaml"), "--out", str(tmp_path / "run")])
    assert ran.exit_code == 0, ran.output
    assert "endpoint ft\\x0aFORGED" in ran.output and not any(
        line.lstrip("│ ").startswith("FORGED") for line in ran.output.splitlines()), ran.output
    # an endpoint is an input, refused (audit 127), its name shown as text too
    exported = CliRunner().invoke(cli, ["export", str(tmp_path / "run"), "--pick", "2", "--out", str(tmp_path / "e")])
    assert exported.exit_code == 2 and "the endpoint ft\\x0aFORGED itself" in exported.output, exported.output
    assert len(exported.output.strip().splitlines()) == 1, exported.output


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_campaign_configs_give_one_line_errors(tmp_path, zoo, case):
    overrides, expected = BAD[case]
    path = campaign(tmp_path, zoo)
    config = yaml.safe_load(path.read_text())
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    # one error line; a warning said before it (an unused `base_model` beside `align`) is marked as one
    assert len([line for line in result.output.strip().splitlines() if not line.startswith("warning: ")]) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(("estimator", "said"), [
    ({"kind": "gpirt", "max_items": 10, "target_se": 0.05, "anchors": 3},
     ["estimator: max_items, target_se not used (only for kind: adaptive, not gpirt)"]),
    ({"kind": "adaptive", "anchors": 3, "anchor_sets": 2, "max_items": 10},
     ["estimator: anchor_sets, anchors not used (kind: adaptive picks each candidate's items itself)"]),
    ({"kind": "full", "anchors": 3, "dims": 2},
     ["estimator: anchors, dims not used (kind: full scores every item, no estimator)"]),
    ({"kind": "gpirt", "irt_model": "irt", "warmup_merges": 4, "dims": 2, "anchors": 3},
     ["estimator: dims, warmup_merges not used (irt_model gives a fitted IRT model: none is fitted here)"]),
    ({"kind": "gpirt", "anchors": 3, "warmup_merges": 4}, []),  # defaults left unset are never named
    ({"kind": "gpirt", "anchor_method": "kmeans-irt", "anchor_balance": 20},
     ["estimator: anchor_balance not used (kmeans-irt anchors are not drawn in strata: only stratified and "
      "stratified-irt ones are balanced)"]),
    ({"kind": "gpirt", "anchor_method": "auto", "anchor_balance": 20}, []),  # stratified or stratified-irt
    ({"kind": "adaptive", "anchor_balance": 20},
     ["estimator: anchor_balance not used (kind: adaptive picks each candidate's items itself)"]),
])
def test_estimator_settings_its_kind_never_reads_are_named(estimator, said):
    from evo_merge.config import EstimatorSpec

    assert EstimatorSpec(**estimator).ignored_settings() == said


def test_a_run_folder_s_written_out_defaults_are_not_called_unused():
    """A run folder's campaign.yaml holds every default: each resume of a gpirt run said
    max_items and target_se were not used, settings nobody wrote."""
    from evo_merge.config import EstimatorSpec

    for kind in ("gpirt", "adaptive", "full"):
        assert EstimatorSpec(**EstimatorSpec(kind=kind).model_dump()).ignored_settings() == [], kind


def test_plan_says_which_estimator_settings_change_nothing(tmp_path, zoo, caplog):
    path = campaign(tmp_path, zoo, estimator={"kind": "full", "anchors": 5},
                    storage={"disk_dir": str(tmp_path / "files")})  # ignored without a word (audit 96)
    with caplog.at_level("WARNING", logger="evo_merge"):
        result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    assert "estimator: anchors not used (kind: full scores every item, no estimator)" in caplog.text
    assert "storage: disk_dir not used (only for placement: disk, not device)" in caplog.text


def test_a_py_irt_campaign_says_whose_fits_its_fit_lines_are(tmp_path, zoo):
    """py-irt's fits print a line each (its time and rate), three per task: a campaign's output gave
    them with no task named (audit 98)."""
    pytest.importorskip("py_irt")
    path = campaign(tmp_path, zoo, estimator={"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1,
                                              "backend": "pyirt", "epochs": 20},
                    algorithm={"population": 4, "generations": 1, "seed": 3})
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for task in ("agree0", "agree1"):
        said = lines.index(f"tasks.{task}: fitting its IRT model with py-irt on 8 calibration subjects")
        assert lines[said + 1].startswith("py-irt fit "), lines[said:said + 2]


def test_a_tracked_campaign_logs_each_estimate_once_and_the_measured_scores(tmp_path, zoo):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from evo_merge.search.store import CampaignStore

    uri = (tmp_path / "mlruns").as_uri()
    path = campaign(tmp_path, zoo, algorithm={"population": 4, "generations": 1, "seed": 0},
                    tracking={"mlflow": {"uri": uri, "experiment": "merges"}})
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("merges").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "estimated/agree0")]
    assert len(steps) == len(set(steps))  # the picks' estimates are not logged a second time
    measured = {m.step for m in client.get_metric_history(run.info.run_id, "measured/agree0")}
    store = CampaignStore(tmp_path / "run")
    exported = {eid for eid, _ in store.get_meta("exported").values()}
    calibration = {e.id for e in store.evaluations("calibration") if e.measured}
    assert calibration and calibration <= measured  # base, endpoints and warm-ups too
    assert exported <= measured and measured <= set(steps) | calibration
    rows = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluations.json", str(tmp_path))).read_text())
    picks = CampaignStore(tmp_path / "run").get_meta("exported")
    assert {r["id"]: r["picked_as"] for r in rows if r["picked_as"]} == {
        eid: ",".join(n for n, (i, _) in picks.items() if i == eid) for eid in exported}

    def history():
        return {name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
                for name in ("estimated/agree0", "measured/agree0", "generation/hypervolume")}

    before, artifacts = history(), client.list_artifacts(run.info.run_id)
    result = CliRunner().invoke(cli, ["resume", str(tmp_path / "run"), "--tracking"])  # finished: nothing new to log
    assert result.exit_code == 0, result.output
    assert history() == before and len(client.list_artifacts(run.info.run_id)) == len(artifacts)


def test_a_metric_that_is_better_lower_must_be_minimised(tmp_path, zoo):
    """lm-eval says which way a metric is better; maximising a lower-is-better one ran the whole
    search the wrong way without a word."""
    from evo_merge.tasks.registry import BENCHMARKS_DIR

    (tmp_path / "errors").mkdir()
    text = (BENCHMARKS_DIR / "arith" / "evo_arith.yaml").read_text()
    text = text.replace("task: evo_arith", "task: arith_errors")
    text = text.replace("higher_is_better: true", "higher_is_better: false")
    (tmp_path / "errors" / "t.yaml").write_text(text)
    shutil.copy(BENCHMARKS_DIR / "arith" / "test.jsonl", tmp_path / "errors" / "test.jsonl")
    task = {"task": str(tmp_path / "errors" / "t.yaml"), "options": {"limit": 8}}
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(campaign(tmp_path, zoo, tasks=[task])), "--out", str(run)])
    assert result.exit_code == 2 and not run.exists(), result.output
    assert result.output.strip().splitlines()[-1].endswith("set `direction: minimize` on it")
    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner

    minimised = campaign(tmp_path, zoo, tasks=[{**task, "direction": "minimize"}])
    CampaignRunner.open(Campaign.load(minimised), tmp_path, tmp_path / "min").close()  # accepted


def test_a_task_whose_items_say_something_else_under_the_same_ids_is_refused(tmp_path, zoo):
    """A task's data file edited between a run and its resume or export (every answer changed, the
    ids kept) went unnoticed: one run ranked its candidates on two answer keys (audit 125). A run
    records a digest of what each task's items say and refuses a change, naming the task."""
    import json

    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.search.campaign import CampaignRunner
    from evo_merge.tasks import registry
    from evo_merge.tasks.registry import BENCHMARKS_DIR

    (tmp_path / "mine").mkdir()
    text = (BENCHMARKS_DIR / "arith" / "evo_arith.yaml").read_text().replace("task: evo_arith", "task: my_arith")
    (tmp_path / "mine" / "t.yaml").write_text(text)
    data = tmp_path / "mine" / "test.jsonl"
    rows = [json.loads(line) for line in (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()[:12]]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = campaign(tmp_path, zoo, tasks=[{"task": str(tmp_path / "mine" / "t.yaml"), "name": "mine"}])
    run = tmp_path / "run"
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()  # the same data: opens as before
    data.write_text("".join(json.dumps({**row, "answer": (row["answer"] + 1) % 4}) + "\n" for row in rows))
    registry._CACHE.clear()  # tasks are built once per process: the command a user runs next builds them anew
    with pytest.raises(UserError, match=r"^task 'mine': what its items say changed since this run began \(its data "
                                        r"edited, or its docs given in another order\?\), where its item ids did not"):
        CampaignRunner.open(Campaign.load(path), tmp_path, run)
    resumed = CliRunner().invoke(cli, ["resume", str(run)])
    assert resumed.exit_code == 2 and "task 'mine': what its items say changed" in resumed.output, resumed.output
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))  # restored: the run goes on
    registry._CACHE.clear()
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()


def test_a_task_scored_otherwise_under_the_same_items_is_refused_and_an_older_record_completed(tmp_path, zoo):
    """The YAML's answer template edited between a run and its resume went unnoticed (audit 127:
    a warm-up scored under the old key was picked over candidates scored under the new one). A
    record of the docs alone, as a run before this wrote it, is checked on them and completed."""
    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.search.campaign import TASK_DATA_META, CampaignRunner
    from evo_merge.search.store import CampaignStore
    from evo_merge.tasks import registry
    from evo_merge.tasks.registry import BENCHMARKS_DIR

    shutil.copytree(BENCHMARKS_DIR / "arith", tmp_path / "mine")
    yaml_file = tmp_path / "mine" / "evo_arith.yaml"
    text = yaml_file.read_text().replace("task: evo_arith", "task: my_arith")
    yaml_file.write_text(text)
    path = campaign(tmp_path, zoo, tasks=[{"task": str(yaml_file), "name": "mine", "options": {"limit": 12}}])
    run = tmp_path / "run"
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    with closing(CampaignStore(run)) as store:
        docs, definition = store.get_meta(TASK_DATA_META)["mine"].split(":")
        store.set_meta(TASK_DATA_META, {"mine": docs})  # as a run before the definition counted recorded it
    registry._CACHE.clear()
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()  # the same docs: opens, and completes it
    with closing(CampaignStore(run)) as store:
        assert store.get_meta(TASK_DATA_META)["mine"] == f"{docs}:{definition}"
    yaml_file.write_text(text.replace("doc_to_target: answer", 'doc_to_target: "{{ (answer + 1) % 4 }}"'))
    registry._CACHE.clear()  # tasks are built once per process: the command a user runs next builds them anew
    with pytest.raises(UserError, match=r"^task 'mine': how its items are scored changed since this run began "
                                        r"\(its YAML: prompt, answer"):
        CampaignRunner.open(Campaign.load(path), tmp_path, run)
    with closing(CampaignStore(run)) as store:
        store.set_meta(TASK_DATA_META, {"mine": "0" * 16})  # an old record whose docs differ
    registry._CACHE.clear()
    with pytest.raises(UserError, match=r"^task 'mine': what its items say changed"):
        CampaignRunner.open(Campaign.load(path), tmp_path, run)


def test_a_definition_recorded_under_an_older_scheme_is_checked_on_the_docs_and_recorded_anew(
        tmp_path, zoo, monkeypatch):
    """A change to how evo-merge computes a task's definition (what it leaves out, how deep it reads
    code) made every run folder recorded before it refused as "scored otherwise", for the shipped
    benchmarks with nothing edited (audit 130). The scheme the definition was computed under is
    recorded where it is not the first; an older one is checked on the docs alone and recorded anew,
    and then guards as before."""
    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.search.campaign import TASK_DATA_META, TASK_DATA_SCHEMES_META, CampaignRunner
    from evo_merge.search.store import CampaignStore
    from evo_merge.tasks import lmeval, registry

    path = campaign(tmp_path, zoo, tasks=[{"task": "arith", "options": {"limit": 12}}])
    run = tmp_path / "run"
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    with closing(CampaignStore(run)) as store:
        docs, first = store.get_meta(TASK_DATA_META)["arith"].split(":")
        assert store.get_meta(TASK_DATA_SCHEMES_META) is None  # the first scheme: no record, as before it
    scoring_definition = lmeval._scoring_definition
    monkeypatch.setattr(lmeval, "_scoring_definition", lambda name, task: "2" + scoring_definition(name, task))
    registry._CACHE.clear()  # a later evo-merge, the same task and data
    with pytest.raises(UserError, match=r"^task 'arith': how its items are scored changed"):
        CampaignRunner.open(Campaign.load(path), tmp_path, run)  # under the same scheme it is a change
    monkeypatch.setattr(lmeval.LMEvalTask, "digest_scheme", property(lambda task: 7))
    registry._CACHE.clear()
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    with closing(CampaignStore(run)) as store:
        recorded_docs, second = store.get_meta(TASK_DATA_META)["arith"].split(":")
        assert (recorded_docs, store.get_meta(TASK_DATA_SCHEMES_META)) == (docs, {"arith": 7}) and second != first
        store.set_meta(TASK_DATA_META, {"arith": "0" * 16 + ":" + second})
    registry._CACHE.clear()
    with pytest.raises(UserError, match=r"^task 'arith': what its items say changed"):  # the docs still guard
        CampaignRunner.open(Campaign.load(path), tmp_path, run)
    with closing(CampaignStore(run)) as store:
        store.set_meta(TASK_DATA_META, {"arith": f"{docs}:{first}"})
    registry._CACHE.clear()
    with pytest.raises(UserError, match=r"^task 'arith': how its items are scored changed"):
        CampaignRunner.open(Campaign.load(path), tmp_path, run)  # recorded under scheme 7: compared


def test_a_few_shot_task_s_examples_edited_or_its_shots_changed_is_refused_on_resume(tmp_path, zoo):
    """The few-shot examples come from another split's data file, which the docs' part of the
    digest does not read: answers edited there changed every prompt, and some scores, while the
    digest stayed the same (audit 133). A run recorded before the prompts counted (scheme 1) is
    checked on its docs and recorded anew; a few-shot run resumed with its shots removed is compared."""
    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.search.campaign import TASK_DATA_META, TASK_DATA_SCHEMES_META, CampaignRunner
    from evo_merge.search.store import CampaignStore
    from evo_merge.tasks import registry
    from evo_merge.tasks.registry import BENCHMARKS_DIR

    folder = tmp_path / "mine"
    rows = (BENCHMARKS_DIR / "arith" / "test.jsonl").read_text().splitlines()
    (folder).mkdir()
    (folder / "test.jsonl").write_text("\n".join(rows[:12]) + "\n")
    shots = [json.loads(row) for row in rows[12:24]]
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in shots))
    text = (BENCHMARKS_DIR / "arith" / "evo_arith.yaml").read_text().replace("task: evo_arith", "task: my_arith")
    text = text.replace("    test: test.jsonl\n", "    test: test.jsonl\n    train: train.jsonl\n")
    few_shot = text.replace("test_split: test\n", "test_split: test\nfewshot_split: train\nnum_fewshot: 2\n")
    (folder / "t.yaml").write_text(few_shot)
    path = campaign(tmp_path, zoo, tasks=[{"task": str(folder / "t.yaml"), "name": "mine"}])
    run = tmp_path / "run"
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    with closing(CampaignStore(run)) as store:
        recorded = store.get_meta(TASK_DATA_META)["mine"]
        assert store.get_meta(TASK_DATA_SCHEMES_META) == {"mine": 2}

    def opened():
        registry._CACHE.clear()  # tasks are built once per process: the command a user runs next builds them anew
        CampaignRunner.open(Campaign.load(path), tmp_path, run).close()

    scored_otherwise = r"^task 'mine': how its items are scored changed since this run began"
    (folder / "train.jsonl").write_text("".join(json.dumps({**row, "answer": (row["answer"] + 1) % 4}) + "\n"
                                                for row in shots))
    with pytest.raises(UserError, match=scored_otherwise):
        opened()
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in shots))
    opened()  # restored
    (folder / "t.yaml").write_text(few_shot.replace("num_fewshot: 2", "num_fewshot: 3"))
    with pytest.raises(UserError, match=scored_otherwise):
        opened()
    (folder / "t.yaml").write_text(text)  # no shots: scheme 1 now, against a record of scheme 2
    with pytest.raises(UserError, match=scored_otherwise):
        opened()
    (folder / "t.yaml").write_text(few_shot)
    with closing(CampaignStore(run)) as store:  # as evo-merge recorded it before the prompts counted
        store.set_meta(TASK_DATA_META, {"mine": recorded.split(":")[0] + ":" + "0" * 16})
        store.set_meta(TASK_DATA_SCHEMES_META, {})
    opened()
    with closing(CampaignStore(run)) as store:
        assert store.get_meta(TASK_DATA_META)["mine"] == recorded
        assert store.get_meta(TASK_DATA_SCHEMES_META) == {"mine": 2}


def test_a_merge_method_of_your_own_whose_code_changed_is_refused_on_resume(tmp_path, zoo, monkeypatch):
    """A plugin method's formula edited between a run and its resume: the resume mixed two formulas
    without a word, and a pick measured before the edit was exported with the weights of the code
    after it (its card 0.908, its weights 0.725; audit 135)."""
    import importlib

    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.search.campaign import METHOD_CODE_META, CampaignRunner
    from evo_merge.search.store import CampaignStore

    code = ("from evo_merge.merge import register_method\n\n\n"
            "@register_method('test_own_code', replace=True)\n"
            "def own(base, deltas, weights, params, name):\n"
            "    return base + sum(w * d for w, d in zip(weights, deltas))\n")
    module = tmp_path / "evo_test_own_code.py"
    module.write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("evo_test_own_code")
    path = campaign(tmp_path, zoo, methods={"test_own_code": {}, "task_arithmetic": {}})
    run = tmp_path / "run"
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    with closing(CampaignStore(run)) as store:
        assert set(store.get_meta(METHOD_CODE_META)) == {"test_own_code"}  # evo-merge's own are not recorded
    module.write_text(code.replace("w * d", "0.5 * w * d"))
    with pytest.raises(UserError, match=re.escape(f"merge method 'test_own_code': its code ({module}) changed since "
                                                  "this run began")):
        CampaignRunner.open(Campaign.load(path), tmp_path, run)
    module.write_text(code)
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    # a run begun before the record (items scored, no record): none is made, nothing checked (audit 136)
    with closing(sqlite3.connect(run / "state.sqlite")) as db, db:
        db.execute("DELETE FROM meta WHERE key = ?", (METHOD_CODE_META.key,))
    monkeypatch.setattr(CampaignStore, "items_evaluated", lambda self, *a, **k: 1200)
    module.write_text(code.replace("w * d", "0.5 * w * d"))
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    with closing(CampaignStore(run)) as store:
        assert store.get_meta(METHOD_CODE_META) is None


def test_a_plugin_task_whose_code_changed_is_refused_on_resume(tmp_path, zoo, monkeypatch):
    """A plugin task's scoring edited between a run and its resume scored the candidates after it
    otherwise than those before, and the run ranked them on both without a word. Its files (the
    module the campaign names and its task's class) are recorded and compared, as a method's are."""
    import importlib

    from campaigns import agreement_tasks

    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.search.campaign import TASK_CODE_META, CampaignRunner
    from evo_merge.search.store import CampaignStore

    code = "from agreement_task import AgreementTask\n\n\ndef make(**options):\n    return AgreementTask(**options)\n"
    module = tmp_path / "evo_test_own_task.py"
    module.write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("evo_test_own_task")
    _, fts = zoo
    tasks = [{**task, "task": "evo_test_own_task:make"} if i == 0 else task
             for i, task in enumerate(agreement_tasks(fts))]
    path = campaign(tmp_path, zoo, tasks=tasks)
    run = tmp_path / "run"
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()
    with closing(CampaignStore(run)) as store:
        assert set(store.get_meta(TASK_CODE_META)) == {"agree0", "agree1"}  # agree1's class file is a plugin's too
    edited = code.replace("AgreementTask(**options)", "AgreementTask(**{**options, 'seq_len': 5})")
    module.write_text(edited)
    files = ", ".join(sorted([str(module), str(Path(__file__).parent / "agreement_task.py")]))
    with pytest.raises(UserError, match=re.escape(f"task 'agree0': its code ({files}) changed since this run began, "
                                                  "and the run's candidates were scored by the code it had then")):
        CampaignRunner.open(Campaign.load(path), tmp_path, run)
    module.write_text(code)
    CampaignRunner.open(Campaign.load(path), tmp_path, run).close()


def test_a_run_written_before_anchor_sets_resumes_on_its_one_set(tmp_path, zoo):
    """Defaults version 9 scores each candidate on one of 8 anchor sets; a version-8 folder scored
    every candidate on one, so it resumes with that one (the first set, the campaign's seed),
    and a candidate it scores later gets the anchors its earlier ones had."""
    from evo_merge.search.candidate import Candidate

    run = _small_gpirt_run(tmp_path, zoo)
    today = _calibrated(run)
    keys = [Candidate("task_arithmetic", (w / 10, 1 - w / 10), (("lambda", 1.0),)).key for w in range(11)]
    assert today.workspace.campaign.estimator.anchor_sets == 8
    assert len({str(today.scoring.anchor_items(k)) for k in keys}) > 1
    before = _calibrated(run, written_at=8)
    one_draw = _calibrated(run, written_at=9)  # sets of one draw each (balanced from version 10)
    first = {n: list(e.anchor_ids) for n, e in one_draw.scoring.estimators.items()}  # the first: the campaign's seed
    assert before.workspace.campaign.estimator.anchor_sets == 1
    assert all(before.scoring.anchor_items(k) == first for k in keys)


def test_a_run_written_before_balanced_anchors_resumes_on_its_one_draw_sets(tmp_path, zoo):
    """Defaults version 10 keeps the best-balanced of 200 stratified draws per anchor set; a version-9
    folder drew each set once, so it resumes on those sets (one draw from each set's seed)."""
    from evo_merge.irt import select_anchors

    run = _small_gpirt_run(tmp_path, zoo)
    today, before = _calibrated(run), _calibrated(run, written_at=9)
    assert today.workspace.campaign.estimator.anchor_balance == 200
    assert before.workspace.campaign.estimator.anchor_balance == 1
    for name, estimator in before.scoring.estimators.items():
        plain = select_anchors(estimator.model, 3, "stratified", seed=0, allocation="neyman", balance=1)
        assert estimator.anchors.items == plain.items and estimator.anchors.balance == 1
        balanced = select_anchors(estimator.model, 3, "stratified", seed=0, allocation="neyman", balance=200)
        assert today.scoring.estimators[name].anchors == balanced


def test_a_run_written_before_hypervolume_front_members_resumes_choosing_them_by_spread(tmp_path, zoo):
    """Defaults version 11 chooses the final phase's front members by the hypervolume their
    estimates add; a version-10 folder chose the farthest ones, so its final phase keeps doing so."""
    run = _small_gpirt_run(tmp_path, zoo)
    assert _calibrated(run).workspace.campaign.final.front_choice == "hypervolume"
    assert _calibrated(run, written_at=10).workspace.campaign.final.front_choice == "spread"


def test_a_generation_of_earlier_failures_alone_is_not_promised_a_resume(tmp_path):
    """Failures an earlier generation stored stay (it told them to the algorithm): the message
    promised that a resume evaluates them again, which it never would."""
    from types import SimpleNamespace

    from evo_merge.search.candidate import Candidate
    from evo_merge.search.store import CampaignStore
    from evo_merge.search.study import _every_candidate_failed

    store = CampaignStore(tmp_path)
    a, b = (Candidate("task_arithmetic", weights, ()).key for weights in ((1.0, 0.0), (0.5, 0.5)))
    for key in (a, b):
        store.add(key, phase="search", generation=1, method="task_arithmetic", status="failed",
                  error="RuntimeError: boom")
    log = SimpleNamespace(store=store)
    earlier = [store.get(a), store.get(b)]
    message = str(_every_candidate_failed(log, 2, earlier))
    assert message == ("every candidate of generation 2 failed (2 of 2: RuntimeError: boom), each in an earlier "
                       "generation already, and a failed candidate is not evaluated again; fix the cause and start "
                       "the campaign in a new run folder")
    assert store.get(a) is not None and store.get(b) is not None
    assert str(_every_candidate_failed(log, 1, earlier)).endswith("then `evo-merge resume` evaluates them again")
    assert store.get(a) is None and store.get(b) is None
