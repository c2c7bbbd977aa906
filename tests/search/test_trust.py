"""A run folder received from someone else runs none of the task code its campaign.yaml names until
the user says so: `export --pick` of a received folder ran its `torch.hub:load` task (a hubconf.py
of the sender's) although the pick needed no scoring, and `resume` of the finished run did again."""

import pytest
from campaigns import run_campaign, write_campaign  # tests/search is on sys.path
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.search.store import CampaignStore
from evo_merge.search.trust import key_file
from evo_merge.zoo.tiny import save_tiny_family

MARKER_TASK = '''
from pathlib import Path

from agreement_task import AgreementTask


def marked(marker, **options):
    with open(marker, "a") as out:
        out.write("ran\\n")
    return AgreementTask(**options)
'''


@pytest.fixture(scope="module")
def received(tmp_path_factory):
    """A finished run whose tasks are a plugin that leaves a line in a marker file when called."""
    root = tmp_path_factory.mktemp("trust")
    base, fts = save_tiny_family(root / "zoo", "llama", n_finetunes=2)
    (root / "marking_task.py").write_text(MARKER_TASK)
    import sys

    sys.path.insert(0, str(root))
    tasks = [{"task": "marking_task:marked", "name": f"agree{i}",
              "options": {"marker": str(root / "ran.txt"), "reference": str(f), "name": f"agree{i}", "seed": i}}
             for i, f in enumerate(fts)]
    config = write_campaign(root / "campaign.yaml", base, fts, tasks=tasks,
                            algorithm={"population": 2, "generations": 1, "seed": 2})
    return run_campaign(config, root / "run"), root / "ran.txt"


def runs(marker) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def invoke(*args):
    """The command as a new process runs it: tasks are built once per process (`registry._CACHE`)."""
    from evo_merge.tasks import registry

    registry._CACHE.clear()
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_folder_run_here_resumes_and_exports_as_before(received):
    run, marker = received
    before = runs(marker)
    result = invoke("resume", run)
    assert result.exit_code == 0, result.output
    assert runs(marker) > before  # the user's own folder: its tasks are built, as they always were
    assert key_file().is_file() and oct(key_file().stat().st_mode & 0o777) == "0o600"


def test_someone_else_s_folder_runs_no_task_code_without_the_user_s_word(received, tmp_path, monkeypatch):
    run, marker = received
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another user"))  # another user's key, or none
    before = runs(marker)
    for args in (["resume", run], ["export", run, "--pick", 1, "--out", tmp_path / "pick"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"error: {run / 'campaign.yaml'}: tasks.0 runs the plugin marking_task:marked (imported and called), "
            "and this run folder was not run by you here (it does not carry your key's mark: received, or from "
            "before evo-merge marked them); a run folder does not choose what code runs: read its campaign.yaml, "
            "then pass --trust-tasks"]
    assert runs(marker) == before and not (tmp_path / "pick").exists()
    status = invoke("status", run)  # reading a folder runs no task: no word needed
    assert status.exit_code == 0 and runs(marker) == before

    trusted = invoke("resume", run, "--trust-tasks")
    assert trusted.exit_code == 0, trusted.output
    assert runs(marker) > before
    again = invoke("resume", run)  # trusted once: marked with this user's key
    assert again.exit_code == 0, again.output


def test_a_mark_is_of_one_campaign_and_one_key(received, tmp_path):
    """A mark copied from a folder of another campaign, or made with another key, is no mark."""
    from evo_merge.config import Campaign, TaskSpec
    from evo_merge.search.trust import is_trusted, mark_trusted

    run, _ = received
    store = CampaignStore(run)
    tasks = Campaign.load(run / "campaign.yaml").tasks
    mark_trusted(store, tasks)  # (the test before marked it with another user's key)
    assert is_trusted(store, tasks) and not is_trusted(store, [TaskSpec(task="torch.hub:load", name="agree0")])
    key = key_file().read_bytes()
    key_file().write_bytes(bytes(32))
    try:
        assert not is_trusted(store, tasks)
        mark_trusted(store, tasks)
        assert is_trusted(store, tasks)
    finally:
        key_file().write_bytes(key)
        mark_trusted(store, tasks)
        store.close()


def test_shipped_benchmarks_and_registry_names_run_no_code_of_a_folder_s():
    from evo_merge.tasks.registry import code_it_runs

    assert code_it_runs("arith") is None and code_it_runs("hellaswag") is None
    assert code_it_runs("./tasks/mine.yaml") == ("the lm-eval task file ./tasks/mine.yaml (its YAML may run Python "
                                                 "beside it)")
    assert code_it_runs("torch.hub:load") == "the plugin torch.hub:load (imported and called)"
