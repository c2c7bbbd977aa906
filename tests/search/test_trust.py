"""A run folder received from someone else runs none of the task code its campaign.yaml names until
the user says so: `export --pick` of a received folder ran its `torch.hub:load` task (a hubconf.py
of the sender's) although the pick needed no scoring, and `resume` of the finished run did again."""

from pathlib import Path

import pandas as pd
import pytest
from campaigns import run_campaign, write_campaign  # tests/search is on sys.path
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.search.store import CampaignStore
from evo_merge.search.trust import TRUST_META, key_file
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


def edited_copy(run, folder, edit) -> None:
    """A copy of run folder `run` in `folder`, its campaign.yaml changed by `edit(config)`."""
    import shutil

    import yaml

    shutil.copytree(run, folder)
    config = yaml.safe_load((folder / "campaign.yaml").read_text())
    edit(config)
    (folder / "campaign.yaml").write_text(yaml.safe_dump(config))


def next_seed(config) -> None:
    config["algorithm"]["seed"] += 1


def test_a_folder_run_here_resumes_and_exports_as_before(received):
    run, marker = received
    before = runs(marker)
    result = invoke("resume", run)
    assert result.exit_code == 0, result.output
    assert runs(marker) > before  # the user's own folder: its tasks are built, as they always were
    assert key_file().is_file() and oct(key_file().stat().st_mode & 0o777) == "0o600"
    assert oct(key_file().parent.stat().st_mode & 0o777) == "0o700"  # its folder, made for it, the user's alone


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
            f"before evo-merge marked them, or your key could not be kept at {key_file()} when it ran); a run "
            "folder does not choose what code runs: read its campaign.yaml, then pass --trust-tasks"]
    assert runs(marker) == before and not (tmp_path / "pick").exists()
    status = invoke("status", run)  # reading a folder runs no task: no word needed
    assert status.exit_code == 0 and runs(marker) == before

    merge = int(pd.read_csv(run / "pareto.csv").id.iloc[0])  # (the base, evaluation 1, is an input: refused)
    exported = invoke("export", run, "--pick", merge, "--out", tmp_path / "pick", "--trust-tasks")
    assert exported.exit_code == 0 and (tmp_path / "pick" / "config.json").is_file(), exported.output
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


def test_a_bare_name_read_from_the_working_directory_is_task_code(tmp_path, monkeypatch):
    """`{task: zqxtask}` with a `zqxtask/` folder shipped in the received run folder: `cd RUN &&
    evo-merge resume .` read its lm-eval YAML (and the Python it names) with no word."""
    from evo_merge.tasks.registry import code_it_runs

    monkeypatch.chdir(tmp_path)
    assert code_it_runs("zqxtask") is None
    (tmp_path / "zqxtask").mkdir()
    assert code_it_runs("zqxtask") == ("the lm-eval task file or folder zqxtask of the working directory (its YAML "
                                       "may run Python beside it)")
    (tmp_path / "arith").mkdir()
    assert code_it_runs("arith") is None  # a shipped benchmark's name is never read from the working directory


def test_every_user_who_ran_a_folder_keeps_their_mark(received, tmp_path, monkeypatch):
    """The mark held one key: a colleague's resume with --trust-tasks made the owner's next resume
    say the folder was not run by them."""
    run, _ = received
    assert invoke("resume", run).exit_code == 0
    own = key_file()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "colleague"))
    assert invoke("resume", run, "--trust-tasks").exit_code == 0
    assert invoke("resume", run).exit_code == 0
    monkeypatch.setenv("XDG_CONFIG_HOME", str(own.parent.parent))
    result = invoke("resume", run)
    assert result.exit_code == 0, result.output
    store = CampaignStore(run)
    assert len(store.get_meta(TRUST_META)) >= 2
    store.close()


def test_a_key_that_cannot_be_written_leaves_the_folder_unmarked_and_the_run_going(tmp_path, monkeypatch, caplog):
    """A read-only home stopped every run, of shipped benchmarks too ("Read-only file system")."""
    from evo_merge.config import TaskSpec
    from evo_merge.search.trust import mark_trusted

    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocked))
    store = CampaignStore(tmp_path / "run")
    mark_trusted(store, [TaskSpec(task="arith")])  # no task code: no key needed, none made
    assert not caplog.records
    with caplog.at_level("WARNING", logger="evo_merge"):
        mark_trusted(store, [TaskSpec(task="mine:task", name="t")])
    assert store.get_meta(TRUST_META) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot keep evo-merge's run key at {blocked / 'evo-merge' / 'run-key'} (Not a directory): this run folder "
        "is not marked as run by you, and resuming or exporting it will need --trust-tasks"]
    store.close()


def test_a_key_another_process_made_first_is_the_one_kept(tmp_path, monkeypatch):
    """Two first runs at once each wrote a key, and the folders one of them marked lost their mark."""
    from evo_merge.search.trust import KEY_BYTES, _make_key

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    first = _make_key(key_file())
    assert len(first) == KEY_BYTES and _make_key(key_file()) == first  # a second maker reads the first's
    assert sorted(p.name for p in key_file().parent.iterdir()) == ["run-key"]


def test_a_folder_is_marked_as_soon_as_it_is_bound(tmp_path, zoo_family, monkeypatch):
    """The mark came after the weights' digests and the alignment (minutes at size): a kill there left
    the user's own folder taken for a received one."""
    from evo_merge.config import Campaign
    from evo_merge.search import workspace

    base, fts = zoo_family
    tasks = [{"task": "agreement_task:AgreementTask", "name": f"agree{i}",
              "options": {"reference": str(f), "name": f"agree{i}", "seed": i}} for i, f in enumerate(fts)]
    config = write_campaign(tmp_path / "campaign.yaml", base, fts, tasks=tasks)

    def killed(*args):
        raise KeyboardInterrupt  # as a kill -9 in the digests would leave the folder

    monkeypatch.setattr(workspace, "_check_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        workspace.Workspace.open(Campaign.load(config), tmp_path, tmp_path / "run")
    store = CampaignStore(tmp_path / "run")
    assert len(store.get_meta(TRUST_META)) == 1
    store.close()


@pytest.fixture(scope="module")
def zoo_family(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("bound"), "llama", n_finetunes=2)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_received_folder_s_own_campaign_file_is_checked_as_its_resume(received, tmp_path, monkeypatch, command):
    """`plan RUN/campaign.yaml --out RUN` (which a refusal of `resume` names) built the folder's plugin
    tasks with no check, and `run RUN/campaign.yaml --out RUN` (what an edited folder is told to run)
    ran them and marked the folder as the user's."""
    run, marker = received
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another user"))
    before = runs(marker)
    result = invoke(command, run / "campaign.yaml", "--out", run)
    assert result.exit_code == 2 and "tasks.0 runs the plugin marking_task:marked" in result.output, result.output
    assert runs(marker) == before
    assert invoke(command, run / "campaign.yaml", "--out", run, "--trust-tasks").exit_code == 0
    assert runs(marker) > before
    # `run` marked the folder as this user's; `plan` writes nothing into a run folder (its help says so)
    assert invoke(command, run / "campaign.yaml", "--out", run).exit_code == (2 if command == "plan" else 0)


def test_plan_of_a_run_folder_s_campaign_without_its_database_runs_no_task(received, tmp_path, monkeypatch):
    """A sender can leave the database out: `plan DIR/campaign.yaml` then built the tasks."""
    import shutil

    run, marker = received
    sent = tmp_path / "sent"
    shutil.copytree(run, sent, ignore=shutil.ignore_patterns("state.sqlite*"))
    before = runs(marker)
    result = invoke("plan", sent / "campaign.yaml")
    assert result.exit_code == 2 and "state.sqlite" in result.output, result.output
    assert runs(marker) == before


def test_a_mark_covers_where_a_task_s_code_is_read_from(tmp_path, monkeypatch):
    """A user's mark for `{task: marktask}` (a folder of the working directory) copied into a folder
    that ships its own `marktask/` passed: the mark covered the task strings alone."""
    from evo_merge.config import TaskSpec
    from evo_merge.search.trust import tasks_digest

    tasks = [TaskSpec(task="marktask", name="m")]
    for where in ("mine", "theirs"):
        (tmp_path / where / "marktask").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "mine")
    mine = tasks_digest(tasks)
    monkeypatch.chdir(tmp_path / "theirs")
    assert tasks_digest(tasks) != mine
    monkeypatch.chdir(tmp_path)
    assert tasks_digest([TaskSpec(task="arith")]) == tasks_digest([TaskSpec(task="arith")])


@pytest.mark.parametrize("content", [b"short", bytes(40)])
def test_a_key_file_of_another_length_is_refused_with_the_way_out(tmp_path, monkeypatch, content):
    """Said as "cannot keep evo-merge's run key", the run went on unmarked and its resume was then
    refused over the same file (audit 130): refused when marking too, as when checking."""
    from evo_merge.config import TaskSpec
    from evo_merge.errors import UserError
    from evo_merge.search.trust import mark_trusted

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    key_file().parent.mkdir(parents=True)
    key_file().write_bytes(content)
    with CampaignStore(tmp_path / "run") as store, pytest.raises(UserError) as refused:
        mark_trusted(store, [TaskSpec(task="mine:task", name="t")])
    assert str(refused.value) == (f"{key_file()} holds {len(content)} bytes, not a key of 32; remove it and a new "
                                  "key is made")


def test_a_relative_config_home_is_ignored_as_the_xdg_rules_say(tmp_path, monkeypatch):
    """A key in the working directory was another key in every folder a command ran from."""
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert key_file() == tmp_path / ".config" / "evo-merge" / "run-key"


def test_a_damaged_mark_is_replaced_when_the_user_says_the_code_may_run(received, tmp_path, monkeypatch):
    run, _ = received
    store = CampaignStore(run)
    store.db.execute("UPDATE meta SET value = '5' WHERE key = ?", (TRUST_META.key,))
    store.db.commit()
    store.close()
    refused = invoke("resume", run)  # damaged: no mark of this user's
    assert refused.exit_code == 2 and "does not carry your key's mark" in refused.output, refused.output
    result = invoke("resume", run, "--trust-tasks")
    assert result.exit_code == 0, result.output
    assert invoke("resume", run).exit_code == 0


def test_a_name_beginning_with_a_tilde_is_a_task_file():
    from evo_merge.tasks.registry import code_it_runs

    assert code_it_runs("~user/tasks") is not None and code_it_runs("~mine") is not None


def test_a_project_s_campaign_beside_its_own_models_is_no_run_folder_s(tmp_path):
    from evo_merge.cli.trust import run_folder_of

    (tmp_path / "models").mkdir()
    (tmp_path / "report.md").write_text("notes")
    assert run_folder_of(tmp_path / "campaign.yaml") is None
    (tmp_path / "pareto.csv").write_text("id\n")  # a run's own file: a folder sent without its database
    assert run_folder_of(tmp_path / "campaign.yaml") == tmp_path
    # another YAML beside a run's files is the folder's too: `plan RUN/Campaign.yaml` ran a received
    # folder's task code unasked (audit 95); `use-this.yaml` beside a pareto.csv alone, too (audit 99)
    assert run_folder_of(tmp_path / "Campaign.yaml") == run_folder_of(tmp_path / "use-this.yaml") == tmp_path


def test_a_campaign_beside_a_run_s_tables_runs_its_code_only_when_the_user_says_so(received, tmp_path):
    """A folder holding a run's `pareto.csv` and a campaign file of any name: a received one (its
    campaign.yaml and database left out) ran its code unasked (audit 99); a project's copy of a
    run's tables beside its own campaigns is told why and the way out (audit 98 found it refused as
    "not a campaign run folder")."""
    run, marker = received
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pareto.csv").write_text((run / "pareto.csv").read_text())
    (folder / "use-this.yaml").write_text((run / "campaign.yaml").read_text())
    before = runs(marker)
    result = invoke("plan", folder / "use-this.yaml")
    assert result.exit_code == 2 and runs(marker) == before, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {folder / 'use-this.yaml'}: tasks.0 runs the plugin marking_task:marked (imported and called), and "
        "the file lies in a folder holding a campaign run's pareto.csv but not the run's records, so no mark of "
        "yours covers it (a folder someone sent, or a run's tables copied beside your campaigns); a run folder does "
        "not choose what code runs: read the file, then pass --trust-tasks")
    assert invoke("plan", folder / "use-this.yaml", "--trust-tasks").exit_code == 0  # its tasks built: run
    (folder / "pareto.csv").unlink()  # a run's records without its campaign: said as the run folder it is
    (folder / "state.sqlite").write_bytes(b"")
    before = runs(marker)
    result = invoke("plan", folder / "use-this.yaml")
    assert result.exit_code == 2 and "not a campaign run folder (no campaign.yaml)" in result.output, result.output
    assert runs(marker) == before


def test_a_task_file_named_relative_to_the_campaign_is_marked_as_the_run_resolves_it(tmp_path, zoo_family,
                                                                                     monkeypatch):
    """The mark (at bind time) and the check (from any working directory) read the tasks as the run
    does, against the campaign file's folder: the user's own folder is not taken for a received one
    when resumed from elsewhere."""
    from evo_merge.cli.trust import check_tasks_trusted
    from evo_merge.config import Campaign
    from evo_merge.search.workspace import Workspace

    base, fts = zoo_family
    (tmp_path / "project" / "tasks").mkdir(parents=True)
    (tmp_path / "project" / "tasks" / "t.yaml").write_text("task: t\n")
    config = write_campaign(tmp_path / "project" / "campaign.yaml", base, fts,
                            tasks=[{"task": "./tasks/t.yaml", "name": "t"}])
    monkeypatch.chdir(tmp_path / "project")
    Workspace.open(Campaign.load(config), config.parent, tmp_path / "run").store.close()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    check_tasks_trusted(tmp_path / "run" / "campaign.yaml", tmp_path / "run", trust_tasks=False)  # no refusal


def test_a_code_task_after_a_shipped_benchmark_is_found():
    """Every task is looked at, not the first: `[arith, a plugin]` runs the plugin's code."""
    from evo_merge.config import TaskSpec
    from evo_merge.search.trust import code_task

    tasks = [TaskSpec(task="arith"), TaskSpec(task="lang"), TaskSpec(task="torch.hub:load", name="hub")]
    assert code_task(tasks) == (2, "the plugin torch.hub:load (imported and called)")
    assert code_task(tasks[:2]) is None


def test_a_mark_covers_each_task_s_options_and_name():
    """A marked folder edited to point its plugin elsewhere (`repo_or_dir` of `torch.hub:load`) is no
    longer the user's: the folder's fingerprint is no secret, its mark is."""
    from evo_merge.config import TaskSpec
    from evo_merge.search.trust import tasks_digest

    mine = TaskSpec(task="torch.hub:load", name="hub", options={"repo_or_dir": "me/repo"})
    edited = TaskSpec(task="torch.hub:load", name="hub", options={"repo_or_dir": "them/repo"})
    renamed = TaskSpec(task="torch.hub:load", name="hub2", options={"repo_or_dir": "me/repo"})
    assert len({tasks_digest([mine]), tasks_digest([edited]), tasks_digest([renamed])}) == 3


def test_a_plugin_s_mark_covers_the_module_file_it_is_imported_from(tmp_path, monkeypatch):
    """A folder the command runs in can shadow the user's plugin module with its own `mytasks.py`:
    the mark made with the user's module does not pass for the shadowing one."""
    from evo_merge.config import TaskSpec
    from evo_merge.search.trust import tasks_digest
    from evo_merge.tasks.registry import code_location

    for where in ("mine", "theirs"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "mytasks.py").write_text("def make(**options):\n    raise SystemExit\n")
    tasks = [TaskSpec(task="mytasks:make", name="m")]
    monkeypatch.syspath_prepend(str(tmp_path / "mine"))
    assert code_location("mytasks:make") == str(tmp_path / "mine" / "mytasks.py")
    mine = tasks_digest(tasks)
    monkeypatch.syspath_prepend(str(tmp_path / "theirs"))  # first on sys.path: the one an import would take
    assert code_location("mytasks:make") == str(tmp_path / "theirs" / "mytasks.py")
    assert tasks_digest(tasks) != mine


def test_a_run_folder_written_two_ways_is_one_folder(tmp_path, monkeypatch):
    """`plan ./sent/campaign.yaml --out sent` of a folder sent without its database or tables names the
    folder `--out` names: it is the folder's own campaign file, checked as the folder's."""
    from evo_merge.cli.trust import run_folder_of

    (tmp_path / "sent").mkdir()
    (tmp_path / "sent" / "campaign.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    assert run_folder_of(Path(".") / "sent" / "campaign.yaml", Path("sent")) is not None
    assert run_folder_of(Path("sent") / "campaign.yaml", Path(".") / "sent" / ".") is not None
    assert run_folder_of(Path("sent") / "campaign.yaml", tmp_path / "sent") is not None
    assert run_folder_of(Path("sent") / "campaign.yaml", tmp_path / "elsewhere") is None


def test_the_latest_marks_are_kept(received, tmp_path, monkeypatch):
    """A folder keeps the last MARKS_KEPT users' marks: a new user's is always among them."""
    import shutil

    from evo_merge.config import Campaign
    from evo_merge.search.trust import MARKS_KEPT, is_trusted, mark_trusted

    run = shutil.copytree(received[0], tmp_path / "shared")  # the module's folder keeps its own marks
    tasks = Campaign.load(run / "campaign.yaml").tasks
    store = CampaignStore(run)
    try:
        for user in range(MARKS_KEPT + 2):
            monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / f"user{user}"))
            mark_trusted(store, tasks)
            assert is_trusted(store, tasks), user
        assert len(store.get_meta(TRUST_META)) == MARKS_KEPT
    finally:
        store.close()


def test_the_user_s_folder_with_an_edited_campaign_starts_in_a_new_folder_as_resume_says(received, tmp_path):
    """`resume` of an edited folder says to start the edited campaign in a new run folder; the
    trust check refused that too (it read the folder as `resume` does, edit and all)."""
    run, _ = received
    mine = tmp_path / "mine"
    edited_copy(run, mine, next_seed)
    refused = invoke("resume", mine)
    assert refused.exit_code == 2 and "start the edited campaign in a new run folder" in refused.output
    planned = invoke("plan", mine / "campaign.yaml", "--out", tmp_path / "new")
    assert planned.exit_code == 0, planned.output


def test_a_damaged_key_is_said_not_taken_for_someone_else_s_folder(received, tmp_path, monkeypatch):
    run, _ = received
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    key_file().parent.mkdir(parents=True)
    key_file().write_bytes(b"short")
    result = invoke("resume", run)
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: {key_file()} holds 5 bytes, not a key of 32; remove it and a new key is made"], result.output


def test_the_user_s_folder_with_edited_tasks_is_said_edited_not_someone_else_s(received, tmp_path):
    """An edit of the tasks themselves leaves the user's mark covering the tasks the folder ran
    with: `resume` and `export` say the file was edited (what passing --trust-tasks would end on),
    and a new run of the edited campaign is asked for the user's word on tasks no folder ran."""
    run, marker = received
    mine = tmp_path / "mine"
    edited_copy(run, mine, lambda config: config["tasks"][0]["options"].update(seed=7))
    before = runs(marker)
    for args in (["resume", mine], ["export", mine, "--pick", 1, "--out", tmp_path / "pick"]):
        refused = invoke(*args)
        assert refused.exit_code == 2, refused.output
        assert f"{mine / 'campaign.yaml'}: edited since the run started (changed: tasks)" in refused.output
        assert "not run by you" not in refused.output
    planned = invoke("plan", mine / "campaign.yaml", "--out", tmp_path / "new")
    assert planned.exit_code == 2 and planned.output.strip().splitlines() == [
        f"error: {mine / 'campaign.yaml'}: tasks.0 runs the plugin marking_task:marked (imported and called), and "
        "this run folder's campaign.yaml names other tasks than the folder ran, and a mark covers only the tasks a "
        "folder ran with; a run folder does not choose what code runs: read its campaign.yaml, then pass "
        "--trust-tasks"], planned.output
    assert runs(marker) == before and not (tmp_path / "pick").exists()
    assert invoke("plan", mine / "campaign.yaml", "--out", tmp_path / "new", "--trust-tasks").exit_code == 0


def test_someone_else_s_folder_with_another_setting_edited_is_said_not_to_be_yours(received, tmp_path, monkeypatch):
    """Only an edit of the tasks is the reason a mark cannot cover them: a received folder whose
    seed was edited was said to be a campaign "whose tasks alone a mark covers"."""
    run, _ = received
    theirs = tmp_path / "theirs"
    edited_copy(run, theirs, next_seed)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another user"))
    planned = invoke("plan", theirs / "campaign.yaml", "--out", tmp_path / "new")
    assert planned.exit_code == 2 and "this run folder was not run by you here" in planned.output, planned.output


def test_no_home_folder_leaves_the_folder_unmarked_and_the_run_going(received, tmp_path, monkeypatch, caplog):
    """A container run as a uid with no passwd entry and no HOME: Path.home() raised RuntimeError,
    which the key's OSError handling did not catch (a traceback from run, resume, export, plan)."""
    from evo_merge.config import TaskSpec
    from evo_merge.search.store import CampaignStore
    from evo_merge.search.trust import TRUST_META, mark_trusted

    def homeless() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setattr(Path, "home", staticmethod(homeless))
    store = CampaignStore(tmp_path / "run")
    with caplog.at_level("WARNING", logger="evo_merge"):
        mark_trusted(store, [TaskSpec(task="mine:task", name="t")])
    assert store.get_meta(TRUST_META) is None
    assert [r.getMessage() for r in caplog.records] == [
        "cannot keep evo-merge's run key (no home folder to keep evo-merge's run key in (Could not determine home "
        "directory.); set HOME or XDG_CONFIG_HOME): this run folder is not marked as run by you, and resuming or "
        "exporting it will need --trust-tasks"]
    store.close()
    run, _ = received
    refused = invoke("resume", run)
    assert refused.exit_code == 2 and refused.output.strip().endswith(
        "from before evo-merge marked them, or no key of yours could be kept when it ran (no home folder)); a run "
        "folder does not choose what code runs: read its campaign.yaml, then pass --trust-tasks"), refused.output


def test_a_received_folder_of_its_campaign_and_database_alone_runs_no_task_code(received, tmp_path, monkeypatch):
    """A sender can send the campaign and its database without the run's CSVs and report: that is
    still a run folder (its database is a run's own), and `run` of its campaign.yaml checks the
    folder's mark as `resume` would, before any task is built."""
    import shutil
    import sqlite3
    from contextlib import closing

    from evo_merge.cli.trust import run_folder_of

    run, marker = received
    sent = tmp_path / "sent"
    shutil.copytree(run, sent)
    with closing(sqlite3.connect(sent / "state.sqlite")) as db:  # its journal written into it, as a copy sent is
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in sent.iterdir():
        if path.name not in ("campaign.yaml", "state.sqlite"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert sorted(p.name for p in sent.iterdir()) == ["campaign.yaml", "state.sqlite"]
    assert run_folder_of(sent / "campaign.yaml") == sent
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another user"))
    before = runs(marker)
    result = invoke("run", sent / "campaign.yaml", "--out", tmp_path / "new")
    assert result.exit_code == 2, result.output
    assert "tasks.0 runs the plugin marking_task:marked" in result.output
    assert "this run folder was not run by you here" in result.output and "--trust-tasks" in result.output
    assert runs(marker) == before and not (tmp_path / "new").exists()


def test_a_received_folder_bound_before_its_settings_were_stored_is_said_not_to_be_yours(received, tmp_path,
                                                                                          monkeypatch):
    """A folder bound before evo-merge stored its campaign's settings cannot tell whether its tasks
    were edited: it is someone else's folder, said so (not a traceback)."""
    import shutil
    import sqlite3
    from contextlib import closing

    from evo_merge.search.binding import CONFIG_DATA_META

    run, marker = received
    old = tmp_path / "old"
    shutil.copytree(run, old)
    with closing(sqlite3.connect(old / "state.sqlite")) as db, db:
        assert db.execute("DELETE FROM meta WHERE key = ?", (CONFIG_DATA_META.key,)).rowcount == 1
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another user"))
    before = runs(marker)
    result = invoke("resume", old)
    assert result.exit_code == 2, result.output
    assert "this run folder was not run by you here" in result.output and "--trust-tasks" in result.output, \
        result.output
    assert runs(marker) == before


def test_a_folder_whose_campaign_names_its_task_file_relatively_is_told_apart_from_an_edited_one(
        tmp_path, monkeypatch):
    """The trust check compared the campaign's tasks as written (`mine/t.yaml`) with those the run
    recorded (resolved, absolute): someone else's folder was said to name "other tasks than the
    folder ran" (audit 130)."""
    import shutil

    from test_campaign import campaign

    from evo_merge.cli.trust import check_tasks_trusted
    from evo_merge.config import Campaign
    from evo_merge.errors import UserError
    from evo_merge.search.campaign import CampaignRunner
    from evo_merge.tasks.registry import BENCHMARKS_DIR

    shutil.copytree(BENCHMARKS_DIR / "arith", tmp_path / "mine")
    path = campaign(tmp_path, save_tiny_family(tmp_path / "zoo", "llama", n_finetunes=2),
                    tasks=[{"task": "mine/evo_arith.yaml", "name": "mine", "options": {"limit": 12}}])
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "me"))
    CampaignRunner.open(Campaign.load(path), tmp_path, tmp_path / "run").close()
    check_tasks_trusted(path, tmp_path / "run", False)  # the user's own: marked
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another user"))
    with pytest.raises(UserError, match="and this run folder was not run by you here"):
        check_tasks_trusted(path, tmp_path / "run", False)
