"""How a run folder's records are read before and between runs (search.binding): a folder opened and
not run yet, a database no campaign was bound to (a start that failed), a run still starting, and a
folder named under `~`."""

import os

import pytest
import yaml
from campaigns import campaign_config  # tests/search is on sys.path
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.config import Campaign
from evo_merge.errors import UserError
from evo_merge.search.binding import bound_defaults, folder_differences, open_run, read_run
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.lock import RunLock
from evo_merge.search.store import CampaignStore
from evo_merge.search.workspace import Workspace
from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2)


def small(zoo) -> dict:
    return campaign_config(*zoo, algorithm={"population": 2, "generations": 1, "seed": 2},
                           final={"evaluate_top": 1, "export": ["balanced"]})


def invoke(*args):
    from evo_merge.tasks import registry

    registry._CACHE.clear()  # tasks are built once per process
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_a_folder_opened_and_not_run_yet_is_read_with_its_tasks(tmp_path, zoo):
    """`open` records the facts (the tasks and their items) before any evaluation: no evaluation
    scored on other tasks is no damage, and `status` reads the folder."""
    run = tmp_path / "run"
    CampaignRunner.open(Campaign.model_validate(small(zoo)), tmp_path, run).__exit__(None, None, None)
    store, facts = read_run(run)
    try:
        assert store.evaluations() == []
    finally:
        store.close()
    assert sorted(t["name"] for t in facts["tasks"]) == ["agree0", "agree1"]
    code, out = invoke("status", run)
    assert code == 0 and "damaged" not in out, out


def test_a_database_that_records_no_campaign_is_a_folder_bound_to_none(tmp_path, zoo):
    """What a start that failed before binding leaves (a database, no campaign): no campaign it holds
    differs from the one given, no defaults version is bound, and `plan --out` of it plans."""
    run = tmp_path / "run"
    CampaignStore(run).close()
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(small(zoo)))
    assert folder_differences(run, Campaign.load(path)) is None
    assert bound_defaults(run) is None
    code, out = invoke("plan", path, "--out", run)
    assert code == 0 and "different campaign" not in out, out


def test_a_run_that_has_not_recorded_its_tasks_yet_is_said_to_be_starting_while_it_holds_the_folder(tmp_path, zoo):
    """Bound (its campaign written) but its tasks still loading: while the run holds the lock the
    reader is told it is starting, not to `resume` it (which the lock would refuse)."""
    run = tmp_path / "run"
    Workspace.open(Campaign.model_validate(small(zoo)), tmp_path, run).store.close()
    with RunLock(run):
        with pytest.raises(UserError) as starting:
            read_run(run)
    assert str(starting.value) == (
        f"{run}: a run is starting here (pid {os.getpid()}); it has not recorded its tasks yet")
    with pytest.raises(UserError) as stopped:  # no one holds it: a start stopped before its tasks loaded
        read_run(run)
    assert str(stopped.value) == (
        f"{run}: the campaign has not recorded its tasks yet; `evo-merge resume {run}` records them")


def test_a_run_folder_under_home_is_opened_from_any_working_directory(tmp_path, zoo, monkeypatch):
    home = tmp_path / "home"
    CampaignRunner.open(Campaign.model_validate(small(zoo)), tmp_path, home / "run").__exit__(None, None, None)
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    store = open_run("~/run")
    try:
        assert store.run_dir == home / "run"
    finally:
        store.close()


def test_every_record_of_the_store_has_a_key_of_its_own():
    """The store's records are declared beside the code that writes them (ten modules): two
    declaring one key would read each other's values as damage, and a key starting like the
    per-candidate failure records would be counted among them. Every search module is imported and
    its records gathered (a record imported elsewhere is the same object, not a second one)."""
    import importlib
    import pkgutil

    import evo_merge.search
    from evo_merge.search.store import ADAPTIVE_FAILED, MEASURE_FAILED, Record

    declared: dict[str, dict[int, str]] = {}
    for module in pkgutil.iter_modules(evo_merge.search.__path__):
        for name, value in vars(importlib.import_module(f"evo_merge.search.{module.name}")).items():
            if isinstance(value, Record):
                declared.setdefault(value.key, {}).setdefault(id(value), f"{module.name}.{name}")
    assert len(declared) >= 25 and {"facts", "task_data", "finished"} <= set(declared)  # the gathering found them
    assert not {key: names for key, names in declared.items() if len(names) > 1}
    assert not [key for key in declared if key.startswith((MEASURE_FAILED, ADAPTIVE_FAILED))]
