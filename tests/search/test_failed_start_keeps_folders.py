"""A start that fails removes only a run folder it made itself (docs: "a start that fails leaves no
folder it created"): a folder the user made, or one a campaign was bound to before, stays, from
Python (`CampaignRunner.open`) and from `evo-merge run` alike. And the folder's lock is held while
`open` binds it, and a failed open lets go of the database and of a folder made for it."""

import os
from pathlib import Path

import pytest
import yaml
from campaigns import campaign_config  # tests/search is on sys.path
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.config import Campaign
from evo_merge.errors import UserError
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.lock import RunLock
from evo_merge.zoo.tiny import save_tiny_family

# a task that builds as agreement_task's does, or fails as a missing package does while `fail_if` exists
# (the same campaign, so a folder bound to it is opened, not refused as another campaign's)
FLAKY_TASK = '''
from pathlib import Path

from agreement_task import AgreementTask


def built(fail_if, **options):
    if Path(fail_if).exists():
        import no_such_package_zz  # noqa: F401
    return AgreementTask(**options)


def interrupted(**options):
    raise KeyboardInterrupt
'''


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2)


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    """The module above importable, and the flag that makes its task fail (absent: it builds)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "flaky_start_task.py").write_text(FLAKY_TASK)
    monkeypatch.syspath_prepend(str(folder))
    return tmp_path / "fail-now"


def fresh_tasks() -> None:
    """Tasks are built once per process (`registry._CACHE`): a new process builds them again."""
    from evo_merge.tasks import registry

    registry._CACHE.clear()


def config(zoo, flag: Path | None = None, task: str = "flaky_start_task:built") -> dict:
    base, fts = zoo
    tasks = [{"task": task, "name": f"agree{i}",
              "options": {**({"fail_if": str(flag)} if flag is not None else {}), "reference": str(f),
                          "name": f"agree{i}", "seed": i}} for i, f in enumerate(fts)]
    return campaign_config(base, fts, tasks=tasks, algorithm={"population": 2, "generations": 1, "seed": 2},
                           final={"evaluate_top": 1, "export": ["balanced"]})


def typo(zoo) -> dict:
    c = campaign_config(*zoo, algorithm={"population": 2, "generations": 1, "seed": 2})
    c["tasks"][0]["task"] = "agreement_task:AgreementTsk"
    return c


def bind(zoo, flag, run: Path) -> None:
    """A folder bound to the flaky campaign, as a first start that got as far as its tasks leaves it."""
    fresh_tasks()
    CampaignRunner.open(Campaign.model_validate(config(zoo, flag)), run.parent, run).__exit__(None, None, None)
    assert (run / "state.sqlite").is_file() and (run / "campaign.yaml").is_file()


def open_fds_under(folder: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


# ---------------------------------------------------------------- from Python

def test_a_failed_open_keeps_a_folder_the_user_made(tmp_path, zoo):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match="AgreementTsk"):
        CampaignRunner.open(Campaign.model_validate(typo(zoo)), tmp_path, run)
    assert run.is_dir()


def test_a_failed_open_keeps_a_folder_bound_before_and_its_database(tmp_path, zoo, flaky):
    run = tmp_path / "run"
    bind(zoo, flaky, run)
    flaky.write_text("")
    fresh_tasks()
    with pytest.raises(UserError, match="no_such_package_zz"):
        CampaignRunner.open(Campaign.model_validate(config(zoo, flaky)), tmp_path, run)
    assert (run / "state.sqlite").is_file() and (run / "campaign.yaml").is_file()
    flaky.unlink()  # the cause mended: the same folder opens, as the campaign it was bound to
    fresh_tasks()
    CampaignRunner.open(Campaign.model_validate(config(zoo, flaky)), tmp_path, run).__exit__(None, None, None)


def test_open_is_refused_while_another_holds_the_folder_s_lock(tmp_path, zoo):
    """`open` binds the folder (writes its campaign, records its facts): not while a run works in it."""
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(UserError, match="in use by pid"):
            CampaignRunner.open(Campaign.model_validate(config(zoo, task="agreement_task:AgreementTask")),
                                tmp_path, run)
        assert not (run / "state.sqlite").exists() and not (run / "campaign.yaml").exists()


def test_an_open_interrupted_while_building_its_tasks_leaves_no_folder(tmp_path, zoo, flaky):
    """Ctrl-C while the tasks load (a download, a slow import) is a failed start too."""
    run = tmp_path / "run"
    fresh_tasks()
    with pytest.raises(KeyboardInterrupt):
        CampaignRunner.open(Campaign.model_validate(config(zoo, task="flaky_start_task:interrupted")), tmp_path, run)
    assert not run.exists()


def test_a_failed_open_closes_the_database_it_opened(tmp_path, zoo, flaky):
    """Checked while the exception is still held (a caller that keeps or logs it): the failed
    runner's database must not stay open under the folder."""
    run = tmp_path / "run"
    bind(zoo, flaky, run)
    flaky.write_text("")
    fresh_tasks()
    with pytest.raises(UserError, match="no_such_package_zz") as failed:
        CampaignRunner.open(Campaign.model_validate(config(zoo, flaky)), tmp_path, run)
    held = failed.value  # as a caller logging it holds it, with its traceback and the frames it references
    assert open_fds_under(run) == [], held


# ---------------------------------------------------------------- evo-merge run

def invoke(*args):
    fresh_tasks()
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output + repr(result.exception)  # (an unforeseen error is main()'s to word)


def test_run_that_fails_keeps_a_folder_the_user_made(tmp_path, zoo):
    run = tmp_path / "run"
    run.mkdir()
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(typo(zoo)))
    code, out = invoke("run", path, "--out", run)
    assert code == 2 and "AgreementTsk" in out, out
    assert run.is_dir()


def test_run_that_fails_keeps_a_folder_bound_before_and_its_database(tmp_path, zoo, flaky):
    run = tmp_path / "run"
    bind(zoo, flaky, run)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config(zoo, flaky)))
    flaky.write_text("")
    code, out = invoke("run", path, "--out", run)
    assert code != 0 and "no_such_package_zz" in out, out
    assert (run / "state.sqlite").is_file() and (run / "campaign.yaml").is_file()
