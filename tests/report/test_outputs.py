"""A finished campaign's leaderboard-ready outputs: cards, results files, report.html, tracking, upload."""

import json
import re
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from evo_merge.cli import cli
from evo_merge.errors import UserError
from evo_merge.merge.results import ITEM_SCORES_FILE, RESULTS_FILE
from evo_merge.report.campaign import write_report
from evo_merge.report.upload import plan_upload
from evo_merge.weights import write_model_folder

EXTERNAL = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


def exported(run):
    return sorted(p for p in (run / "models").iterdir() if p.is_dir())


def test_exported_picks_have_hub_cards_and_results_files(tracked_run):
    root, run, _ = tracked_run
    folders = exported(run)
    assert folders
    for folder in folders:
        text = (folder / "README.md").read_text()
        assert str(root) not in text and "/tmp" not in text  # no machine path anywhere in the card
        card = ModelCard(text)
        measured = {r.task_name: r.metric_value for r in card.data.eval_results}
        assert set(measured) == {"agree0", "agree1"} and all(not r.verified for r in card.data.eval_results)
        assert card.data.merged_models == ["ft1", "ft2"] and "merge" in card.data.tags
        results = json.loads((folder / RESULTS_FILE).read_text())
        items = pd.read_parquet(folder / ITEM_SCORES_FILE)
        for task, value in measured.items():
            assert results["results"][task]["score,none"] == pytest.approx(value)
            assert items[items.task == task].score.mean() == pytest.approx(value)  # every item, as measured
            assert results["n-samples"][task]["effective"] == (items.task == task).sum() == 120


def test_report_html_is_self_contained_and_shows_every_front_member(tracked_run):
    _, run, _ = tracked_run
    html = (run / "report.html").read_text()
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly's JS is inside the file
    front = pd.read_csv(run / "pareto.csv", dtype={"generation": str})
    assert len(front)
    searched = front[front.phase == "search"].generation
    assert len(searched) and searched.str.isdigit().all()  # written 1, not 1.0 (a baseline's is blank)
    for evaluation_id in front.id:
        assert f"#{evaluation_id} " in html, evaluation_id
    for folder in exported(run):
        assert f'id="pick-{folder.name}"' in html
    (run / "report.html").unlink()
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0  # rewritten from the store, cards included
    assert all(f'id="pick-{folder.name}"' in (run / "report.html").read_text() for folder in exported(run))


def test_the_reports_and_status_show_the_pooled_estimates_the_finalists_were_chosen_on(tracked_run):
    """A finalist measured below its own estimate may have been chosen on its pooled one: both are
    shown beside the measured score, as the final phase stored them."""
    from evo_merge.search.store import POOLED_META, CampaignStore

    _, run, _ = tracked_run
    store = CampaignStore(run)
    pooled, evaluations = store.get_meta(POOLED_META), {e.id: e for e in store.evaluations()}
    store.close()
    assert pooled and all(e.key not in pooled for e in evaluations.values() if e.phase == "baseline")  # warm-ups
    front = pd.read_csv(run / "pareto.csv")
    finalists = front[front.phase == "search"]
    assert len(finalists) and finalists.id.map(lambda i: evaluations[i].key in pooled).all()
    for task in ("agree0", "agree1"):
        stored = [pooled[evaluations[i].key][task] for i in finalists.id]
        assert list(finalists[f"pool_{task}"]) == pytest.approx(stored)
        assert (finalists[f"pool_{task}"] != finalists[f"est_{task}"]).any()  # pooling moved some
        assert front[front.phase == "baseline"][f"pool_{task}"].isna().all()
    report = (run / "report.md").read_text()
    assert "| pool\\_agree0 " in report and "`pool_`: the estimate pooled over similar recipes" in report
    status = CliRunner().invoke(cli, ["status", str(run)]).output
    assert f"finalists chosen on estimates pooled over similar recipes ({len(pooled)} candidates;" in status


def one_candidate_run(run, estimates: dict[str, float]):
    """A run folder's store holding one search candidate estimated on tasks `estimates` names
    (2 items each scored 1), and its key."""
    from evo_merge.search.candidate import Candidate
    from evo_merge.search.store import CampaignStore

    store = CampaignStore(run)
    store.set_meta("facts", {"name": "x", "generations": 1, "weights": None,
                             "tasks": [{"name": t, "direction": "maximize", "items": 4} for t in estimates]})
    key = Candidate("task_arithmetic", (0.5, 0.5), (("lambda", 1.0),)).key
    store.add(key, phase="search", generation=1, method="task_arithmetic", status="ok", estimates=estimates,
              estimate_se={t: 0.05 for t in estimates},
              item_scores={t: {f"{t}-{i}": 1.0 for i in range(2)} for t in estimates}, seconds=0.1)
    return store, key


@pytest.mark.parametrize("pooled", [False, True])
def test_a_pool_column_appears_only_where_the_final_phase_pooled(tmp_path, pooled):
    """A task may be named `carpool_qa`: its `est_`/`meas_` columns hold "pool_", which once
    read as pooled estimates and gave every report of such a run empty pool columns."""
    from evo_merge.search.store import POOLED_META

    store, key = one_candidate_run(tmp_path / "run", {"carpool_qa": 0.6, "b": 0.4})
    store.add_measurement(key, {"carpool_qa": 0.55, "b": 0.45}, {})
    if pooled:
        store.set_meta(POOLED_META, {key: {"carpool_qa": 0.58, "b": 0.42}})
    write_report(store.run_dir, store, store.get_meta("facts"))
    report = (store.run_dir / "report.md").read_text()
    front = pd.read_csv(store.run_dir / "pareto.csv")
    assert ("pool\\_carpool\\_qa" in report) == pooled and ("`pool_`:" in report) == pooled
    assert list(front["pool_carpool_qa"].fillna(-1)) == ([0.58] if pooled else [-1])
    store.close()


def test_mlflow_run_of_the_campaign_reads_back(tracked_run, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    _, run, uri = tracked_run
    client = MlflowClient(uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert mlrun.info.status == "FINISHED"
    history = client.get_metric_history(mlrun.info.run_id, "generation/hypervolume")
    assert [m.step for m in history] == [1, 2, 3]
    spent = [m.value for m in client.get_metric_history(mlrun.info.run_id, "generation/items")]
    assert spent == sorted(spent) and spent[-1] > 0
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"report.md", "report.html", "pareto.png", "evaluations.json", "campaign.yaml"} <= artifacts
    assert client.get_metric_history(mlrun.info.run_id, "measured/agree0")  # the measured front

    # the user's own run reports where its campaign said without being told again: every resume of
    # it needed --tracking, a file store on this machine too (audit 138)
    own = CliRunner().invoke(cli, ["resume", str(run)])
    assert own.exit_code == 0, own.output
    # a run folder someone else ran does not send its results (and the user's MLflow token) where it says unasked
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    refused = CliRunner().invoke(cli, ["resume", str(run), "--trust-tasks"])
    assert refused.exit_code == 2 and refused.output.strip() == (
        f"error: {run / 'campaign.yaml'}: tracking reports this run's results to MLflow at {uri}, and this run "
        "folder does not carry your word for it (not started, or resumed with --tracking, by you here); a run folder "
        "does not choose where its results go: pass --tracking to report there, or --no-tracking")
    assert CliRunner().invoke(cli, ["resume", str(run), "--trust-tasks", "--no-tracking"]).exit_code == 0
    assert CliRunner().invoke(cli, ["resume", str(run), "--trust-tasks"]).exit_code == 2  # --no-tracking is no word
    # resume replays the stored generations: same tracker run, nothing logged twice, tracking not
    # part of what makes a run "a different campaign"
    assert CliRunner().invoke(cli, ["resume", str(run), "--tracking"]).exit_code == 0
    assert CliRunner().invoke(cli, ["resume", str(run)]).exit_code == 0  # the word, once given, is kept
    (again,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert again.info.run_id == mlrun.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "generation/hypervolume")] == [1, 2, 3]


def test_push_dry_run_lists_the_folder_and_needs_no_token(tracked_run, tmp_path, monkeypatch):
    _, run, _ = tracked_run
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    pick = int(pd.read_csv(run / "pareto.csv").id.iloc[0])
    out = tmp_path / "pick"
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(pick), "--out", str(out),
                                      "--push-to-hub", "me/tiny-merge", "--dry-run"])
    assert result.exit_code == 0, result.output
    tensors = len(load_file(out / "model.safetensors"))
    assert re.search(rf"exporting pick.* {tensors}/{tensors}", result.output), result.output  # a bar on stderr
    listed = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ")}
    assert listed == {p.name for p in out.iterdir()} >= {"README.md", "model.safetensors", RESULTS_FILE}
    # said now, before a real upload fails, as what the upload will need (the dry run needed none)
    assert "note: the upload itself needs a token, and none is set here" in result.output
    assert "hf auth login" in result.output

    again = CliRunner().invoke(cli, ["export", str(run), "--pick", str(pick), "--out", str(out), "--overwrite",
                                     "--push-to-hub", "me/tiny-merge"])
    assert again.exit_code == 2 and "no Hugging Face token found" in again.output and "hf auth login" in again.output
    # said before the export: a folder written first made the retry, once logged in, need --overwrite
    fresh = CliRunner().invoke(cli, ["export", str(run), "--pick", str(pick), "--out", str(tmp_path / "fresh"),
                                     "--push-to-hub", "me/tiny-merge"])
    assert fresh.exit_code == 2 and "no Hugging Face token found" in fresh.output and not (tmp_path / "fresh").exists()
    assert "exporting" not in fresh.output
    # ids the Hub refuses, found out only inside create_repo after the export (a traceback, exit 1)
    for repo_id in ("../etc", "me/x.git", "me/a--b", "me/x-"):
        bad = CliRunner().invoke(cli, ["export", str(run), "--pick", str(pick), "--out", str(tmp_path / "x"),
                                       "--push-to-hub", repo_id, "--dry-run"])
        assert bad.exit_code == 2 and f"--push-to-hub {repo_id!r}: not a Hub repo id (" in bad.output, bad.output
        assert not (tmp_path / "x").exists() and "Traceback" not in bad.output
    # a branch no push can create, refused before the export as the repo id is (audit 137)
    bad = CliRunner().invoke(cli, ["export", str(run), "--pick", str(pick), "--out", str(tmp_path / "x"),
                                   "--push-to-hub", "me/tiny-merge", "--revision", "a b", "--dry-run"])
    assert bad.exit_code == 2 and "--revision 'a b': not a branch name" in bad.output, bad.output
    assert not (tmp_path / "x").exists() and "exporting" not in bad.output


def test_exporting_the_base_or_an_endpoint_is_refused_as_an_input(tracked_run, tmp_path):
    """They are task arithmetic candidates of weights 0 and 1 to the search: exported, the card
    called the base "a task_arithmetic merge" of every model at weight 0 (audit 127)."""
    from evo_merge.search.candidate import Candidate, base_candidate, endpoint_candidate
    from evo_merge.search.store import CampaignStore

    _, run, _ = tracked_run
    with closing(CampaignStore(run)) as store:
        n = len(Candidate.from_key(store.evaluations()[0].key).weights)
        ids = {store.get(c.key).id: label for c, label in ((base_candidate(n), "the base model"),
                                                            (endpoint_candidate(0, n), "the endpoint "))}
    for eid, label in ids.items():
        out = tmp_path / str(eid)
        result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(out)])
        assert result.exit_code == 2 and f"error: --pick {eid}: {label}" in result.output, result.output
        assert "endpoint endpoint" not in result.output  # the label already says what it is
        assert "an input of the campaign, not a merge: nothing to export" in result.output and not out.exists()


def test_push_of_a_pick_exported_in_another_pick_s_folder_says_which(tracked_run, tmp_path):
    """One candidate chosen as two picks is exported once, under the first name: `push
    run/models/balanced` said only "no such folder" (audit 123)."""
    import shutil
    from contextlib import chdir

    from evo_merge.search.store import CampaignStore

    _, run, _ = tracked_run
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    store = CampaignStore(copy)
    exported = store.exported()
    first, (eid, where) = next(iter(exported.items()))
    store.set_exported({**exported, "alias": (eid, where)})  # as a run records a pick that shares a folder
    store.close()
    assert not (copy / "models" / "alias").exists()
    result = CliRunner().invoke(cli, ["push", str(copy / "models" / "alias"), "me/x", "--dry-run"])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {copy / 'models' / 'alias'}: no such folder; the run exported pick alias in {copy / where} (the "
        "same candidate as another pick): push that folder"), result.output
    plain = CliRunner().invoke(cli, ["push", str(copy / "models" / "nothing"), "me/x", "--dry-run"])
    assert plain.exit_code == 2 and plain.output.strip() == f"error: {copy / 'models' / 'nothing'}: no such folder"
    # an older run recorded absolute paths, and has moved since: the folder in this run folder is named
    store = CampaignStore(copy)
    store.set_exported({**exported, "alias": (eid, str(Path("/elsewhere/run") / where))})
    store.close()
    moved = CliRunner().invoke(cli, ["push", str(copy / "models" / "alias"), "me/x", "--dry-run"])
    assert f"the run exported pick alias in {copy / where} " in moved.output, moved.output
    # from inside models/, by its name alone
    with chdir(copy / "models"):
        inside = CliRunner().invoke(cli, ["push", "alias", "me/x", "--dry-run"])
    assert f"the run exported pick alias in {copy / where} " in inside.output, inside.output
    # a pick whose own folder was deleted: no other folder to send the user to
    shutil.rmtree(copy / where)
    gone = CliRunner().invoke(cli, ["push", str(copy / where), "me/x", "--dry-run"])
    assert gone.exit_code == 2 and gone.output.strip() == f"error: {copy / where}: no such folder", gone.output
    # a damaged record: the plain answer, not the database's repair
    store = CampaignStore(copy)
    with store.db:
        store.db.execute("UPDATE meta SET value = '[1, 2' WHERE key = 'exported'")
    store.close()
    damaged = CliRunner().invoke(cli, ["push", str(copy / "models" / "alias"), "me/x", "--dry-run"])
    assert damaged.exit_code == 2 and damaged.output.strip() == f"error: {copy / 'models' / 'alias'}: no such folder"


def test_a_local_adapter_behind_a_hub_id_is_a_local_path():
    """`org/name@sha+/home/me/lora` in a recipe names this machine's adapter folder: `push` warned of
    a local base's path but not of this one (audit 123)."""
    from evo_merge.report.upload import local_paths

    assert local_paths("  model: tiny/base@38d5+/home/me/adapters/lora\n") == ["/home/me/adapters/lora"]
    assert local_paths('["tiny/base@38d5+~/adapters/lora"]') == ["~/adapters/lora"]
    assert local_paths("model: tiny/base@38d5+org/lora") == []  # an adapter on the Hub
    assert local_paths("kernels in C++/CUDA/Triton, within +/-0.02/0.03") == []  # a `+` in other text
    assert local_paths("model: /home/me/base+/home/me/lora") == ["/home/me/base+/home/me/lora"]  # as before


def test_upload_refuses_a_card_with_a_local_path_or_weights_with_nan(tmp_path):
    card = "---\ntags: [evo-merge]\nbase_model: /home/me/models/base\n---\n"
    folder = write_model_folder(tmp_path / "m", [("w", torch.ones(3))], extra_files={"README.md": card})
    with pytest.raises(UserError, match="README.md: the card names the local path /home/me/models/base"):
        plan_upload(folder)
    broken = tmp_path / "n"  # written by something else: evo-merge itself refuses to write NaN
    broken.mkdir()
    save_file({"ok": torch.ones(2), "layer.weight": torch.tensor([1.0, float("nan")])}, broken / "model.safetensors")
    (broken / "README.md").write_text("---\ntags: [evo-merge]\n---\n# fine\n")
    with pytest.raises(UserError, match="tensor layer.weight holds NaN or Inf"):
        plan_upload(broken)


def test_reports_escape_user_strings(small_store, tmp_path):
    from report_store import TASKS

    small_store.set_meta("facts", {"name": "x", "generations": 2, "weights": None,
                                   "tasks": [{"name": t, "direction": "maximize", "items": 4} for t in TASKS]})
    folder = tmp_path / "pick"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# card\n\n<script>alert(1)</script>\n")
    name = "evil`name\n## Fake section <b>"
    write_report(small_store.run_dir, small_store, small_store.get_meta("facts"), {name: (3, folder)})
    report = (small_store.run_dir / "report.md").read_text()
    assert "## Fake section" not in report and "<b>" not in report and "evil\\`name" in report
    html = (small_store.run_dir / "report.html").read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html and "<b>" not in html


def test_an_endpoint_s_name_is_text_in_the_front_figure_s_legend(small_store):
    """plotly draws a subset of HTML in legends, links among it: a received store's endpoint named
    `<a href=...>` put a link into report.html's legend (audit 116)."""
    from report_store import TASKS

    from evo_merge.report.campaign import evaluation_table
    from evo_merge.report.html import front_figure
    from evo_merge.search.candidate import Candidate

    items = {t: {f"{t}-{i}": 1.0 for i in range(4)} for t in TASKS}
    small_store.add(Candidate("task_arithmetic", (0.0, 1.0), (("lambda", 1.0),)).key, phase="calibration",
                    generation=None, method="task_arithmetic", status="ok", estimates={"alpha": 1.0, "beta": 1.0},
                    item_scores=items, seconds=0.1)
    small_store.add_measurement(Candidate("task_arithmetic", (0.0, 1.0), (("lambda", 1.0),)).key,
                                {"alpha": 1.0, "beta": 1.0}, {})
    table = evaluation_table(small_store.evaluations(), TASKS)
    figure = front_figure(table, TASKS, ("alpha", "beta"), endpoints=["e0", "<a href='https://x'>e1</a>"])
    names = [trace.name for trace in figure.data if trace.name]
    assert "endpoint &lt;a href=&#x27;https://x&#x27;&gt;e1&lt;/a&gt; (measured)" in names, names


def test_push_goes_no_further_than_the_network_call_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from evo_merge.report.upload import push_to_hub

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the test suite never reaches the network
    card = "---\ntags: [merge, evo-merge]\n---\n# fine\n"
    folder = write_model_folder(tmp_path / "m", [("w", torch.ones(3))], extra_files={"README.md": card})
    plan = plan_upload(folder)
    assert [name for name, _ in plan.files] == ["README.md", "model.safetensors"]
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(plan, "me/tiny-merge", private=True, revision="v1")


def test_a_push_sends_each_listed_file_by_its_name_not_as_a_pattern(tmp_path):
    """The upload named the dry run's files as `allow_patterns`, which are globs: a file named `*.txt`
    stood for every .txt file, hidden ones too, and `a[1].json` matched `a1.json`, not itself (audit 95)."""
    from evo_merge.report.upload import commit_operations

    card = "---\ntags: [merge, evo-merge]\n---\n# fine\n"
    folder = write_model_folder(tmp_path / "m", [("w", torch.ones(3))], extra_files={
        "README.md": card, "*.txt": "star", "a[1].json": "{}", "a1.json": "{}", ".hidden.txt": "no"})
    plan = plan_upload(folder)
    operations = commit_operations(plan)
    assert [op.path_in_repo for op in operations] == [name for name, _ in plan.files] == [
        "*.txt", "README.md", "a1.json", "a[1].json", "model.safetensors"]
    assert [Path(op.path_or_fileobj).read_bytes() for op in operations[:2]] == [b"star", card.encode()]


@pytest.mark.parametrize(("generations", "step"), [(4, 1), (10, 1), (11, 2), (60, 6)])
def test_progress_ticks_whole_generations_at_most_about_ten(generations, step):
    from evo_merge.report.html import progress_figure

    progress = pd.DataFrame({"generation": range(1, generations + 1), "hypervolume": 0.5, "best_t": 0.5, "items": 10})
    fig = progress_figure(progress, ["t"])
    assert {axis.dtick for axis in (fig.layout.xaxis, fig.layout.xaxis2, fig.layout.xaxis3)} == {step}


@pytest.mark.parametrize(("tasks", "panels"), [(["a"], 1), (["a", "b"], 1), (["a", "b", "c"], 3), (list("abcde"), 6)])
def test_pareto_png_has_a_panel_per_pair_of_tasks(tmp_path, tasks, panels):
    """No task is left off the picture (with three tasks the third was); beyond four, the first four's pairs."""
    import matplotlib.image

    from evo_merge.report.campaign import plot_pareto

    columns = [f"{kind}_{t}" for t in tasks for kind in ("est", "meas", "sample")]
    rows = [{"phase": phase, "status": "ok", "weights": "0 0", "params": "", **dict.fromkeys(columns, value)}
            for phase, value in (("calibration", 0.2), ("search", 0.5))]
    plot_pareto(pd.DataFrame(rows), tasks, tmp_path / "pareto.png")
    height, width, _ = matplotlib.image.imread(tmp_path / "pareto.png").shape
    assert (round(width / 660), round(height / 550)) == (min(panels, 3), -(-panels // 3))  # 6 x 5 in. at 110 dpi each


def test_export_into_the_run_s_own_pick_folders_is_refused(tracked_run):
    """`export --pick N --out RUN/models/best-x --overwrite` replaced a pick the run records as another
    evaluation: status, report and resume went on naming that one."""
    _, run, _ = tracked_run
    pick = next((run / "models").iterdir())
    eid = int(pd.read_csv(run / "pareto.csv").id.iloc[0])  # a merge (the base, an input, is refused before)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in pick.iterdir())
    for out in (pick, run / "models" / "new", run / "new"):  # anywhere in the run folder: the run's files
        result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(out), "--overwrite"])
        assert result.exit_code == 2 and "is inside the run folder, whose files the run owns" in result.output, \
            result.output
    assert sorted((p.name, p.stat().st_mtime_ns) for p in pick.iterdir()) == before
    assert not (run / "models" / "new").exists() and not (run / "new").exists()


def test_evaluations_csv_holds_every_evaluation_with_the_id_export_takes(tracked_run):
    """pareto.csv holds the finalists and report.md the measured candidates: most search candidates'
    ids, which `export --pick` takes, were in neither (only in state.sqlite)."""
    from evo_merge.search.store import CampaignStore

    _, run, _ = tracked_run
    store = CampaignStore(run)
    stored = {e.id: e for e in store.evaluations()}
    store.close()
    table = pd.read_csv(run / "evaluations.csv")
    assert sorted(table.id) == sorted(stored) and len(table) > len(pd.read_csv(run / "pareto.csv"))
    for row in table.itertuples():
        evaluation = stored[row.id]
        assert (row.phase, row.status, row.items) == (evaluation.phase, evaluation.status, evaluation.items_evaluated)
        assert row.est_agree0 == pytest.approx((evaluation.estimates or {}).get("agree0", float("nan")), nan_ok=True)


def test_a_pick_exported_again_by_hand_keeps_its_card_s_chosen_line(tracked_run, tmp_path):
    """`export --pick` of a run's pick wrote a card without "Chosen by its evo-merge campaign as
    ...", which the pick's own folder has: the same weights, another card."""
    from evo_merge.search.store import CampaignStore

    _, run, _ = tracked_run
    with closing(CampaignStore(run)) as store:
        name, (eid, folder) = next(iter(store.exported().items()))
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", str(eid), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    chosen = [line for line in (run / folder / "README.md").read_text().splitlines() if line.startswith("Chosen by")]
    assert chosen and name in chosen[0]
    assert [line for line in (tmp_path / "again" / "README.md").read_text().splitlines()
            if line.startswith("Chosen by")] == chosen


def test_each_pick_s_card_scores_table_is_a_table_in_report_html(tracked_run, tmp_path):
    """CommonMark has no tables: each card's Scores table (its held-out scores and SEs) showed as
    one paragraph of `|` characters."""
    import re
    import shutil

    _, run, _ = tracked_run
    copy = shutil.copytree(run, tmp_path / "run")
    assert CliRunner().invoke(cli, ["report", str(copy)]).exit_code == 0
    cards = re.findall(r'<div class="card".*?</div>', (copy / "report.html").read_text(), flags=re.S)
    assert cards and all("<table>" in card and "| task |" not in card for card in cards)


def test_a_received_run_folder_cannot_put_a_readers_file_or_a_remote_image_in_the_report(tracked_run, tmp_path):
    """A pick's README.md linking to a file of the reader's was read into report.html (and `resume`
    hands the report to its trackers); an image in a card made the report fetch it when opened."""
    import shutil

    _, run, _ = tracked_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-KEY-MATERIAL")
    picks = sorted(p for p in (copy / "models").iterdir() if p.is_dir())
    (picks[0] / "README.md").unlink()
    (picks[0] / "README.md").symlink_to(secret)
    if len(picks) > 1:
        (picks[1] / "README.md").write_text("# pick\n\n![tracker](https://example.com/pixel.png)\n")
    assert CliRunner().invoke(cli, ["report", str(copy)]).exit_code == 0
    page = (copy / "report.html").read_text()
    assert "TOP-SECRET" not in page and "<img" not in page


def test_push_uploads_a_folder_evo_merge_wrote_and_nothing_else(tracked_run, tmp_path, monkeypatch):
    """A run's own picks could not be pushed (export --out inside the run is refused), nor a
    `merge` output; the upload's checks followed links out of the folder and took any README."""
    import shutil

    _, run, _ = tracked_run
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    pick = next(p for p in sorted((run / "models").iterdir()) if p.is_dir())
    result = CliRunner().invoke(cli, ["push", str(pick), "me/tiny-merge", "--dry-run"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ")}
    assert listed == {p.name for p in pick.iterdir()} and "would upload" in result.output
    unasked = CliRunner().invoke(cli, ["push", str(pick), "me/tiny-merge"])
    assert unasked.exit_code == 2 and "no Hugging Face token found" in unasked.output
    whole_run = CliRunner().invoke(cli, ["push", str(run), "me/tiny-merge", "--dry-run"])  # was "no README.md card"
    assert whole_run.exit_code == 2 and f"{run}: a campaign run folder; push one of its picks: {pick}" \
        in whole_run.output, whole_run.output

    copy = shutil.copytree(pick, tmp_path / "copy")
    secret = tmp_path / "secret.txt"
    secret.write_text("api_key=hunter2")
    (copy / "notes.txt").symlink_to(secret)
    linked = CliRunner().invoke(cli, ["push", str(copy), "me/tiny-merge", "--dry-run"])
    assert linked.exit_code == 2 and f"notes.txt: links to {secret}, outside the folder" in linked.output
    (copy / "notes.txt").unlink()
    (copy / "README.md").write_text("---\nlicense: mit\n---\n# someone else's model\n")
    foreign = CliRunner().invoke(cli, ["push", str(copy), "me/tiny-merge", "--dry-run"])
    assert foreign.exit_code == 2 and "not a card evo-merge wrote" in foreign.output
    (copy / "README.md").write_text("---\ntags: [evo-merge\n---\n# a card whose front matter is no YAML\n")
    broken = CliRunner().invoke(cli, ["push", str(copy), "me/tiny-merge", "--dry-run"])
    assert broken.exit_code == 2 and "not a card evo-merge wrote" in broken.output, broken.output
    bad = CliRunner().invoke(cli, ["push", str(pick), "me/x.git", "--dry-run"])
    assert bad.exit_code == 2 and "ORG/NAME 'me/x.git': not a Hub repo id" in bad.output


def test_a_report_leaves_the_callers_matplotlib_backend(tmp_path):
    """write_report called matplotlib.use("Agg"): a notebook's backend was switched, and its inline
    figures went unshown. The figures are drawn without pyplot; the files are PNGs as before."""
    import matplotlib
    import matplotlib.image

    from evo_merge.report.campaign import plot_progress

    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg")
        store, _ = one_candidate_run(tmp_path / "run", {"a": 0.6, "b": 0.4})
        with closing(store):
            write_report(store.run_dir, store, store.get_meta("facts"))
        progress = pd.DataFrame({"generation": [1, 2], "hypervolume": 0.5, "best_a": 0.5, "best_b": 0.4})
        plot_progress(progress, ["a", "b"], tmp_path / "progress.png")
        assert matplotlib.get_backend() == "svg"
        for png in (store.run_dir / "pareto.png", tmp_path / "progress.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(png).ndim == 3
    finally:
        matplotlib.use(before)


def test_export_takes_a_pick_by_its_name(tracked_run, tmp_path):
    """The docs call the exported folders picks by name (best-arith, balanced): `--pick best-arith`
    was click's "not a valid integer". A name is the evaluation the run stored for it; an unknown
    one is one line listing the run's picks with their ids."""
    from evo_merge.search.store import CampaignStore

    _, run, _ = tracked_run
    with closing(CampaignStore(run)) as store:
        picks = store.exported()
    name, (eid, _) = next(iter(picks.items()))
    result = CliRunner().invoke(cli, ["export", str(run), "--pick", name, "--out", str(tmp_path / "by-name")])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'by-name'}: evaluation {eid} (" in result.output
    bad = CliRunner().invoke(cli, ["export", str(run), "--pick", "best-nothing", "--out", str(tmp_path / "x")])
    lines = bad.output.strip().splitlines()
    assert bad.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: --pick best-nothing: "), bad.output
    assert all(f"{other} ({other_id})" in lines[0] for other, (other_id, _) in picks.items())
    assert not (tmp_path / "x").exists()


def test_a_pick_named_as_a_number_or_a_non_ascii_digit_is_not_read_as_an_id(tmp_path):
    """`final.picks` may name a pick "7": `--pick 7` exported evaluation 7 without a word; and
    `--pick ²` (a digit to str.isdigit) was int()'s ValueError and a traceback."""
    from evo_merge.cli.campaign import _pick_id

    picks = {"7": (12, "models/7"), "best-arith": (3, "models/best-arith"), "12": (12, "models/12")}
    assert _pick_id("5", picks, tmp_path) == 5 and _pick_id("best-arith", picks, tmp_path) == 3
    assert _pick_id("12", picks, tmp_path) == 12  # the pick named 12 is evaluation 12: no doubt
    with pytest.raises(UserError, match=r"--pick 7: both the name of a pick of this run \(evaluation 12\) and an "
                                        r"evaluation id; give the id \(12 or 7\) you mean"):
        _pick_id("7", picks, tmp_path)
    with pytest.raises(UserError, match="--pick ²: neither an evaluation id"):
        _pick_id("²", picks, tmp_path)


def test_report_html_gives_a_measured_score_the_se_of_its_search_items_alone(tmp_path):
    """The measured score (`meas_`) is the mean over the search items, so its SE in report.html's
    hover and error bars is theirs (sample SD / sqrt(n), as lm-eval states it), not over the
    held-out items too (audit 133, M15). Search items a: 1 0 1 1 (SE 0.5 / 2 = 0.25) and b: 1 1 0 0
    (SE sqrt(1/3) / 2 = 0.289); the held-out items, all 1, would make them 0.125 and 0.164."""
    import math

    from evo_merge.search.candidate import Candidate
    from evo_merge.search.holdout import HOLDOUT_META
    from evo_merge.search.store import CampaignStore

    search = {"a": [1, 0, 1, 1], "b": [1, 1, 0, 0]}
    store = CampaignStore(tmp_path / "run")
    store.set_meta("facts", {"name": "x", "generations": 1, "weights": None,
                             "tasks": [{"name": t, "direction": "maximize", "items": 8} for t in search]})
    store.set_meta(HOLDOUT_META, {t: [f"{t}-held{i}" for i in range(4)] for t in search})
    key = Candidate("task_arithmetic", (0.5, 0.5), (("lambda", 1.0),)).key
    store.add(key, phase="search", generation=1, method="task_arithmetic", status="ok", estimates={"a": 0.7, "b": 0.5},
              estimate_se={t: 0.05 for t in search}, seconds=0.1,
              item_scores={t: {f"{t}-{i}": float(v) for i, v in enumerate(scores)} for t, scores in search.items()})
    store.add_measurement(key, {"a": 0.75, "b": 0.5}, {t: {f"{t}-held{i}": 1.0 for i in range(4)} for t in search})
    write_report(store.run_dir, store, store.get_meta("facts"))
    store.close()
    html = (tmp_path / "run" / "report.html").read_text()
    hovers = set(re.findall(r"(\w): est [^,]*, meas (\d\.\d{3}), SE (\d\.\d{3})", html))
    assert hovers == {("a", "0.750", "0.250"), ("b", "0.500", "0.289")}, hovers
    bars = [json.loads(a) for a in re.findall(r'"error_[xy]":\{"array":(\[[^]]*\])', html)]
    assert bars == [pytest.approx([0.25]), pytest.approx([math.sqrt(1 / 12)])], bars


def test_push_refuses_leftover_weights_and_names_files_evo_merge_did_not_write(tmp_path, monkeypatch):
    """A push sent every visible file: a pickle checkpoint, an older merge's safetensors that a
    loader globbing *.safetensors would read, Python's caches and a file named `token` went up
    without a word (audit 137)."""
    import shutil

    monkeypatch.delenv("HF_TOKEN", raising=False)
    card = "---\ntags: [merge, evo-merge]\n---\n# fine\n"
    folder = write_model_folder(tmp_path / "m", [("w", torch.ones(3))], extra_files={
        "README.md": card, "merge_recipe.yaml": "merge_method: linear\n"})
    (folder / "config.json").write_text("{}")
    (folder / "modeling_tiny.py").write_text("# the code a config's auto_map names\n")

    def dry_run(path):
        return CliRunner().invoke(cli, ["push", str(path), "me/tiny-merge", "--dry-run"])

    clean = dry_run(folder)
    assert clean.exit_code == 0 and "warning" not in clean.output, clean.output
    pickled = shutil.copytree(folder, tmp_path / "pickled")
    torch.save({"w": torch.ones(3)}, pickled / "pytorch_model.bin")
    refused = dry_run(pickled)
    assert refused.exit_code == 2 and refused.output.strip() == (
        f"error: {pickled / 'pytorch_model.bin'}: a pickle checkpoint, which runs code when it is loaded (evo-merge "
        "writes safetensors only); remove it before pushing"), refused.output
    stray = shutil.copytree(folder, tmp_path / "stray")
    save_file({"w": torch.full((3,), float("nan"))}, stray / "old_model.safetensors")  # check_finite reads no such file
    refused = dry_run(stray)
    assert refused.exit_code == 2 and f"{stray / 'old_model.safetensors'}: a weights file the model does not load" \
        in refused.output, refused.output
    extra = shutil.copytree(folder, tmp_path / "extra")
    (extra / "token").write_text("hf_abc")
    (extra / "__pycache__").mkdir()
    (extra / "__pycache__" / "modeling_tiny.cpython-311.pyc").write_bytes(b"\0")
    (extra / "notes").mkdir()
    (extra / "notes" / "todo.txt").write_text("ask legal\n")
    warned = dry_run(extra)
    assert warned.exit_code == 0, warned.output
    assert ("warning: 2 files evo-merge did not write would be published too: notes/todo.txt, token; remove what "
            "does not belong in the repo") in warned.output, warned.output
    listed = {line.split()[0] for line in warned.stdout.splitlines() if line.startswith("  ")}
    assert listed == {p.name for p in folder.iterdir()} | {"token", "notes/todo.txt"}  # no __pycache__


@pytest.mark.parametrize("revision", ["a b", "x..y/..", "/main", "v1/"])
def test_a_branch_name_the_hub_would_refuse_is_refused_before_any_work(tmp_path, revision):
    card = "---\ntags: [merge, evo-merge]\n---\n# fine\n"
    folder = write_model_folder(tmp_path / "m", [("w", torch.ones(3))], extra_files={"README.md": card})
    result = CliRunner().invoke(cli, ["push", str(folder), "me/tiny-merge", "--dry-run", "--revision", revision])
    assert result.exit_code == 2 and result.output.startswith(f"error: --revision {revision!r}: not a branch name"), \
        result.output
