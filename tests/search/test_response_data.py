"""Real response matrices, from a zoo (every subject scored on every item) or from a run (what it
measured on every search item), ready for IRT."""

import json
import sqlite3
from contextlib import closing

import pandas as pd
import pytest
from agreement_task import AgreementTask
from campaigns import run_campaign, write_campaign  # tests/search is on sys.path
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.irt import IRTModel, validate_responses
from evo_merge.search.responses import build_responses
from evo_merge.zoo.tiny import save_tiny_family


def test_build_responses_scores_base_endpoints_and_random_merges(tmp_path):
    base, fts = save_tiny_family(tmp_path, "llama", n_finetunes=2, noise=0.08)
    tasks = {f"agree{i}": AgreementTask(str(f), name=f"agree{i}", n_items=40, seed=i) for i, f in enumerate(fts)}
    table = build_responses(base, fts, tasks, n_merges=5, seed=1)
    assert table.subject.nunique() == 1 + 2 + 5
    assert len(table) == 8 * 80 and set(table.scenario) == {"agree0", "agree1"}
    endpoint = table[(table.subject == "endpoint-ft1") & (table.task == "agree0")]
    assert endpoint.score.mean() == 1.0  # an endpoint agrees with itself on every item
    again = build_responses(base, fts, tasks, n_merges=5, seed=1)
    pd.testing.assert_frame_equal(table, again)  # seeded: the same merges, the same scores

    long = validate_responses(table[["subject", "item", "score", "scenario"]], "responses")
    model = IRTModel.fit(long, dims=1, seed=0)
    assert len(model.item_ids) == 80


def test_build_responses_reads_relative_model_folders_from_the_working_directory(tmp_path, monkeypatch):
    """`responses build --zoo zoo` names folders relative to where it runs; a campaign's relative
    names are Hub ids once resolved (`resolve_reference(..., None)`), which these must not become."""
    monkeypatch.chdir(tmp_path)
    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=1, noise=0.08)
    relative = [p.relative_to(tmp_path) for p in (base, *fts)]  # zoo/base: the shape of a Hub id
    tasks = {"agree0": AgreementTask(str(fts[0]), name="agree0", n_items=10, seed=0)}
    table = build_responses(relative[0], relative[1:], tasks, n_merges=1, seed=1)
    assert table.subject.nunique() == 1 + 1 + 1


def test_responses_build_never_replaces_a_file_unasked(tmp_path):
    """An existing --out is refused before any scoring (it was replaced without a word); with
    --overwrite the command goes on (here to the missing manifest)."""
    out = tmp_path / "r.csv"
    out.write_text("another matrix")
    args = ["responses", "build", "--zoo", str(tmp_path), "--tasks", "arith", "--out", str(out)]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and refused.output.strip().splitlines()[-1] == (
        f"error: --out {out}: already exists (--overwrite replaces it)") and out.read_text() == "another matrix"
    onwards = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert onwards.exit_code == 2 and "zoo.json" in onwards.output


def test_out_dash_is_refused_not_written_as_a_file(tmp_path, monkeypatch):
    """`--out -` wrote a file named `-` in the working folder, where a user expected the table on
    standard output (which carries the command's summary)."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["responses", "build", "--zoo", str(tmp_path), "--tasks", "arith", "--out", "-"])
    assert result.exit_code == 2 and result.output.strip() == (
        "error: --out -: these commands write a file, not standard output; give the file's path")
    assert not (tmp_path / "-").exists()


def test_responses_build_needs_a_zoo_manifest(tmp_path):
    result = CliRunner().invoke(cli, ["responses", "build", "--zoo", str(tmp_path), "--tasks", "arith",
                                      "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 2 and "zoo.json" in result.output


def test_a_runs_responses_are_what_it_measured_on_every_search_item(tmp_path, output_appearing, monkeypatch):
    """`responses export`: one row per (candidate, search item) for each candidate the run scored on
    all of a task's search items, its scores as stored; candidates scored on anchors alone and the
    held-out items are left out. One task's table fits an IRT model on that task's items."""
    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    config = write_campaign(tmp_path / "campaign.yaml", base, fts,
                            estimator={"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1},
                            algorithm={"population": 8, "generations": 2, "seed": 3},
                            final={"evaluate_top": 2, "holdout": 20})
    run = run_campaign(config, tmp_path / "run")
    out = tmp_path / "responses.csv"
    result = CliRunner().invoke(cli, ["responses", "export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, dtype={"subject": str, "item": str})

    with closing(sqlite3.connect(run / "state.sqlite")) as db:  # read independently of the store's code
        held = json.loads(db.execute("SELECT value FROM meta WHERE key = 'holdout'").fetchone()[0])
        scores = db.execute("SELECT evaluation_id, task, item, score FROM item_scores").fetchall()
        measured = dict(db.execute("SELECT id, measured FROM evaluations WHERE status = 'ok'").fetchall())
    search = [(str(e), t, i, s) for e, t, i, s in scores if i not in held[t]]
    counts = pd.DataFrame(search, columns=["subject", "task", "item", "score"]).groupby(["subject", "task"]).size()
    whole = {key for key, n in counts.items() if n == 100}  # 120 items a task, 20 held out
    assert len(whole) < len(counts)  # some candidates were scored on their anchors only: left out
    expected = sorted((s, t, i, v) for s, t, i, v in search if (s, t) in whole)
    assert sorted(table[["subject", "task", "item", "score"]].itertuples(index=False, name=None)) == expected
    assert not set(table["item"]) & {i for items in held.values() for i in items}
    for (subject, task), rows in table.groupby(["subject", "task"]):
        if measured[int(subject)] is not None:  # the measured score is the mean over the search items
            assert rows.score.mean() == pytest.approx(json.loads(measured[int(subject)])[task])

    # without --overwrite, a file put at OUT meanwhile is kept (audit 112; passed on, audit 115)
    arm, check = output_appearing
    appeared = tmp_path / "appeared.csv"
    arm(appeared)
    check(CliRunner().invoke(cli, ["responses", "export", str(run), "--out", str(appeared)]), appeared)
    monkeypatch.undo()

    one = tmp_path / "agree0.csv"
    exported = CliRunner().invoke(cli, ["responses", "export", str(run), "--task", "agree0", "--out", str(one)])
    assert exported.exit_code == 0 and set(pd.read_csv(one).task) == {"agree0"}, exported.output
    k = pd.read_csv(one).scenario.nunique()  # "(1 scenarios)" was said of one (audit 125)
    assert f" items ({k} scenario{'s' * (k != 1)})" in exported.output, exported.output
    fitted = CliRunner().invoke(cli, ["irt", "fit", str(one), "--out", str(tmp_path / "irt" / "agree0"), "--dims", "1"])
    assert fitted.exit_code == 0, fitted.output
    # the task's own scenarios, as the run's IRT model has them: a model with one scenario per task
    # gave a campaign using it a fifth of the anchors (`anchors` per scenario)
    refit, own = IRTModel.load(tmp_path / "irt" / "agree0"), IRTModel.load(run / "irt" / "agree0")
    assert len(refit.item_ids) == 100 and set(refit.scenarios) == set(own.scenarios) == {"even", "odd"}
    assert dict(zip(refit.item_ids, refit.item_scenarios)) == dict(zip(own.item_ids, own.item_scenarios))
    assert set(table.scenario) == {"agree0:even", "agree0:odd", "agree1:even", "agree1:odd"}  # all tasks: prefixed


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "agree9"], "error: no task 'agree9' in this run (its tasks: agree0, agree1)"),
    (["--out", "{run}/mine.csv"], "error: --out {run}/mine.csv: is inside the run folder, whose files the run owns"),
])
def test_responses_export_refuses_what_it_cannot_write(tmp_path, args, message):
    base, fts = save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, noise=0.08)
    run = run_campaign(write_campaign(tmp_path / "campaign.yaml", base, fts,
                                      algorithm={"population": 2, "generations": 1, "seed": 3}), tmp_path / "run")
    args = [a.format(run=run) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "r.csv")]
    result = CliRunner().invoke(cli, ["responses", "export", str(run), *out, *args])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith(message.format(run=run)), \
        result.output


def test_responses_export_of_a_folder_that_is_no_run_says_so_not_that_out_is_inside_it(tmp_path, monkeypatch):
    """Run from a folder that is not a run, `--out` inside it was refused as "inside the run folder,
    whose files the run owns": the folder was not read first (audit 133)."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["responses", "export", ".", "--out", "r.csv"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: .: not a campaign run folder (no campaign.yaml)"], result.output
