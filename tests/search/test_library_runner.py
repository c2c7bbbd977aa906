"""A campaign run from Python (docs/campaigns.md, From Python) gets what the commands give it: the
run folder's checks and lock, a failed start that leaves no folder, and models released after."""

import logging
import os
from pathlib import Path

import py
import pytest
import yaml
from campaigns import campaign_config  # tests/search is on sys.path

from evo_merge.config import Campaign
from evo_merge.errors import UserError
from evo_merge.report.campaign import write_report
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.lock import RunLock, holder
from evo_merge.search.store import FACTS_META
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2)


def small(zoo, **overrides) -> Campaign:
    config = campaign_config(*zoo, **{"algorithm": {"population": 2, "generations": 1, "seed": 2},
                                      "final": {"evaluate_top": 1, "export": ["balanced"]}, **overrides})
    return Campaign.model_validate(config)


def test_a_library_run_holds_the_folder_s_lock_while_it_works(tmp_path, zoo):
    """A `resume` started beside a library run was let in, and `status` said "not running"."""
    run = tmp_path / "run"
    seen: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        if not seen:
            seen.append(holder(run) or "none")
            with pytest.raises(UserError, match="is in use by pid"):
                RunLock(run).__enter__()

    with CampaignRunner.open(small(zoo), tmp_path, run, progress) as runner:
        assert holder(run) is None  # between opening and running, the folder is free
        store = runner.workspace.store  # the report's callback as docs/campaigns.md, From Python, gives it
        runner.run(lambda picks: write_report(runner.workspace.run_dir, store, store.get_meta(FACTS_META), picks))
    assert seen and seen[0] != "none"
    assert holder(run) is None and (run / "models" / "balanced" / "config.json").is_file()
    assert "balanced" in (run / "report.md").read_text()
    # the with block closed the database, and any use says so, as a notebook's next cell would use the
    # runner (sqlite's "Cannot operate on a closed database", audit 142)
    for use in (runner.workspace.store.evaluations, runner.run, runner.finished, runner.measure_final,
                lambda: runner.export_evaluation(1, tmp_path / "pick")):
        with pytest.raises(UserError, match=f"{run / 'state.sqlite'}: the run's database was closed"):
            use()


def test_a_failed_start_leaves_no_folder_and_the_corrected_campaign_starts_in_it(tmp_path, zoo):
    run = tmp_path / "run"
    typo = small(zoo).model_dump()
    typo["tasks"][0]["task"] = "agreement_task:AgreementTsk"
    with pytest.raises(UserError, match="AgreementTsk"):
        CampaignRunner.open(Campaign.model_validate(typo), tmp_path, run)
    assert not run.exists()
    CampaignRunner.open(small(zoo), tmp_path, run).__exit__(None, None, None)
    assert (run / "state.sqlite").is_file()


def test_a_folder_of_other_files_or_a_link_is_refused_before_anything_is_written(tmp_path, zoo):
    base, fts = zoo
    with pytest.raises(UserError, match=f"^{fts[0]}: not empty and not a run folder"):
        CampaignRunner.open(small(zoo), tmp_path, fts[0])
    assert not (fts[0] / "state.sqlite").exists()
    run = tmp_path / "run"
    CampaignRunner.open(small(zoo), tmp_path, run).__exit__(None, None, None)
    (tmp_path / "elsewhere").mkdir()
    (run / "models").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="link"):
        CampaignRunner.open(small(zoo), tmp_path, run)


def test_a_path_or_a_dict_for_the_campaign_is_named(tmp_path, zoo):
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign_config(*zoo)))
    for wrong in (path, str(path), yaml.safe_load(path.read_text())):
        with pytest.raises(TypeError, match=r"takes a Campaign \(Campaign.load\(path\)\)"):
            CampaignRunner.open(wrong, tmp_path, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # the other way round: the preflight reads the file (os.fspath's TypeError named no way on, audit 142)
    from evo_merge.search.preflight import check_campaign_fits

    made = small(zoo)
    with pytest.raises(TypeError, match=r"takes the campaign's file, as `run` checks it, not Campaign; write"):
        check_campaign_fits(made, tmp_path / "run")
    written = tmp_path / "made.yaml"  # as the message says, and it loads as the same campaign
    written.write_text(yaml.safe_dump(made.model_dump(mode="json")))
    assert Campaign.load(written).model_dump() == made.model_dump()
    check_campaign_fits(written, tmp_path / "run")
    check_campaign_fits(py.path.local(written), tmp_path / "run")  # any os.PathLike, as pytest's tmpdir


def test_closing_lets_go_of_the_loaded_models_and_a_later_run_makes_them_again(tmp_path, zoo):
    runner = CampaignRunner.open(small(zoo), tmp_path, tmp_path / "run")
    first = runner.evaluator()
    runner.close()
    assert runner._evaluator is None
    assert runner.evaluator() is not first
    runner.close()


def test_trackers_no_one_follows_are_said(tmp_path, zoo, caplog):
    campaign = small(zoo, tracking={"mlflow": {"uri": str(tmp_path / "mlruns")}})
    with caplog.at_level(logging.WARNING, logger="evo_merge"), \
            CampaignRunner.open(campaign, tmp_path, tmp_path / "run") as runner:
        runner.run()
    assert any("follow_campaign(runner)" in r.getMessage() for r in caplog.records)


def test_paths_given_as_strings_or_under_home_are_read_as_the_commands_read_them(tmp_path, zoo, monkeypatch):
    from evo_merge.search.binding import read_run
    from evo_merge.search.preflight import check_campaign_fits

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign_config(*zoo, algorithm={"population": 2, "generations": 1, "seed": 2})))
    check_campaign_fits("~/campaign.yaml", "~/run")
    with CampaignRunner.open(Campaign.load(path), "~", "~/run") as runner:
        runner.run()
    assert (tmp_path / "run" / "state.sqlite").is_file() and not (tmp_path / "~").exists()
    store, facts = read_run("~/run")
    store.close()
    assert facts["generations"] == 1


def test_a_run_interrupted_in_its_first_seconds_runs_again_into_its_folder(tmp_path, zoo):
    """A runner that removed its new folder when run() failed went on writing a removed database:
    the retry's evaluations and picks were lost, and the folder was no run folder after."""
    run = tmp_path / "run"
    interrupted: list[bool] = []

    def progress(stage: str, done: int, total: int) -> None:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt

    with CampaignRunner.open(small(zoo), tmp_path, run, progress) as runner:
        with pytest.raises(KeyboardInterrupt):
            runner.run()
        runner.progress = lambda *_: None
        measured, exported = runner.run()
    from evo_merge.search.binding import read_run

    store, _ = read_run(run)  # the folder is a run folder, holding what the retry evaluated
    stored = store.evaluations()
    store.close()
    assert measured and exported and {e.id for e in measured} <= {e.id for e in stored}
    assert (run / "models" / "balanced" / "config.json").is_file()


def test_the_with_block_lets_go_of_the_loaded_models(tmp_path, zoo):
    """Leaving the block releases the evaluator (its models), as close() does: a notebook that ran
    one campaign and goes on to the next must not keep the first's models in memory."""
    import gc
    import weakref

    with CampaignRunner.open(small(zoo), tmp_path, tmp_path / "run") as runner:
        loaded = weakref.ref(runner.evaluator())
    gc.collect()
    assert loaded() is None


def test_leaving_the_block_closes_the_database_where_stopping_the_evaluator_fails(tmp_path, zoo):
    """An evaluator that raised as it stopped (a dask cluster gone) left the run's database open."""
    class Stuck:
        def close(self):
            raise RuntimeError("cluster gone")

    with pytest.raises(RuntimeError, match="cluster gone"):
        with CampaignRunner.open(small(zoo), tmp_path, tmp_path / "run") as runner:
            runner._evaluator = Stuck()
    with pytest.raises(UserError, match="the run's database was closed"):
        runner.workspace.store.db.execute("SELECT 1")


def test_a_followed_runner_is_not_told_to_follow_its_trackers(tmp_path, zoo, caplog):
    from evo_merge.report.tracking import follow_campaign

    campaign = small(zoo, tracking={"mlflow": {"uri": str(tmp_path / "mlruns")}})
    with caplog.at_level(logging.WARNING, logger="evo_merge"), \
            CampaignRunner.open(campaign, tmp_path, tmp_path / "run") as runner:
        tracker = follow_campaign(runner)  # as docs/campaigns.md, From Python, says
        runner.run()
        tracker.log_evaluations(runner.workspace.store.evaluations())
        tracker.finish(runner.workspace.run_dir)
    assert not [r.getMessage() for r in caplog.records if "follow_campaign(runner)" in r.getMessage()]


def test_a_root_under_home_resolves_the_campaign_s_relative_paths(tmp_path, monkeypatch):
    """`root` is where a campaign's relative model paths are read from, `~` as the commands read it."""
    home = tmp_path / "home"
    base, fts = save_tiny_family(home / "zoo", "llama", n_finetunes=2)
    config = campaign_config(base, fts, algorithm={"population": 2, "generations": 1, "seed": 2})
    config["base_model"] = "zoo/" + base.name
    config["models"] = ["zoo/" + f.name for f in fts]
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with CampaignRunner.open(Campaign.model_validate(config), "~", "~/run") as runner:
        assert runner.workspace.run_dir == home / "run"
    assert (home / "run" / "state.sqlite").is_file() and not (tmp_path / "elsewhere" / "~").exists()


def test_a_loaded_campaign_s_paths_are_read_from_its_file_s_folder(tmp_path, monkeypatch):
    """docs/campaigns.md gave `root=Path(".")`: for a campaign file in another folder the runner read
    its relative paths from the working directory, and merged other models than the file's folder
    holds, which `check_campaign_fits` and `run` had checked (audit 142). A loaded campaign's root is
    its file's folder: left out, it is; another is refused."""
    base, fts = save_tiny_family(tmp_path / "configs" / "zoo", "llama", n_finetunes=2)
    save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2, seed=1)  # the same names where the user stands
    config = campaign_config(base, fts, algorithm={"population": 2, "generations": 1, "seed": 2})
    config["base_model"] = "zoo/" + base.name
    config["models"] = ["zoo/" + f.name for f in fts]
    (tmp_path / "configs" / "c.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    campaign = Campaign.load("configs/c.yaml")
    with pytest.raises(UserError, match=f"root {tmp_path}: the campaign was loaded from {tmp_path / 'configs'}"):
        CampaignRunner.open(campaign, root=Path("."), run_dir="run")
    assert not (tmp_path / "run").exists()
    with CampaignRunner.open(campaign, run_dir="run") as runner:
        assert runner.workspace.base == base and runner.workspace.models == fts
    (tmp_path / "link").symlink_to(tmp_path / "configs")
    for same in ("configs/../configs", tmp_path / "link", (tmp_path / "link").resolve()):  # spelt otherwise
        with CampaignRunner.open(campaign, same, "run") as runner:
            assert runner.workspace.base == base


def test_a_library_user_exports_an_evaluation_as_export_pick_does(tmp_path, zoo, monkeypatch):
    """`runner.export_evaluation` measures a search candidate known by its estimate alone, stores
    the measurement, and writes the folder its recipe rebuilds; an id with no evaluation is refused
    before anything is written."""
    campaign = small(zoo, estimator={"kind": "gpirt", "anchors": 5, "warmup_merges": 5, "dims": 1},
                     algorithm={"population": 6, "generations": 2, "seed": 2})
    with CampaignRunner.open(campaign, tmp_path, tmp_path / "run") as runner:
        runner.run()
        store = runner.workspace.store
        estimated = next(e for e in store.evaluations("search") if e.status == "ok" and e.measured is None)
        with pytest.raises(UserError, match="--pick 9999: no successful evaluation with that id"):
            runner.export_evaluation(9999, tmp_path / "nothing")
        failed = next(e for e in store.evaluations("search") if e.status == "ok" and e.id != estimated.id)
        with store.db:  # a failed evaluation's id: nothing to export either (audit 104)
            store.db.execute("UPDATE evaluations SET status = 'failed' WHERE id = ?", (failed.id,))
        with pytest.raises(UserError, match=f"--pick {failed.id}: no successful evaluation with that id"):
            runner.export_evaluation(failed.id, tmp_path / "nothing")
        held: set[str | None] = set()
        runner.progress = lambda *_: held.add(holder(tmp_path / "run"))
        import evo_merge.search.campaign as search_campaign

        real, resident = search_campaign.export_candidate, []

        def watched(*args, **kwargs):  # the resident models freed before the file merge: both do not fit at size
            resident.append(runner._evaluator)
            return real(*args, **kwargs)

        monkeypatch.setattr(search_campaign, "export_candidate", watched)
        measured, folder = runner.export_evaluation(estimated.id, tmp_path / "pick")
        assert resident == [None]
        assert held == {str(os.getpid())} and holder(tmp_path / "run") is None  # the lock, as `run` holds it
        assert measured.key == estimated.key and measured.measured is not None
        assert store.get(estimated.key).measured == measured.measured  # stored, for the report
    assert folder == tmp_path / "pick" and (folder / "merge_recipe.yaml").is_file()
    assert not (tmp_path / "nothing").exists()


def test_a_run_whose_folder_is_moved_under_it_stops_and_writes_nothing_at_the_old_path(tmp_path, zoo):
    """The run held its lock on the folder, which moved with it, but wrote its IRT models, picks and
    report by path: it recreated the old path and wrote them there, where a second `run --out`
    started unrefused and took the first run's IRT models for its own (audit 138)."""
    run, moved = tmp_path / "run", tmp_path / "moved"
    with CampaignRunner.open(small(zoo), tmp_path, run) as runner:
        runner.on_generation.append(lambda generation, evaluations: run.rename(moved))
        with pytest.raises(UserError) as refused:
            runner.run()
    assert str(refused.value) == (f"run folder {run} was moved or replaced while this run worked in it (it is now "
                                  f"{moved}); the run stops here, with its records in the folder it opened: "
                                  f"`evo-merge resume {moved}` goes on where it is now")
    assert not run.exists()  # nothing recreated at the old path
    with CampaignRunner.open(small(zoo), tmp_path, moved) as again:  # goes on where it is
        again.run()
    assert (moved / "models" / "balanced" / "config.json").is_file() and not run.exists()


def test_a_relative_run_folder_after_a_change_of_working_directory_is_not_said_to_have_moved(tmp_path, monkeypatch):
    """A library run opened on a relative folder, then `os.chdir`: its path names another place, and
    the stop said the folder "was moved" (audit 139)."""
    from evo_merge.search.run_folder import check_in_place, folder_identity

    (tmp_path / "first" / "run").mkdir(parents=True)
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    opened = folder_identity(Path("run"))
    held = os.open("run", os.O_RDONLY | os.O_DIRECTORY)  # as the run's lock holds it
    try:
        check_in_place(Path("run"), opened)
        monkeypatch.chdir(tmp_path / "second")
        with pytest.raises(UserError) as refused:
            check_in_place(Path("run"), opened)
    finally:
        os.close(held)
    assert str(refused.value).startswith(
        "run folder run is no longer the folder this run opened (moved or replaced, or, its path being relative, the "
        f"working directory changed) (it is now {tmp_path / 'first' / 'run'}); the run stops here"), refused.value
