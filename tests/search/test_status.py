"""Reading a run: `status` opens no model and imports neither torch nor lm-eval;
a minimised task is handled by direction in status, hypervolume, picks and the report."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from campaigns import agreement_tasks, run_campaign, write_campaign  # tests/search is on sys.path
from click.testing import CliRunner
from huggingface_hub import ModelCard

from evo_merge.cli import cli
from evo_merge.search.objectives import Objectives
from evo_merge.search.store import CampaignStore
from evo_merge.zoo.tiny import save_tiny_family

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("status")
    base, fts = save_tiny_family(root / "zoo", "llama", n_finetunes=2, noise=0.08)
    tasks = agreement_tasks(fts)
    tasks[1].update(name="disagree1", direction="minimize")
    tasks[1]["options"]["name"] = "disagree1"
    config = write_campaign(root / "campaign.yaml", base, fts, tasks=tasks, methods={"task_arithmetic": {}},
                            final={"evaluate_top": 3, "export": ["best_per_task"]})
    return run_campaign(config, root / "run")


def test_status_reads_the_store_only(run):
    code = (
        "import sys; from evo_merge.cli import cli\n"
        "try:\n    cli(['status', sys.argv[1]], standalone_mode=False)\n"
        "finally:\n    print('heavy:', sorted(m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heavy: []" in out.stdout and "generation 2/2 (finished)" in out.stdout, out.stdout


def test_no_best_line_before_any_candidate_is_scored():
    """A run whose search has no scored candidate yet (or only failed ones) has no best to show:
    `status` says so by leaving the lines out, not by failing on an empty max."""
    from evo_merge.report.status import _best_lines

    assert _best_lines(Objectives.of(["agree0"], ["maximize"]), [], {}, 100) == []


def test_the_best_line_says_measured_only_of_a_candidate_scored_on_every_search_item():
    """Measured: no SE and every search item (a standard merge, a full evaluation); an estimate of
    a folder from before standard errors has no SE but few items: estimated. A measured best says
    no "measured since"; an estimated one says what the final phase measured, or its race score."""
    from evo_merge.report.status import _best_lines
    from evo_merge.search.store import Evaluation

    def best(items, se=None, measured=None, key="k", phase="search"):
        return Evaluation(1, key, phase, 1, "ties", "ok", {"a": 0.7}, measured, items, 1.0, None, se)

    objectives = Objectives.of(["a"], ["maximize"])
    (line,) = _best_lines(objectives, [best(100, measured={"a": 0.7})], {}, 100)
    assert line == "best a in the search (higher is better): 0.700 measured (evaluation 1, ties)"
    (line,) = _best_lines(objectives, [best(12)], {}, 100)  # an old folder's estimate: no SE, 12 items
    assert line.endswith("0.700 estimated (evaluation 1, ties)")
    (line,) = _best_lines(objectives, [best(12, se={"a": 0.02}, measured={"a": 0.66})], {}, 100)
    assert line.endswith("0.700 ± 0.020 estimated (evaluation 1, ties); measured 0.660 since")
    (line,) = _best_lines(objectives, [best(12, se={"a": 0.02})], {"k": {"a": 0.68}}, 100)
    assert line.endswith("; 0.680 on the race's last sample, which the picks were chosen on")
    # a standard merge competes measured: named as one, not read as a search candidate's (audit 144)
    (line,) = _best_lines(objectives, [best(100, measured={"a": 0.7}, phase="baseline")], {}, 100)
    assert line.endswith("0.700 measured (evaluation 1, ties, a standard merge)")


def test_the_best_line_names_a_candidate_measured_better_than_the_best_since():
    """The best by estimates may be a standard merge (measured) while a search candidate, estimated
    lower, measured higher in the final phase: the line read as the run's best (audit 145). Named
    where it beats the best's own figure (its measurement, else its estimate); not otherwise."""
    from evo_merge.report.status import _best_lines
    from evo_merge.search.store import Evaluation

    def evaluation(eid, estimate, measured=None, phase="search", se=None, method="ties"):
        return Evaluation(eid, f"k{eid}", phase, 1, method, "ok", {"a": estimate}, measured, 100 if se is None else 12,
                          1.0, None, se)

    standard = evaluation(1, 0.70, {"a": 0.70}, phase="baseline", method="linear")
    searched = evaluation(2, 0.68, {"a": 0.74}, se={"a": 0.02})
    (line,) = _best_lines(Objectives.of(["a"], ["maximize"]), [standard, searched], {}, 100)
    assert line == ("best a in the search (higher is better): 0.700 measured (evaluation 1, linear, a standard "
                    "merge); evaluation 2 (ties) measured higher: 0.740")
    lower = evaluation(2, 0.68, {"a": 0.66}, se={"a": 0.02})
    (line,) = _best_lines(Objectives.of(["a"], ["maximize"]), [standard, lower], {}, 100)
    assert line.endswith("(evaluation 1, linear, a standard merge)")
    # a minimised task: lower is better; the estimated best measured 0.30 since, another 0.25
    best, other = evaluation(1, 0.20, {"a": 0.30}, se={"a": 0.02}), evaluation(2, 0.22, {"a": 0.25}, se={"a": 0.02})
    (line,) = _best_lines(Objectives.of(["a"], ["minimize"]), [best, other], {}, 100)
    assert line.endswith("; measured 0.300 since; evaluation 2 (ties) measured lower: 0.250")


def test_a_minimised_task_is_best_when_lowest(run):
    store = CampaignStore(run)
    ok = [e for e in store.evaluations("search") if e.status == "ok"]
    lowest = min(e.estimates["disagree1"] for e in ok)
    output = CliRunner().invoke(cli, ["status", str(run)]).output
    assert f"best disagree1 in the search (lower is better): {lowest:.3f} measured" in output, output  # full evaluation
    measured = [e.measured["disagree1"] for e in store.evaluations("search") if e.measured]
    cards = [ModelCard.load(folder / "README.md") for folder in (run / "models").iterdir()]  # picked twice: once
    exported = [next(r.metric_value for r in card.data.eval_results if r.task_name == "disagree1") for card in cards]
    assert min(measured) == pytest.approx(min(exported)) and max(measured) > min(measured)


def test_status_lists_the_picks_as_their_cards_report_them(run):
    """The best estimates are the search's; what a pick scored is what the final phase measured,
    which the exported card reports: status shows that, one line per pick, never wrapped."""
    output = CliRunner().invoke(cli, ["status", str(run)], env={"COLUMNS": "40"}).output
    lines = output.splitlines()
    assert "picks, measured on every search item" in output, output
    for folder in (run / "models").iterdir():
        card = ModelCard.load(folder / "README.md")
        line = next(li for li in lines if li.startswith(f"  {folder.name}: evaluation "))
        for result in card.data.eval_results:
            shown = re.search(rf"{result.task_name} ([\d.]+)", line)
            assert shown and float(shown[1]) == pytest.approx(result.metric_value, abs=6e-4), (line, result)
        assert line.endswith(f"; models/{folder.name}")


def test_a_pick_whose_evaluation_is_gone_is_said_not_guessed(run, tmp_path):
    import shutil

    copy = shutil.copytree(run, tmp_path / "run")
    store = CampaignStore(copy)
    store.set_exported({"best-agree0": (999, "models/best-agree0")})
    store.close()
    output = CliRunner().invoke(cli, ["status", str(copy)]).output
    assert "  best-agree0: evaluation 999, not found measured; models/best-agree0" in output, output


def test_progress_hypervolume_uses_the_worst_point_by_direction(run):
    from evo_merge.report.campaign import progress_table

    store = CampaignStore(run)
    objectives = Objectives.of(["agree0", "disagree1"], ["maximize", "minimize"])
    table = progress_table(store, objectives)
    ok = [e for e in store.evaluations("search") if e.status == "ok"]
    rows = [[e.estimates["agree0"], e.estimates["disagree1"]] for e in ok]
    assert table.hypervolume.iloc[-1] == pytest.approx(objectives.hypervolume(rows))
    assert table.best_disagree1.iloc[-1] == pytest.approx(min(r[1] for r in rows))
    assert 0 < table.hypervolume.iloc[-1] <= 1


def test_the_time_left_in_the_search_skips_the_hours_a_run_lay_stopped():
    from evo_merge.search.metrics import search_time_left

    ends = [0.0, 60.0, 120.0, 3720.0, 3780.0]  # killed after generation 3, resumed an hour later
    assert search_time_left(ends, 3) == (180.0, 60.0)
    assert search_time_left(ends[:1], 3) is None and search_time_left(ends, 0) is None


def test_a_replayed_generation_keeps_when_it_first_ended(tmp_path):
    store = CampaignStore(tmp_path)
    store.complete_generation(1, {"a": [0.1]})
    first = store.generation_ends()
    store.complete_generation(1, {"a": [0.1]})  # a resume replays it
    assert store.generation_ends() == first


@pytest.mark.parametrize("endpoint_scores", [{"agree0": 1.0, "disagree1": 0.0}, {"agree0": 0.0, "disagree1": 1.0}])
def test_a_pick_no_better_than_an_input_on_every_task_is_said(run, tmp_path, endpoint_scores):
    """A best-<task> pick that kept one endpoint and measured below it was published as chosen,
    without a word. The first endpoint's measurement set here as best (or worst) on both tasks,
    `disagree1` minimised: every pick is (or none is) said to be no better than it."""
    import json
    import shutil
    import sqlite3

    from evo_merge.search.candidate import endpoint_candidate

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with sqlite3.connect(copy / "state.sqlite") as db:
        changed = db.execute("UPDATE evaluations SET measured = ? WHERE key = ?",
                             (json.dumps(endpoint_scores), endpoint_candidate(0, 2).key)).rowcount
    assert changed == 1
    store = CampaignStore(copy)
    picks = list(store.exported())
    store.close()
    said = {name for name in picks
            if f"{name} is measured no better than the endpoint ft1 on every task" in
            CliRunner().invoke(cli, ["status", str(copy)], terminal_width=300).output}
    assert CliRunner().invoke(cli, ["report", str(copy)]).exit_code == 0
    report = (copy / "report.md").read_text()
    reported = {name for name in picks if f"{name} is measured no better than the endpoint ft1 on every task" in report}
    best = endpoint_scores["agree0"] == 1.0
    assert picks and said == reported == (set(picks) if best else set())


def test_a_best_task_pick_below_an_input_on_its_own_task_is_said(run, tmp_path):
    """`best-arith` measured 0.728 on arith where the arith endpoint it was merged from measures
    0.750, and won a few items on another task, so no input was better on every task: nothing was
    said. The first endpoint set here just above the pick on agree0 and worst on disagree1."""
    import json
    import shutil
    import sqlite3

    from evo_merge.search.candidate import endpoint_candidate

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    store = CampaignStore(copy)
    eid = store.exported()["best-agree0"][0]
    pick = next(e for e in store.evaluations() if e.id == eid).measured
    store.close()
    above = min(pick["agree0"] + 0.01, 1.0)
    with sqlite3.connect(copy / "state.sqlite") as db:
        db.execute("UPDATE evaluations SET measured = ? WHERE key = ?",
                   (json.dumps({"agree0": above, "disagree1": 1.0}), endpoint_candidate(0, 2).key))
    output = CliRunner().invoke(cli, ["status", str(copy)], terminal_width=300).output
    assert (f"best-agree0 measures {pick['agree0']:.3f} on agree0 (on the search items), below the endpoint ft1's "
            f"{above:.3f}: that model serves agree0 better") in output, output
    assert "no better than the endpoint ft1 on every task" not in output
    assert "best-disagree1 measures" not in output  # ft1 is worse on disagree1


def test_status_lines_are_what_the_command_prints_and_say_a_working_run_s_pid(run):
    """The lines come from the library (`report.status`), read from the store alone; the command prints them."""
    from evo_merge.report.status import status_lines
    from evo_merge.search.binding import read_run

    store, facts = read_run(run)
    try:
        lines = status_lines(run, store, facts, None)
        working = status_lines(run, store, facts, "4242")
    finally:
        store.close()
    printed = CliRunner().invoke(cli, ["status", str(run)]).output
    assert printed.splitlines() == lines
    assert lines[0].endswith("(finished)")
    assert working[0].endswith("(running: pid 4242; in the final phase)") and working[1:] == lines[1:]


class _Revisions:
    """A store as `se_caveat` reads it: (the revision recorded, the revisions a reopened folder mixes)."""

    def __init__(self, revision, mixed):
        self.revisions = (revision, mixed)

    def estimator_revisions(self):
        return self.revisions


@pytest.mark.parametrize(("kind", "revision", "mixed", "caveat"), [
    ("adaptive", 4, [], None), ("adaptive", 3, [], "adaptive"),
    ("adaptive", 4, [3, 4], "adaptive"),  # reopened under revision 4: its older estimates are the posterior's
    ("adaptive", None, [], "adaptive"),  # a folder from before revisions were recorded
    ("gpirt", 3, [], None), ("pirt", None, [], None),  # the posterior caveat is an adaptive test's
    ("mpirt", 4, [], "mpirt"),  # simulated merges: whatever the revision
])
def test_the_se_caveat_by_estimator_kind_and_revision(kind, revision, mixed, caveat):
    """Which folders' SEs leave part of the error out (audit 92: the revision mix, an unrecorded
    revision and the adaptive-only condition could each change unseen)."""
    from evo_merge.search.metrics import se_caveat, se_note

    got = se_caveat({"estimator": kind}, _Revisions(revision, mixed))
    if caveat is None:
        assert got is None and se_note({"estimator": kind}, _Revisions(revision, mixed)) is None
    else:
        assert got.startswith(f"{caveat} estimates") and ("before estimator revision 4" in got) == (kind == "adaptive")
        assert se_note({"estimator": kind}, _Revisions(revision, mixed)) == f"{got} (docs/irt.md)"


def test_a_run_stopped_in_calibration_has_no_search_to_compare(tmp_path):
    """Before the search's first candidate, `status` and the report say the search spent nothing
    yet, not "0 vs 0 for a full-evaluation search" (audit 122); a finished run whose one generation
    was its seeds alone (all measured in calibration) says it spent none, not "none yet" (audit 124)."""
    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner

    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    path = write_campaign(tmp_path / "campaign.yaml", base, fts, tasks=agreement_tasks(fts),
                          estimator={"kind": "gpirt", "anchors": 3, "warmup_merges": 5, "dims": 1},
                          algorithm={"population": 6, "generations": 1, "seed": 3})
    run = tmp_path / "run"
    runner = CampaignRunner.open(Campaign.load(path), tmp_path, run)
    runner.calibrate()  # stopped here: calibration stored, no generation asked
    runner.close()
    for stage in ("stopped", "finished"):
        printed = CliRunner().invoke(cli, ["status", str(run)]).output
        assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
        report = (run / "report.md").read_text()
        assert " vs 0 " not in printed and "would have spent 0" not in report
        if stage == "stopped":
            assert re.search(r"item evaluations in search: none yet \(no search candidate\); in total [\d,]+ "
                             r"\(calibration [\d,]+", printed), printed
            assert "item evaluations in the search phase: none yet (no search candidate)" in report
            assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0  # generation 1: the seeds alone
        else:
            none = "none (every candidate it asked was measured before it: the endpoints and standard merges)"
            assert f"item evaluations in search: {none}; in total" in printed and "(finished)" in printed, printed
            assert f"item evaluations in the search phase: {none}" in report


def test_a_generation_s_items_count_its_failed_candidates_and_its_metrics_their_estimates_alone():
    """By hand: generation 1 holds an ok candidate (10 items, estimates 0.2 / 0.6) and one that
    failed after 7 items; generation 2 an ok one (5 items, 0.5 / 0.1). Items up to generation 1: 17
    (a failing run spends them too); up to 2: 22; best per task over the ok estimates."""
    from evo_merge.search.metrics import generation_metrics
    from evo_merge.search.objectives import Objectives
    from evo_merge.search.store import SEARCH, Evaluation

    def evaluation(i, generation, status, items, estimates=None):
        return Evaluation(i, f"k{i}", SEARCH, generation, "task_arithmetic", status, estimates, None, items, 1.0,
                          None if status == "ok" else "raised")

    evaluations = [evaluation(1, 1, "ok", 10, {"a": 0.2, "b": 0.6}), evaluation(2, 1, "failed", 7),
                   evaluation(3, 2, "ok", 5, {"a": 0.5, "b": 0.1})]
    objectives = Objectives.of(["a", "b"], ["maximize"] * 2)
    first, second = (generation_metrics(evaluations, objectives, g) for g in (1, 2))
    assert (first["items"], first["best_a"], first["best_b"]) == (17.0, 0.2, 0.6)
    assert (second["items"], second["best_a"], second["best_b"]) == (22.0, 0.5, 0.6)
